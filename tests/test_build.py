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


def test_tested_cpu_isas_follow_the_cpu():
    """The levels the tests, the check and the ASan smoke walk: every native one this CPU runs, narrowest
    first, and the emulated AVX-512 build exactly where torch finds AVX2 but not AVX-512 (torch's own CPU
    probe as the independent witness)."""
    order, best = fastconv._C.cpu_isas(), fastconv._C.best_cpu_isa()
    tested = fastconv._C.tested_cpu_isas()
    native = [isa for isa in tested if isa != "avx512_emulated"]
    assert native == order[:order.index(best) + 1]
    assert ("avx512_emulated" in tested) == (torch.backends.cpu.get_cpu_capability() == "AVX2")
    before = fastconv._C.cpu_isa()
    try:
        for isa in tested:   # each one runs here
            fastconv._C.set_cpu_isa(isa)
            assert fastconv._C.cpu_isa() == isa
    finally:
        fastconv._C.set_cpu_isa(before)
