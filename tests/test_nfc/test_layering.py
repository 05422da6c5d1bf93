"""Layering: no package imports one above it, checked by importing every module of a package in a fresh interpreter.

neuralfusion (the torch-free core) imports no other project package, nor BentoML, gRPC or protobuf (its client
needs httpx only); training imports no serving; export imports
no serving; serving imports neither torch nor transformers nor training nor export; nothing but tests imports nfc.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# package -> top-level modules that must not be loaded after importing every module of the package
FORBIDDEN = {
    # neuralfusion.client is pip-importable with the core install: no BentoML, gRPC, protobuf (google) or pydantic
    "neuralfusion": ("training", "export", "serving", "nfc", "torch", "transformers", "bentoml", "grpc", "google",
                     "pydantic"),
    "training": ("serving", "nfc"),
    "export": ("serving", "nfc"),
    "serving": ("torch", "transformers", "training", "export", "nfc"),
}

IMPORT_ALL = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
names = [m.name for m in pkgutil.walk_packages(package.__path__, sys.argv[1] + ".")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted({n.split(".")[0] for n in sys.modules})}))
"""


def import_everything(package: str) -> dict[str, list[str]]:
    """Every module of `package` imported in a fresh interpreter: their names and the top-level modules loaded."""
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL, package], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_above_it(package):
    result = import_everything(package)
    assert len(result["modules"]) >= 5  # the walk found the package's modules, not an empty folder
    above = sorted(set(FORBIDDEN[package]) & set(result["loaded"]))
    assert not above, f"importing every {package} module loads {above}"


def test_the_check_sees_an_import_that_runs_back_up():
    """The app may import every package (`nfc serve` imports serving's settings at the top): the same check on it
    must report serving, or it would pass whatever the packages import."""
    loaded = set(import_everything("nfc")["loaded"])
    assert {"neuralfusion", "serving"} <= loaded
