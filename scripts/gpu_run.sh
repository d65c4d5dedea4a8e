#!/usr/bin/env bash
# On a lent GPU machine with no network: install pymatgen from the wheels in .whl/ (downloaded
# beforehand, see ../shared/docs/gpu.md), then run scripts/gpu_train.py with these arguments,
# or another script when the first argument names one (scripts/gpu_bench_sampling.py ...).
# The data caches (data/*/cache/) must come along, built on the CPU first.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch, pymatgen.core; print('torch', torch.__version__, torch.cuda.get_device_name())"
script=scripts/gpu_train.py
if [[ "${1:-}" == *.py ]]; then script=$1; shift; fi
exec python3 "$script" "$@"
