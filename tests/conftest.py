"""Shared fixtures: every test that takes `device` runs on the CPU and, when a GPU is present, on
CUDA (the same test, skipped rather than failed without one); `cpu_isa` runs a CPU test once per
SIMD variant this machine supports (scalar, avx2, avx512)."""

from __future__ import annotations

import pytest
import torch

import fastconv

DEVICES = ["cpu", "cuda"]
ISAS = ["scalar", "avx2", "avx512"]
_ISA_RANK = {name: i for i, name in enumerate(ISAS)}


def _cuda_usable() -> bool:
    return torch.cuda.is_available() and fastconv.build_info()["cuda_compiled"]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    if request.param == "cuda" and not _cuda_usable():
        pytest.skip("no CUDA device (or fastconv was built without CUDA)")
    return request.param


@pytest.fixture(params=ISAS)
def cpu_isa(request):
    """Force fastconv's CPU kernels to one ISA for the test, then restore the default."""
    best = fastconv._C.best_cpu_isa()
    if _ISA_RANK[request.param] > _ISA_RANK[best]:
        pytest.skip(f"this CPU cannot run {request.param} kernels (best: {best})")
    before = fastconv._C.cpu_isa()
    fastconv._C.set_cpu_isa(request.param)
    yield request.param
    fastconv._C.set_cpu_isa(before)
