#!/usr/bin/env bash
# Build fastconv's CPU kernels with AddressSanitizer in a scratch clone and run scripts/asan_smoke.py
# under it (CPU only; compute-sanitizer covers CUDA in scripts/device_check.sh).
#   usage: bash scripts/asan_check.sh [PYTHON]   (default: .venv/bin/python, which must have torch)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${1:-$root/.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -C "$root" archive HEAD | tar -x -C "$work"
cd "$work"
FASTCONV_SANITIZE=address FASTCONV_CUDA=0 "$py" setup.py build_ext --inplace > build.log 2>&1 \
  || { tail -30 build.log; exit 1; }
# PYTHONPATH puts this build of fastconv ahead of any installed one.
PYTHONPATH="$work" ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$(gcc -print-file-name=libasan.so)" \
  "$py" scripts/asan_smoke.py
