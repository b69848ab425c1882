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
    for kind, mat in [("input", mats["BT"]), ("filter", mats["G"]), ("output", mats["AT"]),
                      ("output_adjoint", mats["AT"].T), ("filter_adjoint", mats["G"].T)]:
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
    # float64 has its own kernels per ISA (half the lanes; the filter gathers differ): partial panels
    # of rows (17, 3 and 1 filters) and of lanes, forward and backward
    for n, c, k in [(1, 3, 17), (3, 17, 3), (2, 9, 1)]:
        _compare((n, c, 7, 6), k, 1, algorithm, dtype=torch.float64, device="cpu")


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


@pytest.mark.parametrize("algorithm", ["winograd_2x2", "winograd_4x4"])
def test_weight_read_through_its_strides(device, algorithm):
    # The filter transforms read the weight in place (no NCHW copy): channels-last, and dense layouts
    # with the taps or the channels in another order; a weight that requires grad (transformed every
    # call) and one that does not (cached), forward and grad_input, which reads it flipped.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 9, 10, generator=g).to(device)
    w0 = torch.randn(8, 16, 3, 3, generator=g).to(device)
    go = torch.randn(2, 8, 9, 10, generator=g).to(device)
    y_ref = TF.conv2d(x, w0, padding=1)
    dx_ref = torch.ops.aten.convolution_backward(go, x, w0, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                 [True, False, False])[0]
    layouts = [w0.contiguous(memory_format=torch.channels_last), w0.transpose(2, 3).contiguous().transpose(2, 3),
               w0.transpose(0, 1).contiguous().transpose(0, 1)]
    for w in layouts:
        for requires_grad in (False, True):
            wr = w.detach().requires_grad_(requires_grad)
            with torch.no_grad():
                y = torch.ops.fastconv.conv2d(x.contiguous(), wr, None, [1, 1], [1, 1], [1, 1], 1, algorithm)
                dx = torch.ops.fastconv.conv2d_backward(go, x, wr, [1, 1], [1, 1], [1, 1], 1, algorithm,
                                                        [True, False, False])[0]
            _close(y.contiguous(), y_ref)
            _close(dx.contiguous(), dx_ref)


@pytest.mark.parametrize("algorithm", ["winograd_2x2", "winograd_4x4", "auto"])
def test_nan_and_inf_stay_where_torch_puts_them(algorithm):
    # A transform mixes a tile's values (and inf - inf is NaN), so a non-finite input, weight or
    # grad_output would spread past the outputs it reaches; the CPU kernels decline such calls and run
    # im2col's: NaN and infinities of the input and grad_output land exactly where torch's do, in every
    # pass. A NaN weight gives im2col's result bit for bit, which differs from torch's at the borders
    # (im2col multiplies the padding's zeros by the weight, NaN * 0 = NaN, where torch skips them).
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(2, 64, 9, 9, generator=g)
    w0 = torch.randn(64, 64, 3, 3, generator=g) * 0.05
    go0 = torch.randn(2, 64, 9, 9, generator=g)
    cases = {"x nan": (0, float("nan")), "x inf": (0, float("inf")), "w nan": (1, float("nan")),
             "go -inf": (2, float("-inf"))}
    for name, (which, value) in cases.items():
        x, w, go = x0.clone(), w0.clone(), go0.clone()
        (x, w, go)[which].view(-1)[100] = value
        for requires_grad in (False, True):   # a cached and a per-call filter transform
            wr = w.clone().requires_grad_(requires_grad)
            with torch.no_grad():
                y = torch.ops.fastconv.conv2d(x, wr, None, [1, 1], [1, 1], [1, 1], 1, algorithm)
                dx, dw, _ = torch.ops.fastconv.conv2d_backward(go, x, wr, [1, 1], [1, 1], [1, 1], 1, algorithm,
                                                               [True, True, False])
            if which == 1:
                with torch.no_grad():
                    ref = [torch.ops.fastconv.conv2d(x, wr, None, [1, 1], [1, 1], [1, 1], 1, "im2col")] + list(
                        torch.ops.fastconv.conv2d_backward(go, x, wr, [1, 1], [1, 1], [1, 1], 1, "im2col",
                                                           [True, True, False])[:2])
                for got, want in zip((y, dx), ref):   # grad_weight does not read the weight
                    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())
                torch.testing.assert_close(dw, ref[2], rtol=1e-3, atol=1e-3)
                continue
            ref = [TF.conv2d(x, w, padding=1)] + list(torch.ops.aten.convolution_backward(
                go, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False])[:2])
            for got, want, what in zip((y, dx, dw), ref, ("output", "grad_input", "grad_weight")):
                assert torch.equal(got.isnan(), want.isnan()), (name, what)
                assert torch.equal(got.isinf(), want.isinf()), (name, what)
                torch.testing.assert_close(got.nan_to_num(0, 0, 0), want.nan_to_num(0, 0, 0), rtol=1e-4, atol=1e-4)
    # float16 (float32 inside, the scan on the float16 input itself): the same footprint as torch's
    x = x0.half()
    x.view(-1)[100] = float("nan")
    y = torch.ops.fastconv.conv2d(x, w0.half(), None, [1, 1], [1, 1], [1, 1], 1, algorithm)
    assert torch.equal(y.isnan(), TF.conv2d(x.float(), w0.half().float(), padding=1).isnan())
    # once the weight is finite again, the cached call runs Winograd again (its bytes changed)
    with torch.no_grad():
        assert not torch.equal(torch.ops.fastconv.conv2d(x0, w0, None, [1, 1], [1, 1], [1, 1], 1, algorithm),
                               torch.ops.fastconv.conv2d(x0, w0, None, [1, 1], [1, 1], [1, 1], 1, "im2col"))


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


