"""Shared fixtures: every test that takes `device` runs on the CPU and, when a GPU is present, on
CUDA (the same test, skipped rather than failed without one — unless FASTCONV_REQUIRE_CUDA=1, as
scripts/device_check.sh sets on a GPU machine, where a CUDA case that cannot run fails); `cpu_isa`
runs a CPU test once per SIMD variant this machine supports (scalar, avx2, avx512; avx512_bf16 and amx
differ from avx512 only in the bfloat16 kernels, so only the tests of those ask for them), and where the
CPU has no AVX-512, once more on avx512_emulated: the AVX-512 builds' code compiled for AVX2 (csrc/cpu/isa.h),
so that their tile shapes, layouts and edges run here too."""

from __future__ import annotations

import collections
import os

import pytest
import torch

import fastconv

DEVICES = ["cpu", "cuda"]
ISAS = ["scalar", "avx2", "avx512"]
ALL_ISAS = fastconv._C.cpu_isas()   # ISAS + avx512_bf16, amx, avx512_emulated
_ISA_RANK = {name: i for i, name in enumerate(ALL_ISAS)}
_BEST = fastconv._C.best_cpu_isa()
# The AVX-512 builds' code compiled for AVX2, where the CPU has AVX2 but no AVX-512 (elsewhere the real
# avx512 kernels run, or nothing of that code can).
EMULATED = [isa for isa in fastconv._C.tested_cpu_isas() if isa == "avx512_emulated"]
REQUIRE_CUDA = os.environ.get("FASTCONV_REQUIRE_CUDA") == "1"

# References in full float32: torch's cuDNN convolutions (and, where enabled, its matmuls) use TF32 by
# default on Ampere and later, whose 10-bit mantissa would fail correct float32 kernels against them.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


def _cuda_usable() -> bool:
    return torch.cuda.is_available() and fastconv.build_info()["cuda_compiled"]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    if request.param == "cuda" and not _cuda_usable():
        why = (f"no CUDA device (torch.cuda.is_available() = {torch.cuda.is_available()}) or fastconv built "
               f"without CUDA (cuda_compiled = {fastconv.build_info()['cuda_compiled']})")
        if REQUIRE_CUDA:
            pytest.fail(f"FASTCONV_REQUIRE_CUDA=1, but {why}")
        pytest.skip("no CUDA device (or fastconv was built without CUDA)")
    return request.param


def _forced_isa(name: str):
    """Force fastconv's CPU kernels to one ISA for the test, then restore the default."""
    if name != "avx512_emulated" and _ISA_RANK[name] > _ISA_RANK[_BEST]:
        pytest.skip(f"this CPU cannot run {name} kernels (best: {_BEST})")
    before = fastconv._C.cpu_isa()
    fastconv._C.set_cpu_isa(name)
    yield name
    fastconv._C.set_cpu_isa(before)


@pytest.fixture(params=ISAS + EMULATED)
def cpu_isa(request):
    yield from _forced_isa(request.param)


@pytest.fixture(params=ISAS)
def cpu_isa_native(request):
    """cpu_isa for the families with no emulated AVX-512 build (batch-norm, max-pool, the half-precision
    runs: intrinsics or the auto-vectoriser), which run their AVX2 build under avx512_emulated."""
    yield from _forced_isa(request.param)


def pytest_terminal_summary(terminalreporter):
    """One line per skip reason with its count (pyproject's -r leaves skips out of the per-location
    summary, which printed one line for each of the dozens of CUDA-parametrised tests)."""
    reasons = collections.Counter()
    for rep in terminalreporter.stats.get("skipped", []):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"SKIPPED {count}: {reason}")
