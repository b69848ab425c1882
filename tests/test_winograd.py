"""Winograd convolution F(2x2, 3x3) and F(4x4, 3x3): the transforms against their explicit matrices,
forward and backward against torch on awkward sizes, gradcheck, accuracy against a
float64 reference, and the errors for shapes Winograd does not apply to."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as TF

import fastconv
import fastconv.functional as F

TILES = {"winograd_2x2": 2, "winograd_4x4": 4}

# Lavin & Gray (2015), section 4.1 and 4.2, written out here independently of the C++ header.
PAPER = {
    2: {"BT": [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        "G": [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        "AT": [[1, 1, 1, 0], [0, 1, -1, -1]]},
    4: {"BT": [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        "G": [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        "AT": [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]},
}


@pytest.mark.parametrize("m", [2, 4])
def test_matrices_are_lavin_and_grays(m):
    got = fastconv._C.winograd_matrices(m)
    for name, want in PAPER[m].items():
        torch.testing.assert_close(torch.tensor(got[name], dtype=torch.float64),
                                   torch.tensor(want, dtype=torch.float64), msg=name)


@pytest.mark.parametrize("m", [2, 4])
def test_straight_line_transforms_match_their_matrices(m):
    mats = {k: torch.tensor(v, dtype=torch.float64) for k, v in PAPER[m].items()}
    g = torch.Generator().manual_seed(m)
    for kind, mat in [("input", mats["BT"]), ("filter", mats["G"]), ("output", mats["AT"])]:
        for _ in range(20):
            x = torch.randn(mat.shape[1], generator=g, dtype=torch.float64)
            y = torch.tensor(fastconv._C.winograd_transform(kind, m, x.tolist()), dtype=torch.float64)
            torch.testing.assert_close(y, mat @ x, rtol=1e-14, atol=1e-14, msg=kind)


@pytest.mark.parametrize("m", [2, 4])
def test_transforms_compute_a_correlation(m):
    # Y = A^T [(G g G^T) .* (B^T d B)] A is the m x m valid correlation of d with g (float64).
    mats = {k: torch.tensor(v, dtype=torch.float64) for k, v in PAPER[m].items()}
    g = torch.Generator().manual_seed(10 + m)
    d = torch.randn(m + 2, m + 2, generator=g, dtype=torch.float64)
    w = torch.randn(3, 3, generator=g, dtype=torch.float64)
    u = mats["G"] @ w @ mats["G"].T
    v = mats["BT"] @ d @ mats["BT"].T
    y = mats["AT"] @ (u * v) @ mats["AT"].T
    ref = TF.conv2d(d[None, None], w[None, None])[0, 0]
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def _compare(x_shape, k_out, padding, algorithm, *, dtype, device, mf=torch.contiguous_format, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(x_shape, generator=g, dtype=dtype).to(device)
    if x0.dim() == 4:
        x0 = x0.contiguous(memory_format=mf)
    w0 = torch.randn(k_out, x_shape[-3], 3, 3, generator=g, dtype=dtype).to(device)
    b0 = torch.randn(k_out, generator=g, dtype=dtype).to(device)
    outs = []
    for fn in (lambda *a: F.conv2d(*a, algorithm=algorithm), TF.conv2d):
        x, w, b = (t.clone().requires_grad_(True) for t in (x0, w0, b0))
        y = fn(x, w, b, 1, padding)
        go = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype).to(device)
        y.backward(go)
        outs.append((y, x.grad, w.grad, b.grad))
    for a, b, name in zip(*outs, ("output", "grad_input", "grad_weight", "grad_bias")):
        assert a.shape == b.shape and a.stride() == b.stride(), name
        tol = {} if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-5 * (1 + b.abs().max().item()))
        torch.testing.assert_close(a, b, msg=f"{name} {x_shape} k={k_out} p={padding} {algorithm}", **tol)


@pytest.mark.parametrize("algorithm", ["winograd_2x2", "winograd_4x4", "winograd"])
def test_awkward_sizes_cpu_isas(cpu_isa, algorithm):
    for hw, p in itertools.product([1, 2, 3, 5, 7, 13], [0, 1, 2]):
        if hw + 2 * p < 3:
            continue
        for n, c, k in [(1, 3, 17), (3, 17, 3), (3, 1, 1)]:
            _compare((n, c, hw, hw + 1 if hw > 1 else hw), k, p, algorithm, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("algorithm", ["winograd_2x2", "winograd_4x4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_against_torch(device, dtype, algorithm):
    for x_shape, k, p in [((3, 64, 13, 7), 64, 1), ((1, 17, 5, 13), 64, 2), ((3, 64, 7, 7), 3, 0),
                          ((2, 3, 13, 13), 17, 1), ((17, 6, 5), 5, 1),       # unbatched
                          ((2, 5, 9, 9), 4, 4)]:                             # padding > 2: grad_input crops
        _compare(x_shape, k, p, algorithm, dtype=dtype, device=device)


@pytest.mark.parametrize("algorithm", ["winograd_2x2", "winograd_4x4"])
def test_channels_last(device, algorithm):
    _compare((2, 17, 7, 13), 5, 1, algorithm, dtype=torch.float32, device=device, mf=torch.channels_last)


@pytest.mark.parametrize("algorithm", ["winograd_2x2", "winograd_4x4"])
def test_gradcheck_float64(device, algorithm):
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: F.conv2d(x, w, b, 1, 1, algorithm=algorithm), (x, w, b))


def test_empty_batch(device):
    x = torch.randn(0, 3, 8, 8, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    y = F.conv2d(x, w, padding=1, algorithm="winograd")
    assert y.shape == (0, 4, 8, 8)
    y.sum().backward()
    assert x.grad.shape == x.shape
    torch.testing.assert_close(w.grad, torch.zeros_like(w))


def _close(a, b):   # F(4x4) rounds ~5x worse than direct convolution: tolerance scaled to the values
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * (1 + b.abs().max().item()))


def test_accuracy_against_float64(device):
    # VGG-like layers, N(0, 1) data, He-scaled weights: the max error against a float64 reference is
    # at most 2x the direct algorithm's for F(2x2) and 10x for F(4x4) (README's accuracy table).
    g = torch.Generator().manual_seed(0)
    for c, k, hw in [(64, 64, 56), (128, 128, 28), (256, 256, 14)]:
        x = torch.randn(2, c, hw, hw, generator=g).to(device)
        w = (torch.randn(k, c, 3, 3, generator=g) * (2.0 / (9 * c)) ** 0.5).to(device)
        ref = TF.conv2d(x.double(), w.double(), padding=1)
        err = {a: (F.conv2d(x, w, padding=1, algorithm=a).double() - ref).abs().max().item()
               for a in ("direct", "winograd_2x2", "winograd_4x4")}
        assert err["winograd_2x2"] <= 2 * err["direct"], err
        assert err["winograd_4x4"] <= 10 * err["direct"], err


@pytest.mark.parametrize("kwargs, words", [
    (dict(weight=(4, 3, 5, 5)), "3x3 kernels"),
    (dict(stride=2), "stride 1"),
    (dict(dilation=2), "dilation 1"),
    (dict(groups=3, weight=(3, 1, 3, 3)), "groups=1"),
])
def test_shapes_winograd_does_not_apply_to(device, kwargs, words):
    x = torch.randn(1, 3, 9, 9, device=device)
    w = torch.randn(kwargs.pop("weight", (4, 3, 3, 3)), device=device)
    for algorithm in ("winograd", "winograd_2x2", "winograd_4x4"):
        with pytest.raises(RuntimeError) as info:
            F.conv2d(x, w, padding=1, algorithm=algorithm, **kwargs)
        assert "fastconv::conv2d" in str(info.value) and words in str(info.value)
        assert f"algorithm '{algorithm}'" in str(info.value)


def test_fake_kernel_refuses_what_the_kernels_refuse():
    # Traced code (fake tensors) raises the same errors as eager calls.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, w5 = torch.randn(1, 3, 9, 9), torch.randn(4, 3, 5, 5)
        with pytest.raises(RuntimeError, match="applies to 3x3 kernels"):
            torch.ops.fastconv.conv2d(x, w5, None, [1, 1], [1, 1], [1, 1], 1, "winograd")
        with pytest.raises(RuntimeError, match="unknown or unavailable algorithm 'fft'"):
            torch.ops.fastconv.conv2d(x, w5, None, [1, 1], [1, 1], [1, 1], 1, "fft")


def test_auto_chooses_grad_input_apart_from_forward():
    """A layer of 64 channels at 7x7 (4 tiles of 4x4) with a weight that requires grad: the forward pass's
    "auto" is im2col (too few tiles to share the per-call filter transform), grad_input's is Winograd
    F(4x4) (common/conv2d_args.h): bit for bit what each named algorithm gives."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 7, 7, generator=g)
    w = (torch.randn(64, 64, 3, 3, generator=g) * 0.05).requires_grad_(True)
    go = torch.randn(1, 64, 7, 7, generator=g)
    conv, back = torch.ops.fastconv.conv2d, torch.ops.fastconv.conv2d_backward
    args = ([1, 1], [1, 1], [1, 1], 1)
    with torch.no_grad():
        assert torch.equal(conv(x, w, None, *args, "auto"), conv(x, w, None, *args, "im2col"))
        dx = {a: back(go, x, w, *args, a, [True, False, False])[0] for a in ("auto", "winograd_4x4", "im2col")}
    assert torch.equal(dx["auto"], dx["winograd_4x4"])
    assert not torch.equal(dx["auto"], dx["im2col"])   # the two round differently: the check can fail