def test_auto_chooses_per_pass():
    """With a weight that requires grad, "auto" chooses each pass by common/conv2d_args.h's rule: bit for bit
    what the named algorithm gives (the algorithms round differently, so each check can fail)."""
    conv, back = torch.ops.fastconv.conv2d, torch.ops.fastconv.conv2d_backward
    args = ([1, 1], [1, 1], [1, 1], 1)
    # (batch, channels, size): forward and grad_input's choice, grad_weight's
    cases = [((1, 64, 8), "im2col", "winograd_2x2"),          # 4 tiles: the filter transform does not pay
             ((2, 64, 16), "winograd_4x4", "winograd_4x4"),   # 32 tiles of 4x4
             ((2, 16, 16), "im2col", "winograd_4x4"),         # few channels: Winograd for grad_weight only
             ((1, 64, 7), "im2col", "im2col"),                # 49 output positions
             ((8, 64, 4), "winograd_2x2", "winograd_2x2")]    # 4x4 outputs, 32 tiles of 2x2
    g = torch.Generator().manual_seed(0)
    for (n, c, hw), data_algo, weight_algo in cases:
        x = torch.randn(n, c, hw, hw, generator=g)
        w = (torch.randn(c, c, 3, 3, generator=g) * 0.05).requires_grad_(True)
        go = torch.randn(n, c, hw, hw, generator=g)
        with torch.no_grad():
            y = {a: conv(x, w, None, *args, a) for a in ("auto", "im2col", "winograd_2x2", "winograd_4x4")}
            grads = {a: back(go, x, w, *args, a, [True, True, False])
                     for a in ("auto", "im2col", "winograd_2x2", "winograd_4x4")}
        other = "im2col" if data_algo != "im2col" else "winograd_4x4"
        assert torch.equal(y["auto"], y[data_algo]) and not torch.equal(y["auto"], y[other]), (n, c, hw)
        assert torch.equal(grads["auto"][0], grads[data_algo][0]), (n, c, hw)
        assert not torch.equal(grads["auto"][0], grads[other][0]), (n, c, hw)
        assert torch.equal(grads["auto"][1], grads[weight_algo][1]), (n, c, hw)
        for a in {"im2col", "winograd_2x2", "winograd_4x4"} - {weight_algo}:
            assert not torch.equal(grads["auto"][1], grads[a][1]), (n, c, hw, a)


