#!/usr/bin/env bash
# The one-shot GPU check (see benchmarks/gpu_check.py), with the machine's own torch, JAX and
# CuPy: small pure wheels it may lack come from a folder ($WHEELS), never from the network.
# Its tests are the GPU matrix: the kernels' GPU tests and the torch-cuda, jax-gpu and cupy
# entries of the cross-backend tests (pytest -k "torch-cuda or jax-gpu or cupy or gpu"); each
# entry that cannot run here is skipped with its reason, and without any GPU the whole part is.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
  python -m pip install --no-index --find-links "$WHEELS" --no-deps "$WHEELS"/*.whl >/dev/null
fi
export PYTHONPATH="$PWD:$PWD/backends:$PWD/apps:$PWD/benchmarks:${PYTHONPATH:-}"
timeout 480 python benchmarks/gpu_check.py --output "${OUT:-benchmarks/results/gpu}" "$@"
