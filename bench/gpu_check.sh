#!/usr/bin/env bash
# The GPU, measured: one script for a machine with one NVIDIA GPU and no network, under 8 minutes.
#
#   bench/gpu_check.sh            # installs what is missing from bench/wheels, then runs bench/gpu_check.py
#   bench/gpu_check.sh --fetch    # once, on a machine with network: fills bench/wheels (ignored by git)
#
# It prints one table (bench/gpu_check.py says what is in it): encoder and fusion parity on CUDA (fp32, and the
# fp16 encoder), encoder sequences/s at batch 1/32/256 and 128/512 tokens against torch eager on the same GPU,
# and served requests/s at concurrency 1/8/64 with batching and at batch size 1. Results go to runs/bench/gpu
# (GPU_CHECK_OUT overrides). On a machine without an NVIDIA GPU it says what it would run and exits 0: it
# measures nothing and installs nothing there.
#
# Installing: the machine is expected to have Python with a CUDA torch (its nvidia-* wheels bring the CUDA 13
# and cuDNN libraries). bench/wheels carries the rest for Python 3.12 on x86-64: onnxruntime-gpu 1.31.1 (a CUDA 13
# build) in parts of at most 40 MB, joined with `cat` and checked against its sha256, and the wheels of
# BentoML, pymongo, nx-27017, exchange-calendars and the like. Each carried wheel whose distribution is missing
# here, or older here, is installed with `pip install --no-deps --target /tmp/site`, which goes first on
# PYTHONPATH (onnxruntime-gpu there shadows a CPU onnxruntime of the image). The servers that
# bench_serving.py starts import onnxruntime without torch, so the nvidia-* library folders go on LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=bench/wheels
SITE=/tmp/site
JOINED=/tmp/nfc-wheels
OUT=${GPU_CHECK_OUT:-runs/bench/gpu}
PY=${PYTHON:-python3}
ORT_SPEC="onnxruntime-gpu==1.31.1"
LIMIT_S=470  # the measurement's own limit, so the whole script stays under 8 minutes

plan() {
    cat <<EOF
On a machine with one NVIDIA GPU this script would:
  1. join $WHEELS/*.part-* with cat, check each joined wheel against its .sha256 (sha256sum -c), and install
     every carried wheel whose distribution is missing or older here:
     $PY -m pip install --no-index --no-deps --target $SITE <wheels>; PYTHONPATH=$SITE:\$PWD
  2. put the nvidia-* wheels' library folders on LD_LIBRARY_PATH
  3. run (at most $LIMIT_S s): $PY bench/gpu_check.py --out $OUT
     parity on CUDA (encoder fp32 and fp16, fusion fp32) against torch fp32 on the GPU; encoder sequences/s at
     batch 1/32/256 and 128/512 tokens, torch eager fp32/bf16 vs ONNX Runtime CUDA fp32/fp16, and a BigBird-base
     shape at 512 tokens; served requests/s at concurrency 1/8/64 with batching and at batch size 1
     (bench/bench_serving.py --device cuda --modes rows rows-b1 raw raw-cached)
  4. print one table, and write it to $OUT/gpu_check.md and gpu_check.json
EOF
}

fetch() {
    # pip download resolves the dependencies for the GPU machine's Python (3.12, x86-64 manylinux)
    local staging
    staging=$(mktemp -d)
    "$PY" -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$staging" "$ORT_SPEC" "bentoml>=1.4,<1.5" "nx-27017==0.8.1" \
        "pymongo>=4.13" "exchange-calendars>=4.13,<4.14" "grpcio>=1.85.1" "grpcio-health-checking>=1.62" \
        "grpcio-reflection>=1.62" "protobuf>=7.35.1" "cryptography>=42" "tokenizers>=0.19" "aiohttp>=3.9"
    # what the GPU image already holds (bench/gpu_check.sh installs only what is missing or older anyway)
    rm -f "$staging"/{numpy,pandas,pyarrow,sympy,mpmath,scipy}-*.whl
    mkdir -p "$WHEELS"
    rm -f "$WHEELS"/*.whl "$WHEELS"/*.part-* "$WHEELS"/*.sha256
    local wheel name
    for wheel in "$staging"/*.whl; do
        name=$(basename "$wheel")
        if [ "$(stat -c %s "$wheel")" -gt 41943040 ]; then  # 40 MB: carried in parts
            (cd "$staging" && sha256sum "$name") > "$WHEELS/$name.sha256"
            split -b 40m -d "$wheel" "$WHEELS/$name.part-"
        else
            mv "$wheel" "$WHEELS/"
        fi
    done
    rm -rf "$staging"
    echo "bench/wheels: $(ls "$WHEELS" | wc -l) files, $(du -sh "$WHEELS" | cut -f1)"
}

install_carried() {
    if [ ! -d "$WHEELS" ]; then
        echo "no $WHEELS folder: using what is installed (run bench/gpu_check.sh --fetch where there is network)"
        return
    fi
    rm -rf "$JOINED" && mkdir -p "$JOINED"
    local sum name
    for sum in "$WHEELS"/*.whl.sha256; do
        [ -e "$sum" ] || continue
        name=$(basename "$sum" .sha256)
        cat "$WHEELS/$name".part-* > "$JOINED/$name"
        cp "$sum" "$JOINED/"
        (cd "$JOINED" && sha256sum --quiet -c "$name.sha256") || { echo "$name: sha256 mismatch" >&2; exit 1; }
    done
    cp "$WHEELS"/*.whl "$JOINED/" 2>/dev/null || true
    local missing
    missing=$("$PY" - "$JOINED" <<'EOF'
import importlib.metadata
import sys
from pathlib import Path

from packaging.version import Version

for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    try:
        installed = Version(importlib.metadata.version(name.replace("_", "-")))
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is None or installed < Version(version):
        print(wheel)
EOF
)
    if [ -n "$missing" ]; then
        echo "installing into $SITE: $(echo "$missing" | xargs -n1 basename | tr '\n' ' ')"
        # shellcheck disable=SC2086  # one path per word
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $missing
    fi
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$SITE/bin:$PATH"  # console scripts of the carried wheels (nx-27017, the embedded MongoDB)
}

cuda_library_path() {
    "$PY" - <<'EOF'
import importlib.util
from pathlib import Path

spec = importlib.util.find_spec("nvidia")
roots = list(spec.submodule_search_locations or []) if spec else []
print(":".join(sorted({str(p.parent) for root in roots for p in Path(root).rglob("lib*.so*")})))
EOF
}

if [ "${1:-}" = "--fetch" ]; then
    fetch
    exit 0
fi
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q "^GPU "; then
    echo "no NVIDIA GPU here (nvidia-smi finds none): nothing measured, nothing installed."
    plan
    exit 0
fi

nvidia-smi -L
install_carried
NV_LIBS=$(cuda_library_path)
export LD_LIBRARY_PATH="$NV_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export BENTOML_DO_NOT_TRACK=true PYTHONUNBUFFERED=1
mkdir -p "$OUT"
timeout "$LIMIT_S" "$PY" bench/gpu_check.py --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"