@pytest.mark.parametrize("algorithm", ["winograd_2x2", "winograd_4x4"])
def test_grad_weight_over_several_chunks(device, algorithm):
    # 4 x 64 x 60 x 60: the tile rows split into 2 (F(4x4)) or 4 (F(2x2)) chunks of the 8 MiB buffers,
    # whose products are summed into the same dU; channels-last input through its own pass.
    for mf in (torch.contiguous_format, torch.channels_last):
        _compare((4, 64, 60, 60), 64, 1, algorithm, dtype=torch.float32, device=device, mf=mf, seed=3)


def test_auto_for_inference():
    """A weight that does not require grad (cached U): fewer tiles suffice (common/conv2d_args.h)."""
    g = torch.Generator().manual_seed(0)
    for (n, c, hw), want in [((1, 64, 8), "winograd_2x2"),    # 4 tiles of 4x4, 16 of 2x2
                             ((2, 64, 8), "winograd_4x4"),    # 8 tiles of 4x4, C x K <= 256^2
                             ((1, 64, 4), "im2col")]:         # 4 tiles of 2x2
        x = torch.randn(n, c, hw, hw, generator=g)
        w = torch.randn(c, c, 3, 3, generator=g) * 0.05
        y = {a: torch.ops.fastconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1, a)
             for a in ("auto", "im2col", "winograd_2x2", "winograd_4x4")}
        assert torch.equal(y["auto"], y[want]), (n, c, hw)
        for a in {"im2col", "winograd_2x2", "winograd_4x4"} - {want}:
            assert not torch.equal(y["auto"], y[a]), (n, c, hw, a)


def test_grad_weight_accuracy_against_float64(device):
    # Winograd's weight-gradient form sums products of transformed tiles, F(4x4)'s scaled by A's
    # entries up to 8 on each side: on ResNet-like layers (N(0, 1) data and grad_output) its max error
    # against a float64 reference stays within 4x im2col's for F(2x2) and 16x for F(4x4) (measured
    # 1-1.6x and 9-15x; torch's own float32 grad_weight measured 1.3-10x im2col's).
    g = torch.Generator().manual_seed(1)
    for n, c, hw in [(8, 64, 28), (4, 128, 14), (8, 256, 7)]:
        x = torch.randn(n, c, hw, hw, generator=g).to(device)
        w = torch.randn(c, c, 3, 3, generator=g).to(device)
        go = torch.randn(n, c, hw, hw, generator=g).to(device)
        ref = torch.ops.aten.convolution_backward(go.double(), x.double(), w.double(), None, [1, 1], [1, 1], [1, 1],
                                                  False, [0, 0], 1, [False, True, False])[1]
        err = {a: (torch.ops.fastconv.conv2d_backward(go, x, w, [1, 1], [1, 1], [1, 1], 1, a, [False, True, False])[1]
                   .double() - ref).abs().max().item() for a in ("im2col", "winograd_2x2", "winograd_4x4")}
        assert err["winograd_2x2"] <= 4 * err["im2col"], err
        assert err["winograd_4x4"] <= 16 * err["im2col"], err


def _cases(seed, shapes):
    """Per dtype and shape (n, c, k, h, w, p) of a 3x3 stride-1 convolution: the shape and random x,
    weight, bias and grad_output."""
    g = torch.Generator().manual_seed(seed)
    for dtype in (torch.float32, torch.float64):
        for (n, c, k, h, wd, p) in shapes:
            yield dtype, (n, c, k, h, wd, p), (torch.randn(n, c, h, wd, generator=g, dtype=dtype),
                                               torch.randn(k, c, 3, 3, generator=g, dtype=dtype),
                                               torch.randn(k, generator=g, dtype=dtype),
                                               torch.randn(n, k, h + 2 * p - 2, wd + 2 * p - 2, generator=g,
                                                           dtype=dtype))


def _output_and_grad_input(x, w, b, go, p, algorithm):
    with torch.no_grad():
        y = torch.ops.fastconv.conv2d(x, w, b, [1, 1], [p, p], [1, 1], 1, algorithm)
        dx = torch.ops.fastconv.conv2d_backward(go, x, w, [1, 1], [p, p], [1, 1], 1, algorithm,
                                                [True, False, False])[0]
    return y, dx


