"""The build reports what it is, and the op table holds what the package promises."""

import pytest
import torch

import fastconv


def test_build_info_fields():
    info = fastconv.build_info()
    assert info["torch_built"] == torch.__version__
    assert info["cpu_isa"] in fastconv._C.cpu_isas()
    assert isinstance(info["cuda_compiled"], bool)
    if info["cuda_compiled"]:
        assert info["cuda_archs"], "a CUDA build must say which architectures it carries"


def test_set_cpu_isa_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown CPU ISA"):
        fastconv._C.set_cpu_isa("sse9")


def test_avx512_emulated_runs_the_avx512_tile_wherever_avx2_runs():
    """avx512_emulated (csrc/cpu/isa.h) is the AVX-512 builds' code compiled for AVX2: the GEMM's 8 x 32
    float32 tile (AVX2's is 6 x 16), on any CPU with AVX2, and chosen only when asked for."""
    order, best, before = fastconv._C.cpu_isas(), fastconv._C.best_cpu_isa(), fastconv._C.cpu_isa()
    assert before != "avx512_emulated"
    if order.index(best) < order.index("avx2"):
        with pytest.raises(ValueError, match="cannot run 'avx512_emulated'"):
            fastconv._C.set_cpu_isa("avx512_emulated")
        return
    try:
        fastconv._C.set_cpu_isa("avx512_emulated")
        assert fastconv._C.cpu_isa() == "avx512_emulated"
        assert (fastconv._C.gemm_blocking()["mr"], fastconv._C.gemm_blocking()["nr"]) == (8, 32)
        fastconv._C.set_cpu_isa("avx2")
        assert (fastconv._C.gemm_blocking()["mr"], fastconv._C.gemm_blocking()["nr"]) == (6, 16)
    finally:
        fastconv._C.set_cpu_isa(before)
