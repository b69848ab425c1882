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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_transposes_and_edge_sizes(device, dtype):
    for (m, n, k), ta, tb in itertools.product(SIZES, (False, True), (False, True)):
        a, b, c = operands(m, n, k, ta, tb, dtype, device)
        check(a, b, c, ta, tb, 1.5, 1.0)


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