def _with_setting(setter, value, counter, run):
    """run() with a pass's setting changed for its duration; returns its result and how many passes it ran."""
    before, passes = setter(value), counter()
    try:
        return run(), counter() - passes
    finally:
        setter(before)


def _assert_like_torch(got, x, w, b, go, p, dtype):
    wd = w.detach()
    ref = (TF.conv2d(x, wd, b, padding=p),
           torch.ops.aten.convolution_backward(go, x, wd, None, [1, 1], [p, p], [1, 1], False, [0, 0], 1,
                                               [True, False, False])[0])
    for a, want in zip(got, ref):
        big = 1 + want.abs().max().item()
        tol = {} if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-5 * big)
        torch.testing.assert_close(a, want, **tol)


@pytest.mark.parametrize("algorithm", ["winograd_2x2", "winograd_4x4"])
def test_fused_pass_gives_the_bits_of_the_unfused_one(cpu_isa, algorithm):
    # Filters transformed for one call only (a weight that requires grad) whose transform U exceeds
    # 4 L2s run the fused pass (conv2d_winograd.cpp, run_fused): per block of output channels, the
    # filter panels of each K block of 64 input channels, their GEMMs against the packed V, then the
    # output transform. Forced here on every eligible call (threshold 0) and against run()'s (threshold
    # out of reach): the same bits, forward and grad_input (the flipped, transposed filters), float32
    # and float64, per ISA, NCHW and channels-last (its own pass: V packed as the GEMMs' A, the filter
    # panels as B; a channels-last weight); output channels that fill no block or micro-panel evenly,
    # input channels past one K block, padding 0..2, a bias; and both against torch.
    def calls(x, w, b, go, p):
        return _output_and_grad_input(x, w, b, go, p, algorithm)

    fused = (fastconv._C.winograd_set_fused_min_bytes, fastconv._C.winograd_fused_passes)
    shapes = [(3, 70, 19, 5, 6, 1), (1, 130, 1, 7, 7, 2), (2, 1, 33, 4, 9, 0), (5, 64, 64, 3, 3, 1)]
    for dtype, (n, c, k, h, wd, p), (x0, w0, b, go0) in _cases(11, shapes):
        for mf in (torch.contiguous_format, torch.channels_last):
            x, go = x0.contiguous(memory_format=mf), go0.contiguous(memory_format=mf)
            w = w0.contiguous(memory_format=mf).requires_grad_(True)
            got = {}
            for name, least in (("fused", 0), ("unfused", 1 << 62)):
                got[name], passes = _with_setting(fused[0], least, fused[1], lambda: calls(x, w, b, go, p))
                assert passes == (2 if name == "fused" else 0), name
            for a, b_, what in zip(got["fused"], got["unfused"], ("output", "grad_input")):
                assert torch.equal(a, b_), (what, dtype, n, c, k, h, wd, p, mf)
            _assert_like_torch(got["fused"], x, w, b, go, p, dtype)
    # A NaN in the weight: the fused pass sees it as it transforms the filters and declines, as the
    # unfused one does, and the call runs im2col's (the same bits as asking for im2col on NCHW tensors,
    # which is what a declined channels-last call runs)
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 70, 5, 5, generator=g)
    w = torch.randn(19, 70, 3, 3, generator=g)
    w[3, 65, 1, 2] = float("nan")
    w.requires_grad_(True)
    go = torch.randn(2, 19, 5, 5, generator=g)
    with torch.no_grad():
        want = (torch.ops.fastconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1, "im2col"),
                torch.ops.fastconv.conv2d_backward(go, x, w, [1, 1], [1, 1], [1, 1], 1, "im2col",
                                                   [True, False, False])[0])
    for mf in (torch.contiguous_format, torch.channels_last):
        got, passes = _with_setting(fused[0], 0, fused[1],
                                    lambda: calls(x.contiguous(memory_format=mf), w, None,
                                                  go.contiguous(memory_format=mf), 1))
        assert passes == 2
        for a, b_ in zip(got, want):
            assert a.isnan().any() and torch.equal(a.isnan(), b_.isnan()), mf
            assert torch.equal(a.nan_to_num(), b_.nan_to_num()), mf


