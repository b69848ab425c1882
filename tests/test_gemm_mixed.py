"""Mixed-precision GEMM (issue 14, first part): float16 / bfloat16 operands accumulated in float32,
float32 / float16 / bfloat16 outputs, judged by the flash-attention rule: against a float64 reference,
fastconv's error is at most 2x torch's own error in the same dtype, plus about one rounding of the
largest output. Every transpose, sizes 1, primes, micro-tile +/- 1, K = 1 and K-block edges, every
CPU ISA level (bfloat16 on the vdpbf16ps kernel at avx512_bf16, widened to float32 below it; float16
always widened), the emulated vdpbf16ps kernel on every machine and its bit-equality with the real
one where the CPU has it, the emulated AMX kernel on every machine (the real one where the CPU has
AMX), alpha/beta with c, gradients, and linear against torch.nn.functional.linear. CUDA runs half
precision in float32 inside until the tensor-core kernel; its test needs a GPU."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as TF

import fastconv
import fastconv.functional as F
from conftest import ALL_ISAS
from lowprec import check_rule, error
from fastconv.ops import gemm

HALF = [torch.bfloat16, torch.float16]
SIZES = [(1, 1, 1), (1, 7, 3), (5, 1, 2), (8, 32, 1), (7, 33, 5), (9, 31, 13), (13, 17, 257), (17, 65, 256),
         (37, 97, 511), (129, 3, 40)]


def _operands(m, n, k, ta, tb, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn((k, m) if ta else (m, k), generator=g).to(dtype)
    b = torch.randn((n, k) if tb else (k, n), generator=g).to(dtype)
    return a, b


@pytest.mark.parametrize("cpu_isa", ALL_ISAS, indirect=True)
@pytest.mark.parametrize("in_dtype", HALF, ids=str)
def test_every_transpose_size_and_output_dtype(cpu_isa, in_dtype):
    for (m, n, k), ta, tb, out_dtype in itertools.product(SIZES, (False, True), (False, True),
                                                           (None, torch.float32, *HALF)):
        a, b = _operands(m, n, k, ta, tb, in_dtype)
        out_t = in_dtype if out_dtype is None else out_dtype
        op_a, op_b = (a.T if ta else a), (b.T if tb else b)
        ref = op_a.double() @ op_b.double()
        # torch's own low-precision result, rounded to the output dtype as an op of torch would give it
        theirs = (op_a @ op_b).to(out_t) if out_t != torch.float32 else (op_a.float() @ op_b.float())
        ours = gemm(a, b, None, ta, tb, 1.0, 0.0, out_dtype)
        check_rule(ours, theirs, ref, f"{in_dtype}->{out_t} m,n,k={m},{n},{k} ta={ta} tb={tb}")


@pytest.mark.parametrize("in_dtype", HALF, ids=str)
def test_alpha_beta_and_broadcast_c(in_dtype):
    a, b = _operands(23, 19, 70, False, True, in_dtype, seed=1)
    for out_t in (in_dtype, torch.float32):
        c = torch.randn(19).to(out_t)
        ours = gemm(a, b, c, False, True, 0.5, -1.5, out_t)
        ref = 0.5 * (a.double() @ b.double().T) - 1.5 * c.double()
        theirs = torch.addmm(c.to(in_dtype), a, b.T, beta=-1.5, alpha=0.5).to(out_t)
        check_rule(ours, theirs, ref, f"{in_dtype}->{out_t} addmm")
    # alpha = 0: A and B are not read (NaN there must not show), C = beta * C
    nan_a = torch.full_like(a, float("nan"))
    c = torch.randn(23, 19).to(in_dtype)
    torch.testing.assert_close(gemm(nan_a, b, c, False, True, 0.0, 2.0), (2 * c.float()).to(in_dtype))


bf16_path = torch.ops.fastconv_testing.gemm_bf16_path
HAS_BF16 = fastconv._C.best_cpu_isa() in ("avx512_bf16", "amx")


HAS_AMX = fastconv._C.best_cpu_isa() == "amx"
# the AMX kernel's tile edges: 32 x 32 blocks of C, 32 K steps per tile load, K blocks of 1024 (half output)
AMX_SIZES = [(31, 33, 32), (33, 31, 31), (32, 32, 33), (65, 64, 64), (16, 48, 1), (40, 20, 1100)]


@pytest.mark.parametrize("path", ["emulated", "float32", "amx_emulated"])
def test_bf16_paths_by_the_rule(path):
    """The pair-packed bfloat16 path on the portable vdpbf16ps emulation, the AMX kernel on the portable
    tile emulation (packing, tile loops, edges, K not a multiple of the tile), and the float32-widening
    path, on every machine."""
    extra = AMX_SIZES if path == "amx_emulated" else [(6, 64, 2), (7, 65, 3), (5, 63, 1)]
    for (m, n, k), ta, tb in itertools.product(SIZES + extra, (False, True), (False, True)):
        a, b = _operands(m, n, k, ta, tb, torch.bfloat16, seed=4)
        op_a, op_b = (a.T if ta else a), (b.T if tb else b)
        ref = op_a.double() @ op_b.double()
        for out_t in (torch.float32, torch.bfloat16):
            theirs = (op_a @ op_b).to(out_t) if out_t != torch.float32 else op_a.float() @ op_b.float()
            check_rule(bf16_path(a, b, ta, tb, path, out_t), theirs, ref,
                       f"{path} m,n,k={m},{n},{k} ta={ta} tb={tb} out={out_t}")


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no AVX512-BF16 (the emulation is tested above)")
def test_real_vdpbf16ps_equals_its_emulation_bit_for_bit():
    """The emulation is exact: on a CPU with the instruction, both give the same bits, including for
    denormal inputs (read as zero) and products that underflow (flushed)."""
    for (m, n, k), ta, tb in itertools.product(SIZES, (False, True), (False, True)):
        a, b = _operands(m, n, k, ta, tb, torch.bfloat16, seed=5)
        assert torch.equal(bf16_path(a, b, ta, tb, "emulated", torch.float32),
                           bf16_path(a, b, ta, tb, "avx512_bf16", torch.float32)), (m, n, k, ta, tb)
    g = torch.Generator().manual_seed(6)
    tiny = torch.randn(33, 70, generator=g) * torch.tensor(2.0) ** torch.randint(-140, -100, (33, 70), generator=g)
    a, b = tiny.bfloat16(), (torch.randn(70, 20, generator=g) * 1e-3).bfloat16()
    assert (a.float().abs() < torch.finfo(torch.float32).tiny).any()   # denormal inputs present
    assert torch.equal(bf16_path(a, b, False, False, "emulated", torch.float32),
                       bf16_path(a, b, False, False, "avx512_bf16", torch.float32))


@pytest.mark.skipif(not HAS_AMX, reason="this CPU has no usable AMX (its emulation is tested above)")
def test_real_amx_by_the_rule_and_against_its_emulation():
    """On a CPU with AMX: the real tiles by the rule, and as close to the emulated tdpbf16ps as the
    order of two float32 chains allows (bit equality is reported, not required: the SDM's pseudo-code
    leaves the hardware's internal order open)."""
    for (m, n, k), ta, tb in itertools.product(SIZES + AMX_SIZES, (False, True), (False, True)):
        a, b = _operands(m, n, k, ta, tb, torch.bfloat16, seed=7)
        op_a, op_b = (a.T if ta else a), (b.T if tb else b)
        ref = op_a.double() @ op_b.double()
        real = bf16_path(a, b, ta, tb, "amx", torch.float32)
        check_rule(real, op_a.float() @ op_b.float(), ref, f"amx m,n,k={m},{n},{k} ta={ta} tb={tb}")
        emulated = bf16_path(a, b, ta, tb, "amx_emulated", torch.float32)
        torch.testing.assert_close(real, emulated, rtol=1e-5, atol=1e-5 * ref.abs().max().item() + 1e-30)


@pytest.mark.parametrize("path,has", [("avx512_bf16", HAS_BF16), ("amx", HAS_AMX)])
def test_bf16_path_refused_where_the_cpu_lacks_it(path, has):
    a = torch.randn(4, 4).bfloat16()
    if has:
        bf16_path(a, a, False, False, path, None)
    else:
        with pytest.raises(RuntimeError, match=f"cannot run the '{path}' path"):
            bf16_path(a, a, False, False, path, None)


def test_strided_and_rounding_to_nearest_even():
    a = torch.randn(40, 64).bfloat16()[::2, ::2]           # non-unit row and column strides
    b = torch.randn(32, 48).bfloat16()[:, 8:40]
    ours = gemm(a, b)
    ref = (a.float() @ b.float())                           # float32 accumulation, then one rounding
    # the float32 sums may differ in the last float32 bits by summation order; the bfloat16 results then
    # differ by at most one bfloat16 ulp where a float32 sum lands next to a rounding boundary
    assert error(ours, ref.double()) <= torch.finfo(torch.bfloat16).eps * ref.abs().max().item()
    # exact cases round to nearest even: 1 + 2^-8 (a tie between 1 and 1 + 2^-7) rounds down to 1,
    # 1 + 3 * 2^-8 (a tie between 1 + 2^-7 and 1 + 2^-6) rounds up to 1 + 2^-6
    one = torch.ones(1, 2, dtype=torch.bfloat16)
    for low, expected in ((2.0 ** -8, 1.0), (3 * 2.0 ** -8, 1.0 + 2.0 ** -6)):
        col = torch.tensor([[1.0], [low]], dtype=torch.float32)   # low is exact in bfloat16
        assert gemm(one, col.bfloat16()).item() == expected


@pytest.mark.parametrize("in_dtype", HALF, ids=str)
def test_gradients_by_the_rule(in_dtype):
    a, b = _operands(17, 9, 33, False, False, in_dtype, seed=2)
    g = torch.randn(17, 9)
    for out_t in (in_dtype, torch.float32):
        a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
        gemm(a1, b1, out_dtype=out_t).backward(g.to(out_t))
        assert a1.grad.dtype == in_dtype and b1.grad.dtype == in_dtype
        ref_ga, ref_gb = g.double() @ b.double().T, a.double().T @ g.double()
        gl = g.to(in_dtype)
        check_rule(a1.grad, gl @ b.T, ref_ga, f"grad a ({out_t} output)")
        check_rule(b1.grad, a.T @ gl, ref_gb, f"grad b ({out_t} output)")


@pytest.mark.parametrize("in_dtype", HALF, ids=str)
def test_linear_half_by_the_rule(in_dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, 50, generator=gen)
    w = torch.randn(31, 50, generator=gen) / 7
    bias = torch.randn(31, generator=gen)
    xs, ws, bs = (t.to(in_dtype).requires_grad_() for t in (x, w, bias))
    xt, wt, bt = (t.to(in_dtype).requires_grad_() for t in (x, w, bias))
    ours, theirs = F.linear(xs, ws, bs), TF.linear(xt, wt, bt)
    ref = TF.linear(*(t.to(in_dtype).double() for t in (x, w, bias)))
    check_rule(ours, theirs, ref, "linear forward")
    gy = torch.randn(ours.shape, generator=gen).to(in_dtype)
    ours.backward(gy)
    theirs.backward(gy)
    x64, w64, b64 = (t.to(in_dtype).double().requires_grad_() for t in (x, w, bias))
    TF.linear(x64, w64, b64).backward(gy.double())
    for name, o, t, r in (("x", xs, xt, x64), ("weight", ws, wt, w64), ("bias", bs, bt, b64)):
        check_rule(o.grad, t.grad, r.grad, f"linear grad {name}")


def test_bad_dtypes_are_refused():
    a = torch.randn(3, 4).bfloat16()
    with pytest.raises(RuntimeError, match="expected b of dtype"):
        gemm(a, torch.randn(4, 2).half())
    with pytest.raises(RuntimeError, match="out_dtype"):
        gemm(torch.randn(3, 4), torch.randn(4, 2), out_dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="c of the output's dtype"):
        gemm(a, torch.randn(4, 2).bfloat16(), torch.randn(2), beta=1.0, out_dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="bias of dtype"):
        F.linear(a, torch.randn(5, 4).bfloat16(), torch.randn(5))


# the tensor-core kernel's edges: 128 x 128 block tiles, 64 x 32 warp tiles, K steps of 32 in a ring of
# 3 stages (K = 97 wraps it), 16-deep mma steps, 8-element copy chunks
MMA_SIZES = [(128, 128, 32), (129, 127, 33), (127, 129, 31), (65, 33, 16), (200, 257, 97), (16, 8, 8), (3, 300, 9),
             (257, 5, 130)]


def _mma_cases(in_dtype, seed):
    for (m, n, k), ta, tb in itertools.product(SIZES + MMA_SIZES, (False, True), (False, True)):
        a, b = _operands(m, n, k, ta, tb, in_dtype, seed=seed)
        op_a, op_b = (a.T if ta else a), (b.T if tb else b)
        yield (m, n, k, ta, tb), a, b, op_a, op_b, op_a.double() @ op_b.double()


def _theirs(op_a, op_b, out_t):
    return (op_a @ op_b).to(out_t) if out_t != torch.float32 else op_a.float() @ op_b.float()


mma_emulated = torch.ops.fastconv_testing.cuda_mma_gemm


@pytest.mark.parametrize("in_dtype", HALF, ids=str)
def test_tensor_core_kernel_emulated_by_the_rule(in_dtype):
    """The CUDA tensor-core kernel's block algorithm (common/mma_gemm.h) on the CPU emulation of
    cp.async, ldmatrix(.trans) and mma.sync.m16n8k16: stage ring, swizzle, fragment addressing, both
    layouts of each operand, edges and every output dtype by the rule."""
    for case, a, b, op_a, op_b, ref in _mma_cases(in_dtype, seed=10):
        for out_t in (torch.float32, *HALF):
            check_rule(mma_emulated(a, b, None, case[3], case[4], 1.0, 0.0, out_t), _theirs(op_a, op_b, out_t), ref,
                       f"emulated mma {in_dtype}->{out_t} m,n,k,ta,tb={case}")


# the Hopper kernel's edges: 128 x 128 block tiles, warpgroups of 64 rows, K steps of 64 (one 128-byte
# swizzled box row) in a ring of 4 stages (K = 321 refills every stage and ends one element into a step)
WGMMA_SIZES = [(128, 128, 64), (129, 127, 65), (64, 257, 321), (65, 1, 63), (1, 130, 1), (200, 129, 257),
               (3, 9, 520)]
wgmma_emulated = torch.ops.fastconv_testing.cuda_wgmma_gemm


def _wgmma_cases(in_dtype, seed):
    for (m, n, k), ta, tb in itertools.product(SIZES[::3] + WGMMA_SIZES, (False, True), (False, True)):
        a, b = _operands(m, n, k, ta, tb, in_dtype, seed=seed)
        op_a, op_b = (a.T if ta else a), (b.T if tb else b)
        yield (m, n, k, ta, tb), a, b, op_a, op_b, op_a.double() @ op_b.double()


@pytest.mark.parametrize("in_dtype", HALF, ids=str)
def test_hopper_kernel_emulated_by_the_rule(in_dtype):
    """The Hopper kernel's block algorithm (common/wgmma_gemm.h) on the CPU emulation of TMA box copies
    with the 128-byte swizzle, mbarrier phases and wgmma.m64n128k16 reading K-major descriptors: stage
    ring, barrier parities, descriptors, accumulator layout, edges and every output dtype by the rule.
    Its sums are the mma.sync kernel's (16-deep k groups, in order), so the two emulations agree bit
    for bit."""
    for case, a, b, op_a, op_b, ref in _wgmma_cases(in_dtype, seed=12):
        for out_t in (torch.float32, *HALF):
            ours = wgmma_emulated(a, b, None, case[3], case[4], 1.0, 0.0, out_t)
            check_rule(ours, _theirs(op_a, op_b, out_t), ref, f"emulated wgmma {in_dtype}->{out_t} m,n,k,ta,tb={case}")
            assert torch.equal(ours, mma_emulated(a, b, None, case[3], case[4], 1.0, 0.0, out_t)), case


@pytest.mark.parametrize("kernel", ["mma_sync", "wgmma"])
def test_tensor_core_kernels_emulated_operand_layouts_and_c(kernel):
    """Operands each kernel reads in place -- mma.sync: either dimension unit-stride with a pitch that is
    a multiple of 8; wgmma: K unit-stride only -- and ones the glue copies first (a transposed operand
    for wgmma, odd pitch, no unit stride, a misaligned start); a single row of any pitch is read in
    place; alpha, beta and a broadcast c; alpha = 0 reads neither operand (on mma.sync; the Hopper
    kernel refuses it, its first wgmma defining the accumulators). The emulations' bounds checks
    refuse a read outside an operand."""
    emulated = {"mma_sync": mma_emulated, "wgmma": wgmma_emulated}[kernel]
    g = torch.Generator().manual_seed(13)
    big = torch.randn(80, 136, generator=g).bfloat16()
    views = {"pitch 136": big[:70, :130], "pitch 136 transposed": big[:50, :70].T, "odd pitch": big[:70, 1:51],
             "no unit stride": big[:70, ::2][:, :45], "one row, odd pitch": big[:1, 3:70],
             "strided both": big[::2, ::2][:35, :40]}
    for name, a in views.items():
        k = a.shape[1]
        for b in (torch.randn(k, 61, generator=g).bfloat16(), torch.randn(61, k, generator=g).bfloat16().T):
            ref = a.double() @ b.double()
            check_rule(emulated(a, b, None, False, False, 1.0, 0.0, torch.float32), a.float() @ b.float(), ref, name)
    a, b = big[:45, :96], torch.randn(61, 96, generator=g).bfloat16()
    c = torch.randn(61, generator=g).bfloat16()
    ref = 0.5 * (a.double() @ b.double().T) - 1.5 * c.double()
    theirs = torch.addmm(c, a, b.T, beta=-1.5, alpha=0.5)
    check_rule(emulated(a, b, c, False, True, 0.5, -1.5, None), theirs, ref, "alpha, beta, broadcast c")
    nan_a = torch.full_like(a, float("nan"))
    c2 = torch.randn(45, 61, generator=g).bfloat16()
    if kernel == "wgmma":   # no product to form: gemm runs it on the mma.sync kernel's epilogue
        with pytest.raises(RuntimeError, match="needs k >= 1 and alpha != 0"):
            emulated(nan_a, b, c2, False, True, 0.0, 2.0, None)
    else:
        torch.testing.assert_close(emulated(nan_a, b, c2, False, True, 0.0, 2.0, None), 2 * c2)


@pytest.mark.parametrize("device", ["cuda"], indirect=True)
@pytest.mark.parametrize("in_dtype", HALF, ids=str)
def test_each_tensor_core_kernel_on_cuda_by_the_rule(device, in_dtype):
    """Each tensor-core kernel forced by name (mma.sync from compute capability 8.0; TMA + wgmma on 9.0
    with an sm_90a build): the rule, and float32 results within float32 roundings of its CPU emulation.
    On a GPU without wgmma that kernel must be refused, loudly. Never run yet: no GPU so far."""
    path_op = torch.ops.fastconv_testing.cuda_gemm_path
    has_wgmma = torch.cuda.get_device_capability() == (9, 0) and "sm_90a" in fastconv.build_info()["cuda_archs"]
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("the tensor-core kernels need compute capability 8.0")
    emulations = {"mma_sync": mma_emulated, "wgmma": wgmma_emulated}
    for path, emulated in emulations.items():
        if path == "wgmma" and not has_wgmma:
            with pytest.raises(RuntimeError, match="wgmma kernel needs compute capability 9.0"):
                path_op(*_operands(8, 8, 8, False, False, in_dtype), False, False, path, None)
            continue
        for case, a, b, op_a, op_b, ref in _wgmma_cases(in_dtype, seed=14):
            ours = path_op(a.to(device), b.to(device), case[3], case[4], path, torch.float32).cpu()
            check_rule(ours, op_a.float() @ op_b.float(), ref, f"cuda {path} m,n,k,ta,tb={case}")
            expected = emulated(a, b, None, case[3], case[4], 1.0, 0.0, torch.float32)
            scale = ref.abs().max().item() if ref.numel() else 0.0
            torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5 * scale + 1e-30)
    if has_wgmma:   # what gemm chooses on Hopper
        a, b = _operands(300, 200, 150, False, False, in_dtype, seed=15)
        torch.testing.assert_close(gemm(a.to(device), b.to(device)).cpu(),
                                   path_op(a.to(device), b.to(device), False, False, "wgmma", in_dtype).cpu(),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cuda"], indirect=True)
@pytest.mark.parametrize("in_dtype", HALF, ids=str)
def test_half_gemm_on_cuda_by_the_rule(device, in_dtype):
    """The tensor-core kernel (compute capability 8.0 and later; float32 inside below it): every
    transpose, the kernel's tile edges and every output dtype by the rule, and its float32 results
    within float32 roundings of its CPU emulation (the tensor cores' internal order is unspecified, so
    not bit for bit). Never run yet: no GPU so far."""
    for case, a, b, op_a, op_b, ref in _mma_cases(in_dtype, seed=9):
        for out_t in (None, torch.float32):
            ours = gemm(a.to(device), b.to(device), None, case[3], case[4], 1.0, 0.0, out_t).cpu()
            theirs = (op_a @ op_b) if out_t is None else op_a.float() @ op_b.float()
            check_rule(ours, theirs, ref, f"cuda m,n,k,ta,tb={case} out={out_t}")
            if out_t == torch.float32 and torch.cuda.get_device_capability()[0] >= 8:
                emulated = mma_emulated(a, b, None, case[3], case[4], 1.0, 0.0, out_t)
                scale = ref.abs().max().item() if ref.numel() else 0.0
                torch.testing.assert_close(ours, emulated, rtol=1e-5, atol=1e-5 * scale + 1e-30)
    a = torch.randn(300, 200).to(in_dtype)[:, 3:197]   # a misaligned start: the glue copies it
    b = torch.randn(194, 130).to(in_dtype)
    check_rule(gemm(a.to(device), b.to(device)).cpu(), a @ b, a.double() @ b.double(), "cuda copied operand")
