"""Package hygiene: explicit exports that exist, and a core that imports without torch."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import neuralfusion


def core_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(neuralfusion.__path__, "neuralfusion."))


@pytest.mark.parametrize("name", core_modules())
def test_every_core_module_declares_exports_that_exist(name):
    module = importlib.import_module(name)
    assert isinstance(getattr(module, "__all__", None), list | tuple), f"{name} has no __all__"
    missing = [item for item in module.__all__ if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ names {missing}, which do not exist"


def test_core_imports_without_torch():
    """Serving images have no torch: importing every core module must not pull it in."""
    code = (
        "import sys, importlib, pkgutil, neuralfusion\n"
        "for m in pkgutil.walk_packages(neuralfusion.__path__, 'neuralfusion.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'training', 'transformers'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