@pytest.mark.parametrize("algorithm", ["winograd_2x2", "winograd_4x4"])
def test_tiled_pass_gives_the_bits_of_the_chunked_one(cpu_isa, algorithm):
    # Passes whose thread's transformed tiles fit its L2 run per block of tiles on one thread
    # (conv2d_winograd.cpp: run_tiled for NCHW, blocks of at most nr tiles; run_tiled_nhwc for
    # channels-last, blocks of 32; V in a ring of planes that the products M overwrite as the GEMMs
    # consume it). Forced here on every call (size out of reach) and against the chunked passes (size
    # 0): the same bits, forward and grad_input, float32 and float64, per ISA, NCHW and channels-last,
    # cached filters and filters transformed per call (a weight that requires grad); rows of more tiles
    # than an NCHW block holds (cut into pieces: 35 tiles of F(2x2) or 18 of F(4x4) against nr = 32, 16
    # or 8), blocks of several rows and short last blocks, input channels past one K block, output
    # channels past no micro-panel evenly, padding 0..2, a bias; and both against torch.
    tiled = (fastconv._C.winograd_set_tiled_max_bytes, fastconv._C.winograd_tiled_passes)
    shapes = [(2, 70, 19, 9, 70, 1), (3, 5, 7, 13, 9, 2), (1, 64, 64, 12, 12, 0), (2, 1, 33, 4, 9, 1)]
    for dtype, (n, c, k, h, wd, p), (x0, w0, b, go0) in _cases(13, shapes):
        for mf, trained in itertools.product((torch.contiguous_format, torch.channels_last), (False, True)):
            x, go = x0.contiguous(memory_format=mf), go0.contiguous(memory_format=mf)
            w = w0.clone().requires_grad_(trained)
            got = {}
            for name, most in (("tiled", 1 << 62), ("chunked", 0)):
                got[name], passes = _with_setting(tiled[0], most, tiled[1],
                                                  lambda: _output_and_grad_input(x, w, b, go, p, algorithm))
                assert passes == (2 if name == "tiled" else 0), name
            for a, b_, what in zip(got["tiled"], got["chunked"], ("output", "grad_input")):
                assert torch.equal(a, b_), (what, dtype, n, c, k, h, wd, p, mf, trained)
            _assert_like_torch(got["tiled"], x, w, b, go, p, dtype)


