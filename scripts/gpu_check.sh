#!/usr/bin/env bash
# genbench's GPU check: one command for a fresh GPU machine (docs/performance.md).
#
#   bash scripts/gpu_check.sh --prepare                        # before copying the tree (network or wheel cache)
#   OUT=/path/to/results bash scripts/gpu_check.sh             # on the GPU machine: ~8 minutes, setup included
#   OUT=/path/to/results bash scripts/gpu_check.sh --showdown  # the GPU showdown instead: genbench-benchmark
#                                                              # budget=gpu, its results folder
#                                                              # (docs/results/<date>-<gpu>/, also
#                                                              # $OUT/results.tar.gz), then scripts/perf_gpu.py
#                                                              # in what is left; ~9 minutes, setup included
#   bash scripts/gpu_check.sh --tiny --out /tmp/gc             # CPU smoke run (also GPU_CHECK_TINY=1)
#
# This wrapper only gets a Python environment and the data there; scripts/gpu_check.py measures.
# The clock starts here (GPU_CHECK_T0), so the check's time limit covers the setup too. Python, in
# the first way that works:
#   1. .venv, when it already imports genbench's stack (a reused machine; --tiny here);
#   2. the machine's own python3 when it already has torch and Lightning (the H100/H200
#      machines of docs/performance.md do: Python 3.12 with PyTorch, no network) plus the pure-Python packages it lacks (Hydra,
#      OmegaConf, antlr4, torch-fidelity), installed from outputs/gpu_check_assets/wheels, which
#      `--prepare` fills and the copied tree carries; genbench itself runs from src/;
#   3. `make setup` (.venv with the pinned stack from the local wheel cache; needs Python 3.11).
# Data: Fashion-MNIST from outputs/gpu_check_assets/fashion_mnist (copied there by --prepare),
# else `make data` (Debian's dataset-fashion-mnist; apt may wait on a network that is not there,
# so it gets 60 s), else gpu_check.py falls back to data=synthetic and says so in its results.
# Exit status: gpu_check.py's (0 = every step ok).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export GPU_CHECK_T0="${GPU_CHECK_T0:-$(date +%s)}"
assets=outputs/gpu_check_assets
fmnist_files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
# genbench's pure-Python dependencies that a machine with torch + Lightning may lack (pyproject pins)
wheels=(hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 torch-fidelity==0.4.0 submitit==1.5.4 hydra-submitit-launcher==1.2.0)

tiny="${GPU_CHECK_TINY:-0}"
out="${OUT:-}"
prepare=0
prev=""
for arg in "$@"; do
    case "$arg" in
        --tiny) tiny=1 ;;
        --prepare) prepare=1 ;;
        --out=*) out="${arg#--out=}" ;;
    esac
    [ "$prev" = "--out" ] && out="$arg"
    prev="$arg"
done
{ [ "$tiny" = true ] || [ "$tiny" = yes ]; } && tiny=1

# --- --prepare: what a machine without network needs, gathered here ---------------------------
if [ "$prepare" = 1 ]; then
    set -e
    mkdir -p "$assets/wheels" "$assets/fashion_mnist"
    pip_python=.venv/bin/python
    [ -x "$pip_python" ] || pip_python="$(command -v python3)"
    # pure-Python wheels (antlr4 4.9.3 is an sdist on PyPI: `pip wheel` builds it)
    "$pip_python" -m pip wheel --quiet --no-deps -w "$assets/wheels" "${wheels[@]}"
    src=/usr/share/datasets/fashion-mnist
    for f in "${fmnist_files[@]}"; do
        [ -f "$src/$f" ] && cp "$src/$f" "$assets/fashion_mnist/"
    done
    ls -l "$assets/wheels" "$assets/fashion_mnist"
    du -sh "$assets"
    echo "carry '$assets' to the GPU machine (it is ignored by git: outputs/)"
    exit 0
fi

out="${out:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}"
mkdir -p "$out"
log="$out/setup.log"
: >"$log"
seconds_since() { echo $(($(date +%s) - $1)); }
imports_stack() { "$1" -c "import torch, pytorch_lightning, hydra, omegaconf, torch_fidelity, genbench" >>"$log" 2>&1; }

# --- Python ------------------------------------------------------------------------------------
start=$(date +%s)
python=""
if [ -x .venv/bin/python ] && imports_stack .venv/bin/python; then
    python=.venv/bin/python
    setup_status="reused .venv"
elif [ "$tiny" != 1 ] && command -v python3 >/dev/null && python3 -c "import torch, pytorch_lightning" >>"$log" 2>&1 \
    && [ -d "$assets/wheels" ]; then
    echo "[gpu_check] using the machine's python3 (torch there) + wheels from $assets/wheels ..."
    site=/tmp/gpu_check_site
    if python3 -m pip install --quiet --no-index --no-deps --no-compile --target "$site" \
        "$assets"/wheels/*.whl >>"$log" 2>&1; then
        export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
        if imports_stack python3; then
            python="$(command -v python3)"
            setup_status="machine's python3 + carried wheels (genbench from src/)"
        fi
    fi
    [ -n "$python" ] || setup_status="failed (machine's python3 + wheels; see setup.log)"
fi
if [ -z "$python" ] && [ "$tiny" != 1 ]; then
    echo "[gpu_check] make setup (venv from the local wheel cache) ..."
    # the venv target only: `make setup` would also run `make data`, which gets its own time limit
    # without a network pip retries each package for a minute: fail fast instead
    if PIP_RETRIES="${PIP_RETRIES:-1}" PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-15}" \
        timeout 420 make .venv/.genbench-installed >>"$log" 2>&1 && imports_stack .venv/bin/python; then
        python=.venv/bin/python
        setup_status="make setup: ok"
    else
        setup_status="failed (make setup, exit $?; see setup.log)"
    fi
fi
if [ -z "$python" ]; then
    [ "$tiny" = 1 ] && setup_status="failed (tiny mode needs a working .venv: run make setup)"
    tail -n 20 "$log"
    # gpu_check.py needs only the standard library to record what failed; with genbench on the
    # path its environment step still reports the GPU and torch where the machine's python has torch
    python="$(command -v python3.11 || command -v python3)"
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export GPU_CHECK_SETUP_STATUS="$setup_status" GPU_CHECK_SETUP_SECONDS="$(seconds_since "$start")"
echo "[gpu_check] setup: $setup_status in ${GPU_CHECK_SETUP_SECONDS} s ($python)"

# --- data (GPU mode only: the tiny check uses synthetic data) ---------------------------------
start=$(date +%s)
have_carried=1
for f in "${fmnist_files[@]}"; do [ -f "$assets/fashion_mnist/$f" ] || have_carried=0; done
if [ "$tiny" = 1 ]; then
    data_status="not needed (tiny mode: data=synthetic)"
elif [ "$have_carried" = 1 ]; then
    export GPU_CHECK_DATA_ROOT="$PWD/$assets/fashion_mnist"
    data_status="carried Fashion-MNIST ($assets/fashion_mnist)"
elif timeout 60 make data >>"$log" 2>&1; then
    data_status="make data: ok"
else
    data_status="make data: failed or timed out (exit $?)"
fi
export GPU_CHECK_DATA_STATUS="$data_status" GPU_CHECK_DATA_SECONDS="$(seconds_since "$start")"
echo "[gpu_check] data: $data_status in ${GPU_CHECK_DATA_SECONDS} s"

# --- the check --------------------------------------------------------------------------------
extra=()
[ "$tiny" = 1 ] && extra+=(--tiny)
exec "$python" scripts/gpu_check.py --out "$out" "${extra[@]}" "$@"
