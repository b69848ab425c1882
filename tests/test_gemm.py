"""fastconv's GEMM engine (fastconv::gemm) against torch.mm, and Linear on it: every transpose, edge
sizes (1, primes, micro-tile +/- 1, K = 1, block edges), alpha/beta, strided inputs, every CPU SIMD
variant, CUDA when present; gradcheck; the module against torch.nn.Linear."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as TF

import fastconv
import fastconv.functional as F
from fastconv.ops import gemm

# (m, n, k): 1, primes, the micro-tile (6 x 32 / 6 x 16) and its neighbours, K = 1, the KC = 256 and
# MC = 240 block edges, tall and wide.
SIZES = [(1, 1, 1), (1, 7, 3), (5, 1, 2), (6, 32, 1), (7, 33, 5), (5, 31, 13), (13, 17, 257), (241, 65, 256),
         (37, 97, 511), (2, 300, 9), (129, 3, 40)]


def reference(a, b, c, ta, tb, alpha, beta):
    prod = (a.T if ta else a).double() @ (b.T if tb else b).double()
    out = alpha * prod
    if c is not None and beta != 0:
        out = out + beta * c.double()
    return out


def check(a, b, c, ta, tb, alpha, beta):
    out = gemm(a, b, c, ta, tb, alpha, beta)
    ref = reference(a, b, c, ta, tb, alpha, beta)
    k = a.shape[0] if ta else a.shape[1]
    # error grows with the reduction length K (NNPACK's rule); compare with torch.mm's own error too
    eps = torch.finfo(a.dtype).eps
    tol = 4 * eps * (k + 2) * (ref.abs().max().item() + 1)
    assert out.shape == ref.shape and out.dtype == a.dtype
    err = (out.double() - ref).abs().max().item() if out.numel() else 0.0
    assert err <= tol, f"m,n,k={tuple(ref.shape) + (k,)} ta={ta} tb={tb}: error {err} > {tol}"


def operands(m, n, k, ta, tb, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn((k, m) if ta else (m, k), generator=g, dtype=dtype).to(device)
    b = torch.randn((n, k) if tb else (k, n), generator=g, dtype=dtype).to(device)
    c = torch.randn(m, n, generator=g, dtype=dtype).to(device)
    return a, b, c


def test_all_transposes_and_edge_sizes_cpu_isas(cpu_isa):
    for (m, n, k), ta, tb, dtype in itertools.product(SIZES, (False, True), (False, True),
                                                       (torch.float32, torch.float64)):
        a, b, c = operands(m, n, k, ta, tb, dtype, "cpu")
        check(a, b, None, ta, tb, 1.0, 0.0)
        check(a, b, c, ta, tb, 0.5, -2.0)


def test_few_columns_read_a_in_place_cpu_isas(cpu_isa):
    # GEMMs of at most 64-128 columns (per ISA) with a row-major A read it in place instead of packing
    # it (gemm.cpp: gemm_a_in_place), with the packed path's FMAs in its order: the bits of the first
    # columns of a wider product (which packs A), over K-block counts, row-tile edges, alpha/beta.
    for dtype in (torch.float32, torch.float64):
        for m, n, k in [(24, 1, 3), (97, 16, 300), (131, 24, 513), (500, 33, 64), (61, 64, 7), (203, 100, 290), (50, 128, 33)]:
            a, b, c = operands(m, n, k, False, False, dtype, "cpu")
            wide = torch.cat([b, torch.randn(k, 200 - n, dtype=dtype)], 1)
            for alpha, beta, cc in ((1.0, 0.0, None), (0.5, -2.0, c)):
                cw = None if cc is None else torch.cat([cc, torch.randn(m, 200 - n, dtype=dtype)], 1)
                got = gemm(a, b, cc, False, False, alpha, beta)
                assert torch.equal(got, gemm(a, wide, cw, False, False, alpha, beta)[:, :n]), (m, n, k, dtype)
                check(a, b, cc, False, False, alpha, beta)


def test_few_rows_against_a_transposed_b_cpu_isas(cpu_isa):
    # Few rows (up to 64-128, per ISA) against a B stored transposed, linear's weight at a small batch,
    # run swapped: the weight read in place as A, the product added into C transposed (gemm.cpp:
    # gemm_swapped_in_place). One row to 128, C's columns in one or several chunks (100 x 700: two), K
    # blocks, alpha/beta, NaN in a C that beta = 0 leaves unread, both layouts of A.
    for dtype in (torch.float32, torch.float64):
        shapes = [(1, 24, 5), (8, 1000, 300), (5, 97, 513), (100, 700, 64), (128, 130, 3), (33, 4096, 17)]
        for (m, n, k), ta in itertools.product(shapes, (False, True)):
            a, b, c = operands(m, n, k, ta, True, dtype, "cpu")
            check(a, b, None, ta, True, 1.0, 0.0)
            check(a, b, c, ta, True, 0.5, -2.0)
            assert not gemm(a, b, torch.full_like(c, float("nan")), ta, True, 1.0, 0.0).isnan().any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_transposes_and_edge_sizes(device, dtype):
    for (m, n, k), ta, tb in itertools.product(SIZES, (False, True), (False, True)):
        a, b, c = operands(m, n, k, ta, tb, dtype, device)
        check(a, b, c, ta, tb, 1.5, 1.0)


def test_threads_share_out_columns_or_rows_bit_for_bit_cpu_isas(cpu_isa):
    # Outside a parallel region each thread runs the loop nest alone on its share of C: its columns
    # where m <= n, else its rows (gemm.cpp: loop_nest). Every element's sum is the same as on one
    # thread, so the bits are: wide and tall products, transposed operands, K blocks, partial panels at
    # the shares' edges (3 threads), alpha/beta; float64 and bfloat16 too: widened where the CPU has no
    # bfloat16 kernel, and through the pair-packed nest on the portable vdpbf16ps and AMX tiles (the
    # nest the real AVX512-BF16 and AMX kernels run).
    before = torch.get_num_threads()
    shapes = [(61, 517, 300, False, False), (517, 150, 300, True, False), (40, 999, 70, True, True),
              (700, 130, 513, False, True)]
    try:
        for (m, n, k, ta, tb), dtype in itertools.product(shapes, (torch.float32, torch.float64, torch.bfloat16)):
            a, b, c = operands(m, n, k, ta, tb, torch.float32, "cpu")
            a, b, c = a.to(dtype), b.to(dtype), c.to(dtype)
            args = (a, b, c, ta, tb, 0.5, -2.0) if dtype != torch.bfloat16 else (a, b, None, ta, tb, 1.0, 0.0)
            paths = [lambda: gemm(*args)]
            if dtype == torch.bfloat16:
                paths += [lambda p=p: torch.ops.fastconv_testing.gemm_bf16_path(a, b, ta, tb, p, None)
                          for p in ("emulated", "amx_emulated")]
            for i, path in enumerate(paths):
                torch.set_num_threads(1)
                one = path()
                for threads in (2, 3):
                    torch.set_num_threads(threads)
                    assert torch.equal(path(), one), (m, n, k, ta, tb, dtype, i, threads)
            if dtype != torch.bfloat16:
                check(*args)
    finally:
        torch.set_num_threads(before)


def test_bottom_edge_tiles_are_bit_identical_to_full_ones_cpu_isas(cpu_isa):
    # A last row tile of at most 2 or 4 rows multiplies only those rows (gemm_kernels.inc:
    # tile_for_rows), the same FMAs per element in the same order: each of its rows must equal the same
    # row computed inside a full tile, bit for bit (M = 32: a 2-row edge on 6-row tiles; 28: 4 rows).
    g = torch.Generator().manual_seed(3)
    for dtype, (m, k, n) in itertools.product((torch.float32, torch.float64), [(32, 300, 70), (28, 513, 40),
                                                                               (34, 9, 17)]):
        a = torch.randn(m, k, generator=g, dtype=dtype)
        b = torch.randn(k, n, generator=g, dtype=dtype)
        full = gemm(a, b)
        for start in range(0, m, 3):   # windows that put each row at every position of a tile
            window = gemm(a[start:start + 12], b)
            assert torch.equal(window, full[start:start + 12]), (dtype, m, k, n, start)
        check(a, b, None, False, False, 1.0, 0.0)


def test_large_multi_block(device):
    a, b, c = operands(300, 3100, 600, False, True, torch.float32, device)   # several MC, NC, KC blocks
    check(a, b, c, False, True, 1.0, 0.5)


def test_strided_and_broadcast_operands(device):
    base = torch.randn(40, 50, device=device)
    a = base[::2, ::3]                  # non-contiguous, 20 x 17
    b = torch.randn(17, 60, device=device)[:, ::2]   # 17 x 30
    check(a, b, torch.randn(30, device=device), False, False, 1.0, 1.0)    # c broadcast along rows
    check(a, b, torch.randn(20, 1, device=device), False, False, 2.0, 3.0)  # ... and along columns


def test_beta_zero_ignores_nan_in_c(device):
    a, b, _ = operands(8, 9, 10, False, False, torch.float32, device)
    c = torch.full((8, 9), float("nan"), device=device)
    assert not gemm(a, b, c, False, False, 1.0, 0.0).isnan().any()


def test_alpha_zero_reads_neither_a_nor_b(device):
    a = torch.full((4, 3), float("nan"), device=device)
    b = torch.randn(3, 5, device=device)
    c = torch.randn(4, 5, device=device)
    torch.testing.assert_close(gemm(a, b, c, False, False, 0.0, 2.0), 2 * c)
    assert torch.equal(gemm(a, b, None, False, False, 0.0, 0.0), torch.zeros(4, 5, device=device))


def test_empty_and_k_zero(device):
    assert gemm(torch.randn(0, 4, device=device), torch.randn(4, 3, device=device)).shape == (0, 3)
    out = gemm(torch.randn(3, 0, device=device), torch.randn(0, 5, device=device))
    assert torch.equal(out, torch.zeros(3, 5, device=device))
    c = torch.randn(3, 5, device=device)
    torch.testing.assert_close(gemm(torch.randn(3, 0, device=device), torch.randn(0, 5, device=device), c,
                                    False, False, 1.0, 2.0), 2 * c)


def test_gradcheck_float64(device):
    for ta, tb in itertools.product((False, True), (False, True)):
        a, b, c = operands(4, 5, 3, ta, tb, torch.float64, device)
        a.requires_grad_(True)
        b.requires_grad_(True)
        c = c[0].clone().requires_grad_(True)   # broadcast c gets a summed gradient
        assert torch.autograd.gradcheck(lambda a, b, c, ta=ta, tb=tb: gemm(a, b, c, ta, tb, 0.7, 1.3), (a, b, c))


def test_bad_inputs_raise_clear_errors(device):
    a, b = torch.randn(3, 4, device=device), torch.randn(5, 6, device=device)
    with pytest.raises(RuntimeError, match="fastconv::gemm: inner dimensions differ"):
        gemm(a, b)
    with pytest.raises(RuntimeError, match="fastconv::gemm: expected 2-D"):
        gemm(torch.randn(3, device=device), b)
    with pytest.raises(RuntimeError, match="fastconv::gemm: expected a to be float32, float64, float16 or bfloat16"):
        gemm(a.long(), b.long())
    with pytest.raises(RuntimeError, match="fastconv::gemm: expected b of dtype"):
        gemm(a, torch.randn(4, 2, dtype=torch.float64, device=device))
    with pytest.raises(RuntimeError, match="fastconv::gemm: expected c broadcastable"):
        gemm(a, torch.randn(4, 2, device=device), torch.randn(7, 2, device=device), False, False, 1.0, 1.0)


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7), (4, 1, 2, 7), (0, 7), (7,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(device, shape, bias):
    x = torch.randn(shape, device=device, requires_grad=True)
    w = torch.randn(11, 7, device=device, requires_grad=True)
    b = torch.randn(11, device=device, requires_grad=True) if bias else None
    y = F.linear(x, w, b)
    ref = TF.linear(x, w, b)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    if y.numel():
        go = torch.randn_like(y)
        grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], go)
        refs = torch.autograd.grad(ref, [t for t in (x, w, b) if t is not None], go)
        for g, r in zip(grads, refs):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 0), (3, 4, 0), (0, 0)])
def test_linear_zero_in_features(device, shape):
    """in_features = 0: torch's linear gives the bias broadcast (zeros without one); its gradient reaches
    the bias only."""
    x = torch.randn(shape, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 0, device=device, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, device=device, dtype=torch.float64, requires_grad=True)
    for bias in (b, None):
        y, ref = F.linear(x, w, bias), TF.linear(x, w, bias)
        torch.testing.assert_close(y, ref)
        go = torch.randn_like(y)
        inputs = [t for t in (x, w, bias) if t is not None]
        for g, r in zip(torch.autograd.grad(y, inputs, go), torch.autograd.grad(ref, inputs, go)):
            torch.testing.assert_close(g, r)


def test_linear_module_parity_and_state_dict(device):
    torch.manual_seed(0)
    ref = torch.nn.Linear(9, 4).to(device)
    torch.manual_seed(0)
    ours = fastconv.nn.Linear(9, 4).to(device)
    for k, v in ref.state_dict().items():   # same initialisation
        assert torch.equal(ours.state_dict()[k], v)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, 9, device=device)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    nobias = fastconv.nn.Linear(9, 4, bias=False).to(device)
    assert "bias" not in dict(nobias.named_parameters())
    torch.testing.assert_close(nobias(x), TF.linear(x, nobias.weight), atol=1e-5, rtol=1e-5)


def test_linear_bad_input(device):
    with pytest.raises(RuntimeError, match="fastconv.linear: expected input with last dimension 7"):
        F.linear(torch.randn(3, 6, device=device), torch.randn(2, 7, device=device))


def test_torch_compile_fullgraph(device):
    w = torch.randn(6, 5, device=device, requires_grad=True)
    x = torch.randn(4, 5, device=device)

    def f(x, w):
        return F.linear(torch.relu(x), w).sum()

    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(x, w), f(x, w))
    torch.testing.assert_close(torch.autograd.grad(compiled(x, w), w)[0], torch.autograd.grad(f(x, w), w)[0])


def test_measured_fma_peak_is_positive():
    assert fastconv._C.fma_peak_gflops(True, 0.01) > 0


def test_cache_blocking_rule():
    """gemm_blocking_rule (csrc/cpu/gemm_kernels.h): the blocking the CPUs of this project get, the
    invariants the loop nest relies on, and what build_info reports for this machine."""
    rule = fastconv._C.gemm_blocking_rule
    K, M = 1 << 10, 1 << 20
    assert rule(32 * K, 1 * M, 32 * M, 8, 32, 4) == (256, 256, 3264)       # AMD Zen 4, AVX-512 float32
    assert rule(48 * K, 2 * M, 105 * M, 8, 32, 4) == (256, 512, 8192)      # Intel Sapphire Rapids
    assert rule(32 * K, 1 * M, 32 * M, 8, 16, 8) == (256, 128, 1632)       # AVX-512 float64
    for l1d, l2, l3 in itertools.product((4 * K, 32 * K, 48 * K, 80 * K), (64 * K, 1 * M, 2 * M), (1 * M, 32 * M, 300 * M)):
        for mr, nr, elem in ((8, 32, 4), (6, 16, 4), (8, 16, 8), (6, 8, 4)):
            kc, mc, nc = rule(l1d, l2, l3, mr, nr, elem)
            assert 64 <= kc <= 256 and kc % 16 == 0
            assert mc >= mr and mc % mr == 0
            assert nr <= nc <= 8192 and nc % nr == 0
    info = fastconv.build_info()["gemm_blocking"]
    assert (info["kc"], info["mc"], info["nc"]) == rule(info["l1d"], info["l2"], info["l3"], info["mr"], info["nr"], 4)


_SMALL_CACHES_SCRIPT = r"""
import torch, torch.nn.functional as TF, fastconv, fastconv.functional as F
from fastconv.ops import gemm
info = fastconv.build_info()["gemm_blocking"]
mr, nr = info["mr"], info["nr"]   # gemm_blocking_rule on these caches (AVX-512's 8 x 32 tile: 64 x 64 x 384)
assert (info["kc"], info["mc"], info["nc"]) == (64, 64 // mr * mr, 409 // nr * nr), info
g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float64):
    for ta, tb in ((False, False), (True, True)):
        a = torch.randn(300, 700, generator=g, dtype=dtype)
        b = torch.randn(700, 1000, generator=g, dtype=dtype)
        ref = a.double() @ b.double()
        out = gemm(a.t().contiguous() if ta else a, b.t().contiguous() if tb else b, None, ta, tb)
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-3)
x = torch.randn(3, 40, 17, 17, generator=g, dtype=torch.float64, requires_grad=True)
w = torch.randn(72, 40, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
for algorithm in ("im2col", "winograd", "direct"):
    y = F.conv2d(x, w, None, 1, 1, algorithm=algorithm)
    ref = TF.conv2d(x, w, None, 1, 1)
    torch.testing.assert_close(y, ref)
    go = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, (x, w), go), torch.autograd.grad(ref, (x, w), go))
print("ok")
"""


def test_small_cache_blocking_runs_every_block_edge():
    """With caches small enough (FASTCONV_CPU_CACHES) that the blocking is 64 x 64 x 384 (AVX2's tile:
    64 x 60 x 400), a 300 x 700 x 1000 GEMM crosses every K, row and column block with partial ones at
    each edge, and the convolutions run their prepacked K blocks at 64: the loop nest is right for
    blockings other than this CPU's."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, FASTCONV_CPU_CACHES="4K,64K,1M")
    proc = subprocess.run([sys.executable, "-c", _SMALL_CACHES_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