def _tiled_rule(n, c, size, m, block, channels_last, l2):
    # conv2d_winograd.cpp's tiled_applies, written out: a thread's ring of alpha^2 + 1 planes of `block`
    # tiles (planes rounded up to a cache line, plus one) within the L2, U (alpha^2 c^2 values) at most
    # twice the V and M that the chunked pass writes and reads back per block (c <= 8 block), and two
    # blocks per thread (two threads); NCHW blocks are whole rows of tiles (TileBlocks), channels-last
    # ones runs of 32 tiles.
    line = 16
    elems = c * block
    ring = ((m + 2) ** 2 + 1) * ((elems + line - 1) // line * line + line) * 4
    if c * c > 2 * 2 * block * 2 * c:
        return False
    tiles_w = rows_h = -(-size // m)
    rows = n * rows_h
    if channels_last:
        blocks = -(-rows * tiles_w // block)
    elif tiles_w > block:
        blocks = rows * -(-tiles_w // block)
    else:
        blocks = -(-rows // max(1, block // tiles_w))
    return ring <= l2 and blocks >= 4


def test_tiled_pass_rule():
    # The rule (-1): a pass runs tiled where a thread's ring of transformed tiles fits its L2 and there
    # are two blocks per thread; the filters U stream from the L3 (ResNet's 128-channel layer: U of
    # F(4x4) 2.4 MB, ring 0.6 MB). Two threads, as measured. Cases on both sides of the rule on the CPUs
    # seen (NCHW blocks of 32 tiles with 1 MiB L2 on the Zen 4 and 2 MiB on the Intel, of 16 with 512
    # KiB on the Zen 3; channels-last blocks of 32): 64 and 128 channels at batch 8 (tiled, but for 128
    # channels-last on the Zen 3: ring 0.6 MB), 128 at batch 1 (one block: chunked), 256 channels (ring
    # 1.2 MB with 32-tile blocks: chunked on the Zen 4, tiled on the Intel; chunked on the Zen 3 too,
    # where NCHW's blocks of 16 tiles make its U more than twice their V and M), 320 channels (chunked everywhere: its
    # ring, 1.5 MB, would fit the Intel's L2, but its U, 14.7 MB, is more than twice the V and M of a
    # block's tiles).
    blocking = fastconv._C.gemm_blocking()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for n, c, size in ((8, 64, 28), (8, 128, 14), (1, 128, 14), (8, 256, 14), (8, 320, 14)):
            x = torch.randn(n, c, size, size)
            w = torch.randn(c, c, 3, 3) * 0.05
            for channels_last in (False, True):
                xx = x.contiguous(memory_format=torch.channels_last) if channels_last else x
                passes = fastconv._C.winograd_tiled_passes()
                with torch.no_grad():
                    F.conv2d(xx, w, padding=1, algorithm="winograd_4x4")
                block = 32 if channels_last else blocking["nr"]
                expected = _tiled_rule(n, c, size, 4, block, channels_last, blocking["l2"])
                assert fastconv._C.winograd_tiled_passes() - passes == int(expected), (n, c, size, channels_last)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("algorithm", ["winograd_2x2", "winograd_4x4"])
def test_channels_last_pass_gives_the_bits_of_nchw(cpu_isa, algorithm):
    # Channels-last tensors of 16+ channels run their own pass (conv2d_winograd.cpp: run_nhwc, and
    # run_grad_weight with nhwc): transforms vectorised along the channels, U^T packed as the GEMMs' B, no
    # NCHW copies. Its sums are the NCHW pass's (the same K blocks in the same order), so the same bits:
    # forward, grad_input, grad_weight and grad_bias, float32 and float64, per ISA; weights
    # channels-last (read along the channels) and contiguous, requiring grad (transformed every call)
    # or not (cached); channel counts that fill no vector, micro-panel or K block evenly, 1x1 to 9x10
    # images, padding 0..2. The gradients come in torch's layouts, and no aten copy runs.
    cl = torch.channels_last
    shapes = [(2, 16, 17, 9, 10, 1), (1, 70, 33, 5, 6, 2), (3, 33, 16, 6, 7, 0), (2, 24, 40, 1, 1, 1)]
    for dtype, (n, c, k, h, wd, p), (x0, w0, b0, go0) in _cases(13, shapes):
        for w_cl, requires_grad in itertools.product((False, True), (False, True)):
            w = (w0.contiguous(memory_format=cl) if w_cl else w0.clone()).requires_grad_(requires_grad)
            got = {}
            for mf in (torch.contiguous_format, cl):
                x, go = x0.contiguous(memory_format=mf), go0.contiguous(memory_format=mf)
                with torch.no_grad(), torch.profiler.profile() as prof:
                    y = torch.ops.fastconv.conv2d(x, w, b0, [1, 1], [p, p], [1, 1], 1, algorithm)
                    grads = torch.ops.fastconv.conv2d_backward(go, x, w, [1, 1], [p, p], [1, 1], 1,
                                                               algorithm, [True, True, True])
                got[mf] = (y, *grads)
                if mf == cl:
                    copies = [e.name for e in prof.events() if e.name in ("aten::copy_", "aten::clone")]
                    assert not copies, (n, c, k, h, wd, p, copies)
                    ref = torch.ops.aten.convolution_backward(go, x, w, [k], [1, 1], [p, p], [1, 1],
                                                              False, [0, 0], 1, [True, True, True])
                    assert [t.stride() for t in got[cl][1:3]] == [t.stride() for t in ref[:2]]
            for name, a, b in zip(("output", "grad_input", "grad_weight", "grad_bias"), got[cl],
                                  got[torch.contiguous_format]):
                assert torch.equal(a, b), (name, dtype, n, c, k, h, wd, p, w_cl, requires_grad)
        _close(got[cl][0], TF.conv2d(x0, w0, b0, 1, p))   # and both are torch's convolution
