#!/usr/bin/env bash
# The one command for a session that is lent a GPU machine (torch already installed there, no
# network): build fastconv in place with that machine's torch, run the correctness check
# (`python -m fastconv check`) on the GPU and its host CPU, the whole test suite (the cuda
# parametrisations run there), compute-sanitizer's memcheck over the CUDA tests, the GPU (and a CPU)
# benchmark, and leave logs and JSON results in $OUT (else benchmarks/results/).
#
#   usage: bash scripts/device_check.sh            (from the repository root)
# Commit the JSON it writes under benchmarks/results/ with the device name and date.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
py=${PYTHON:-python3}
stamp=$(date -u +%Y%m%d)
status=0
step() { echo; echo "=== $* ==="; }

step "machine"
nvidia-smi 2>&1 | tee "$out/nvidia-smi.log" || true
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

step "build (FASTCONV_CUDA=1, in place)"
# sm_90a alone: every kernel, the Hopper GEMM (TMA + wgmma) among them, from the one image
export FASTCONV_CUDA=1 FASTCONV_CUDA_ARCHS=${FASTCONV_CUDA_ARCHS:-9.0a} MAX_JOBS=${MAX_JOBS:-16}
if ! "$py" setup.py build_ext --inplace > "$out/build.log" 2>&1; then
  tail -50 "$out/build.log"; echo "build failed"; exit 1
fi
"$py" -c "import fastconv, json; print(json.dumps(fastconv.build_info()))" | tee "$out/build_info.json"

step "correctness check (python -m fastconv check)"
gpu=$("$py" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
"$py" -m fastconv check --device cuda --json "$out/check-cuda-${gpu}-${stamp}.json" 2>&1 | tee "$out/check-cuda.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
"$py" -m fastconv check --device cpu --json "$out/check-cpu-${gpu}-host-${stamp}.json" > "$out/check-cpu.log" 2>&1 \
  || { tail -25 "$out/check-cpu.log"; status=1; }

step "tests (whole suite; cuda parametrisations run here)"
# A CUDA case that cannot run fails here instead of skipping: a suite whose CUDA cases all skip would
# look green (tests/conftest.py).
export FASTCONV_REQUIRE_CUDA=1
PYTHONUNBUFFERED=1 "$py" -m pytest -q tests --junitxml="$out/pytest-${stamp}.xml" 2>&1 | tee "$out/pytest.log" | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "compute-sanitizer memcheck on the CUDA tests"
if command -v compute-sanitizer > /dev/null; then
  # Inductor compiles under the sanitizer are slow and test nothing of ours: leave the compile test out.
  compute-sanitizer --tool memcheck --error-exitcode 3 --target-processes all \
    "$py" -m pytest -q -x tests -k "cuda and not compile" > "$out/memcheck.log" 2>&1
  rc=$?
  tail -15 "$out/memcheck.log"
  [ "$rc" -eq 0 ] || { echo "memcheck exit code $rc"; status=1; }
else
  echo "compute-sanitizer not found" | tee "$out/memcheck.log"; status=1
fi

step "benchmarks"
"$py" -m fastconv.bench --device cuda --json "$out/bench-cuda-${gpu}-${stamp}.json" 2>&1 | tee "$out/bench-cuda.log" || status=1
"$py" -m fastconv.bench --device cpu --threads 16 --json "$out/bench-cpu16-${gpu}-host-${stamp}.json" 2>&1 \
  | tee "$out/bench-cpu.log" || status=1

step "done (status $status)"
exit "$status"
