#!/usr/bin/env bash
# The one-shot GPU check (see benchmarks/gpu_check.py), with the machine's own torch, JAX and
# CuPy: small pure wheels it may lack come from a folder ($WHEELS), never from the network.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
  python -m pip install --no-index --find-links "$WHEELS" --no-deps "$WHEELS"/*.whl >/dev/null
fi
export PYTHONPATH="$PWD:$PWD/backends:$PWD/apps:$PWD/benchmarks:${PYTHONPATH:-}"
timeout 480 python benchmarks/gpu_check.py --output "${OUT:-benchmarks/results/gpu}" "$@"
