#!/usr/bin/env bash
# Build fastconv's CPU kernels with AddressSanitizer and UndefinedBehaviorSanitizer in a scratch copy
# of the committed tree and run scripts/asan_smoke.py under them: every CPU kernel, every SIMD variant
# this CPU has, many geometries (CPU only; compute-sanitizer covers CUDA in scripts/device_check.sh).
# .ci/run runs it. An ASan report or an undefined-behaviour finding ends the run with a non-zero status.
#   usage: bash scripts/asan_check.sh [PYTHON]   (default: .venv/bin/python, which must have torch)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${1:-$root/.venv/bin/python}
case $py in */*) [[ $py = /* ]] || py="$PWD/$py" ;; esac   # a relative path stays valid after the cd below
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -C "$root" archive HEAD | tar -x -C "$work"
cd "$work"
start=$SECONDS
echo "asan_check: building the CPU kernels with -fsanitize=address,undefined (a few minutes)"
FASTCONV_SANITIZE=address,undefined FASTCONV_CUDA=0 "$py" setup.py build_ext --inplace > build.log 2>&1 \
  || { tail -30 build.log; exit 1; }
echo "asan_check: built in $((SECONDS - start)) s; running scripts/asan_smoke.py"
# PYTHONPATH puts this build of fastconv ahead of any installed one. Leak checking is off: CPython and
# torch keep allocations alive until exit by design.
PYTHONPATH="$work" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  LD_PRELOAD="$(gcc -print-file-name=libasan.so)" "$py" scripts/asan_smoke.py
echo "asan_check: clean in $((SECONDS - start)) s"
