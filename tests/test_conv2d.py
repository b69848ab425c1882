"""fastconv conv2d (im2col on the GEMM engine, and the direct kernels) against torch.nn.functional.conv2d: forward, gradients
and memory format on a grid of awkward geometries (stride > kernel, dilation 4, groups and depthwise,
1x1, 7x7 stride 2, non-square kernels, padding larger than the kernel, 'same' with even kernels,
unbatched, channels-last, empty batch), every CPU SIMD variant, CUDA when present; gradcheck; the
module against torch.nn.Conv2d; bad inputs."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as TF

import fastconv
import fastconv.functional as F
from fastconv.ops import gemm

# (input shape, weight shape, stride, padding, dilation, groups)
GRID = [
    ((2, 3, 9, 11), (4, 3, 3, 3), 1, 1, 1, 1),
    ((2, 4, 9, 11), (6, 2, 3, 2), (2, 1), (1, 0), (1, 2), 2),
    ((1, 4, 8, 8), (4, 1, 3, 3), 1, 1, 1, 4),                 # depthwise
    ((2, 6, 8, 8), (12, 1, 3, 3), 2, 1, 1, 6),                # depthwise, channel multiplier 2
    ((2, 5, 7, 7), (3, 5, 1, 1), 1, 0, 1, 1),                 # 1x1: no lowering
    ((2, 5, 7, 7), (3, 5, 1, 1), 2, 0, 1, 1),                 # 1x1 strided: lowered
    ((2, 3, 16, 16), (5, 3, 7, 7), 2, 3, 1, 1),               # ResNet stem shape
    ((2, 3, 10, 10), (2, 3, 2, 2), 3, 0, 1, 1),               # stride > kernel
    ((2, 3, 10, 10), (2, 3, 3, 3), 1, 5, 4, 1),               # dilation 4, padding > kernel
    ((1, 2, 13, 5), (3, 2, 5, 1), (1, 2), (2, 0), 1, 1),      # non-square kernel, primes
    ((3, 10, 10), (2, 3, 3, 3), 1, "same", 1, 1),             # unbatched
    ((2, 3, 10, 9), (2, 3, 4, 2), 1, "same", 2, 1),           # 'same' with even kernels (asymmetric)
    ((2, 3, 10, 9), (2, 3, 4, 2), 1, "valid", 1, 1),
    ((1, 17, 7, 6), (32, 17, 3, 3), 1, 1, 1, 1),              # > one micro-tile of output channels
    ((5, 4, 6, 5), (6, 2, 3, 3), 1, 1, 1, 2),                 # small images batched per GEMM, 5 = 2+2+1
    ((2, 16, 7, 7), (8, 16, 1, 1), 1, 0, 1, 1),               # 1x1 with 16 channels: NHWC rows in place
    ((2, 32, 6, 7), (12, 16, 3, 3), 2, 1, 1, 2),              # groups of 16 channels in NHWC, strided
]


ALGORITHMS = ["im2col", "direct", "auto"]


def run_both(x_shape, w_shape, stride, padding, dilation, groups, *, dtype, device, mf, bias=True, seed=0,
             algorithm="auto"):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(x_shape, generator=g, dtype=dtype).to(device)
    if len(x_shape) == 4:
        x0 = x0.contiguous(memory_format=mf)
    w0 = torch.randn(w_shape, generator=g, dtype=dtype).to(device)
    b0 = torch.randn(w_shape[0], generator=g, dtype=dtype).to(device) if bias else None
    results = []
    ours = lambda *a: F.conv2d(*a, algorithm=algorithm)  # noqa: E731
    for fn in (ours, TF.conv2d):
        x = x0.clone().requires_grad_(True)
        w = w0.clone().requires_grad_(True)
        b = b0.clone().requires_grad_(True) if bias else None
        y = fn(x, w, b, stride, padding, dilation, groups)
        go = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype).to(device)
        y.backward(go)
        results.append((y, x.grad, w.grad, b.grad if bias else None))
    return results


def placed_strides(t):
    return [st for st, n in zip(t.stride(), t.shape) if n != 1]


def same_strides(a, b, name):
    # Strides equal to torch's, but for a 1x1 kernel's grad_weight, where torch's own depend on its thread
    # count (from channels-last input: (C, 1, 1, 1) on one thread, (C, 1, C, C) on two): there only the
    # strides of dimensions of more than one element, which are all that place an element
    # (is_contiguous(memory_format=...) and autograd's layout contract skip the others).
    if name == "grad_weight" and tuple(a.shape[-2:]) == (1, 1):
        return placed_strides(a) == placed_strides(b)
    return a.stride() == b.stride()


def assert_match(ours, ref, dtype):
    for a, b, name in zip(ours, ref, ("output", "grad_input", "grad_weight", "grad_bias")):
        if b is None:
            assert a is None
            continue
        assert a.shape == b.shape, name
        assert same_strides(a, b, name), f"{name}: memory format differs from torch's"
        # float32 sums of thousands of terms round differently in any two summation orders: scale the
        # absolute tolerance with the largest magnitude (float64 stays at the default tolerance).
        tol = {} if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5 * (1 + b.abs().max().item()))
        torch.testing.assert_close(a, b, msg=name, **tol)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_grid_cpu_isas(cpu_isa, memory_format, algorithm):
    mf = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    for case in GRID:
        ours, ref = run_both(*case, dtype=torch.float32, device="cpu", mf=mf, algorithm=algorithm)
        assert_match(ours, ref, torch.float32)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid(device, dtype, algorithm):
    for case in GRID:
        for bias in (True, False):
            ours, ref = run_both(*case, dtype=dtype, device=device, mf=torch.contiguous_format, bias=bias,
                                 algorithm=algorithm)
            assert_match(ours, ref, dtype)


@pytest.mark.parametrize("algorithm", ["im2col", "direct"])
def test_wide_layers(device, algorithm):
    # Shapes that give the direct kernels more than one channel block, several reduction
    # chunks (320 input channels), tiles that span two images (7x7 = 49 pixels) and strides.
    for x_shape, w_shape, stride, padding in [((3, 320, 7, 7), (40, 320, 3, 3), 1, 1),
                                              ((2, 32, 12, 11), (72, 32, 3, 3), 2, 1),
                                              ((2, 24, 9, 9), (64, 24, 5, 5), 1, 2)]:
        ours, ref = run_both(x_shape, w_shape, stride, padding, 1, 1, dtype=torch.float32, device=device,
                             mf=torch.contiguous_format, algorithm=algorithm)
        assert_match(ours, ref, torch.float32)


# Channels-last calls that run in NHWC (conv2d_nhwc.cpp, conv2d_direct.cpp, conv2d_winograd.cpp's
# channels-last pass) without an NCHW copy: (input, weight, stride, padding, groups, algorithm)
NHWC_CASES = [
    ((2, 3, 19, 17), (40, 3, 7, 7), 2, 3, 1, "im2col"),        # a stem: rows of 7 taps x 3 channels copied
    ((2, 3, 19, 17), (40, 3, 7, 7), 2, 3, 1, "auto"),
    ((2, 6, 9, 8), (10, 3, 3, 3), 1, 1, 2, "direct"),           # 3 channels per group, 5 filters per group
    ((2, 35, 9, 7), (33, 35, 3, 3), 2, 1, 1, "direct"),         # strided: grad_input by im2col's lowering
    ((1, 3, 6, 5), (70, 3, 3, 3), 1, 2, 1, "direct"),           # 70 filters: several channel blocks
    ((2, 35, 9, 7), (33, 35, 3, 3), 1, 1, 1, "winograd_4x4"),
    ((3, 40, 1, 1), (37, 40, 1, 1), 1, 0, 1, "direct"),         # one pixel: NCHW and NHWC alike
    ((2, 3, 9, 8), (6, 3, 3, 3), 2, 1, 1, "im2col"),            # few taps (27), runs of 9 values
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_last_without_copies(cpu_isa, dtype):
    # Forward and every gradient of a channels-last call, in NHWC throughout: no aten::copy_ or clone of
    # an activation in the call, nor of a channels-last weight (im2col packs a contiguous one from a
    # channels-last copy, and so does direct's grad_input with a stride, which is im2col's; direct and
    # Winograd read either in place); values and strides as torch's.
    for x_shape, w_shape, stride, padding, groups, algorithm in NHWC_CASES:
        g = torch.Generator().manual_seed(3)
        x = torch.randn(x_shape, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w0, b = torch.randn(w_shape, generator=g, dtype=dtype), torch.randn(w_shape[0], generator=g, dtype=dtype)
        for w in (w0, w0.contiguous(memory_format=torch.channels_last)):
            args = ([stride] * 2, [padding] * 2, [1, 1], groups)
            ref_y = TF.conv2d(x, w, b, stride, padding, 1, groups)
            go = torch.randn(ref_y.shape, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), torch.profiler.profile(record_shapes=True) as prof:
                y = torch.ops.fastconv.conv2d(x, w, b, *args, algorithm)
                grads = torch.ops.fastconv.conv2d_backward(go, x, w, *args, algorithm, [True, True, True])
            copied = [e.input_shapes[0] for e in prof.events() if e.name in ("aten::copy_", "aten::clone")]
            strided_direct = algorithm == "direct" and stride > 1 and groups == 1
            im2col_dx = algorithm in ("im2col", "auto") or strided_direct
            weight_copies = im2col_dx and not w.is_contiguous(memory_format=torch.channels_last)
            allowed = [list(w_shape)] if weight_copies else []
            assert all(shape in allowed for shape in copied), (x_shape, w_shape, algorithm, copied)
            ref = torch.ops.aten.convolution_backward(go, x, w, [w_shape[0]], *args[:3], False, [0, 0], groups,
                                                      [True, True, True])
            assert_match((y, *grads), (ref_y, *ref), dtype)


# Channels-last layers whose forward reads each kernel row's taps where they lie (conv2d_nhwc.cpp:
# forward_gathered): one group, no dilation along the width, kh * kw * C within the GEMM's K block.
# (input, weight, stride, padding, dilation)
GATHERED = [
    ((2, 3, 19, 17), (40, 3, 7, 7), 2, 3, 1),                # a stem
    ((3, 64, 9, 9), (130, 64, 1, 1), 2, 0, 1),               # 1x1 stride 2, unpadded; past 128 filters
    ((2, 8, 11, 10), (9, 8, 3, 3), (2, 1), (0, 2), (2, 1)),  # dilated rows, padded columns only
    ((1, 16, 5, 7), (7, 16, 1, 4), 1, (0, 1), 1),            # one kernel row of 4 taps
    ((1, 4, 1, 1), (5, 4, 5, 5), 1, 2, 1),                   # one pixel: all but the centre tap padding
    ((2, 256, 5, 5), (20, 256, 1, 1), 2, 0, 1),              # 256 taps: one K block exactly
    ((2, 257, 5, 5), (20, 257, 1, 1), 2, 0, 1),              # 257: lowered instead
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_last_gathered_rows_cpu_isas(cpu_isa, dtype):
    # Against torch, and bit for bit against the product it stands for: im2col's matrix (taps in the
    # channels-last weight's order) lowered by torch and multiplied by fastconv's GEMM, plus the bias.
    # grad_weight of the same layers (packed from the padded input by offsets where kh * kw > 1)
    # against torch's.
    k_block = fastconv._C.gemm_blocking()["kc"]
    for x_shape, w_shape, stride, padding, dilation in GATHERED:
        g = torch.Generator().manual_seed(5)
        x = torch.randn(x_shape, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(w_shape, generator=g, dtype=dtype)
        for b in (None, torch.randn(w_shape[0], generator=g, dtype=dtype)):
            y = F.conv2d(x, w, b, stride, padding, dilation, algorithm="im2col")
            assert y.is_contiguous(memory_format=torch.channels_last)
            assert_match((y,), (TF.conv2d(x, w, b, stride, padding, dilation),), dtype)
            go = torch.randn(y.shape, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
            args = [list(v) if isinstance(v, tuple) else [v, v] for v in (stride, padding, dilation)]
            dw = torch.ops.fastconv.conv2d_backward(go, x, w, *args, 1, "im2col", [False, True, False])[1]
            ref = torch.ops.aten.convolution_backward(go, x, w, None, *args, False, [0, 0], 1, [False, True, False])[1]
            assert_match((dw,), (ref,), dtype)
            (n, k, oh, ow), (kh, kw) = y.shape, w_shape[2:]
            taps = w_shape[1] * kh * kw
            if taps > k_block:
                continue
            cols = TF.unfold(x, (kh, kw), dilation, padding, stride).view(n, -1, kh, kw, oh * ow)
            cols = cols.permute(0, 4, 2, 3, 1).reshape(n * oh * ow, taps)
            wt = w.permute(0, 2, 3, 1).reshape(k, taps).t()
            want = gemm(cols, wt, b, False, False, 1.0, 0.0 if b is None else 1.0)
            assert torch.equal(y.permute(0, 2, 3, 1).reshape(n * oh * ow, k), want), (x_shape, w_shape, dtype)


# Strided layers whose grad_weight reads the input split into stride phases, in place (conv2d_phases.cpp):
# one group, kernels of 25+ taps (channels-last: or fewer than 16 input channels), output rows of 14+.
# (input, weight, stride, padding, dilation)
PHASES = [
    ((2, 3, 30, 29), (10, 3, 7, 7), 2, 3, 1),                 # a stem, output rows of 15
    ((3, 3, 64, 60), (8, 3, 7, 7), 2, 3, 1),                  # 96 output rows: K blocks of 8 rows, per thread
    ((1, 2, 31, 30), (20, 2, 5, 5), (2, 1), (2, 0), (1, 2)),  # strided rows only, dilated columns, 20 filters
    ((2, 4, 50, 47), (17, 4, 5, 5), 3, 2, 1),                 # stride 3: nine phases; 17 filters
    ((2, 3, 33, 31), (33, 3, 3, 3), 2, 1, 1),                 # 9 taps over 3 channels: channels-last only
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grad_weight_by_stride_phases_cpu_isas(cpu_isa, dtype):
    # Against torch's grad_weight, NCHW and channels-last, where the layer takes the path (counted) and
    # where it does not; and with a NaN and an infinity in the input, which reach the same entries as
    # in torch's.
    for (x_shape, w_shape, stride, padding, dilation), mf, poisoned in itertools.product(
            PHASES, (torch.contiguous_format, torch.channels_last), (False, True)):
        g = torch.Generator().manual_seed(11)
        x = torch.randn(x_shape, generator=g, dtype=dtype)
        if poisoned:
            x[0, 0, 5, 7], x[-1, -1, -3, 2] = float("nan"), float("inf")
        x = x.contiguous(memory_format=mf)
        w = torch.randn(w_shape, generator=g, dtype=dtype).contiguous(memory_format=mf)
        args = [list(v) if isinstance(v, tuple) else [v, v] for v in (stride, padding, dilation)]
        out_shape = TF.conv2d(x, w, None, stride, padding, dilation).shape
        go = torch.randn(out_shape, generator=g, dtype=dtype).contiguous(memory_format=mf)
        passes = fastconv._C.conv2d_phase_passes()
        dw = torch.ops.fastconv.conv2d_backward(go, x, w, *args, 1, "auto", [False, True, False])[1]
        taken = fastconv._C.conv2d_phase_passes() - passes
        expected = w_shape[2] * w_shape[3] >= 25 or (mf == torch.channels_last and w_shape[1] < 16)
        assert taken == int(expected), (x_shape, w_shape, mf)
        ref = torch.ops.aten.convolution_backward(go, x, w, None, *args, False, [0, 0], 1,
                                                  [False, True, False])[1]
        if poisoned:
            assert ref.isnan().any() and torch.equal(dw.isnan(), ref.isnan()), (x_shape, w_shape, mf)
            dw, ref = dw.nan_to_num(), ref.nan_to_num()
        assert_match((dw,), (ref,), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_direct_grad_input_with_a_stride_is_im2cols_cpu_isas(cpu_isa, dtype):
    # algorithm="direct" computes grad_input by its own kernels only at stride 1 and on depthwise layers
    # (direct_grad_input_applies, conv2d_direct.cpp): with a stride it is im2col's, bit for bit (NCHW;
    # channels-last through im2col's NHWC lowering, and its NCHW route for 3 channels), and torch's
    # within tolerance. At stride 1 its own kernels run: different sums from im2col's. (A depthwise
    # layer's kernels sum a pixel's few taps as im2col does: no claim on its bits.)
    cases = [((2, 16, 9, 11), (24, 16, 3, 3), 2, 1, 1, True),
             ((2, 3, 15, 14), (8, 3, 7, 7), 2, 3, 1, True),
             ((2, 16, 9, 8), (8, 16, 3, 3), (1, 2), 1, 1, True),
             ((2, 8, 9, 9), (8, 1, 3, 3), 2, 1, 8, None),             # depthwise: its own kernels
             ((2, 16, 9, 11), (24, 16, 3, 3), 1, 1, 1, False)]
    for (x_shape, w_shape, stride, padding, groups, same), mf in itertools.product(
            cases, (torch.contiguous_format, torch.channels_last)):
        g = torch.Generator().manual_seed(5)
        x = torch.randn(x_shape, generator=g, dtype=dtype).contiguous(memory_format=mf)
        w = torch.randn(w_shape, generator=g, dtype=dtype)
        args = [list(v) if isinstance(v, tuple) else [v, v] for v in (stride, padding, (1, 1))]
        go = torch.randn(TF.conv2d(x, w, None, stride, padding, 1, groups).shape, generator=g,
                         dtype=dtype).contiguous(memory_format=mf)
        dx = {a: torch.ops.fastconv.conv2d_backward(go, x, w, *args, groups, a, [True, False, False])[0]
              for a in ("direct", "im2col")}
        if same is not None:
            assert torch.equal(dx["direct"], dx["im2col"]) == same, (x_shape, w_shape, stride, mf)
        ref = torch.ops.aten.convolution_backward(go, x, w, None, *args, False, [0, 0], groups,
                                                  [True, False, False])[0]
        assert dx["direct"].stride() == ref.stride(), (x_shape, w_shape, mf)
        assert_match((dx["direct"],), (ref,), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_last_through_nchw_copies(dtype):
    # What still runs in NCHW copies its channels-last input and grad_output to NCHW and its results back:
    # im2col where a tap reads fewer than 16 contiguous values in a layer of more taps than a K block
    # (15 channels, 18x1), in groups of 2 or depthwise, and Winograd on fewer than 16 channels; values and
    # strides as torch's (float64 depthwise: torch's grad_weight has the contiguous strides, conv2d.cpp's
    # torch_float64_weight_strides).
    cases = [((2, 15, 20, 5), (4, 15, 18, 1), 1, 1, 1, "im2col"),
             ((2, 8, 9, 9), (8, 2, 3, 3), 2, 1, 4, "im2col"),
             ((2, 8, 9, 9), (8, 1, 3, 3), 2, 1, 8, "im2col"),
             ((2, 8, 9, 7), (6, 8, 3, 3), 1, 1, 1, "winograd_2x2")]
    for x_shape, w_shape, stride, padding, groups, algorithm in cases:
        ours, ref = run_both(x_shape, w_shape, stride, padding, 1, groups, dtype=dtype, device="cpu",
                             mf=torch.channels_last, algorithm=algorithm)
        assert_match(ours, ref, dtype)


def test_channels_last_few_taps_past_the_padded_copy_bound():
    # A few-tap channels-last layer whose zero-padded input would take more than the 64 MiB workspace
    # (3 x 2400 x 2400 floats, 69 MB) is lowered in chunks instead of copied whole: same results.
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 3, 2400, 2400, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 3, 3, 3, generator=g)
    y = F.conv2d(x, w, None, 2, 1, algorithm="im2col")
    assert_match((y,), (TF.conv2d(x, w, None, 2, 1),), torch.float32)
    go = torch.randn(y.shape, generator=g).contiguous(memory_format=torch.channels_last)
    mask = [False, True, False]
    dw = torch.ops.fastconv.conv2d_backward(go, x, w, [2, 2], [1, 1], [1, 1], 1, "im2col", mask)[1]
    # sums of 1.44 million terms: against float64 (torch's float32 is off by ~5e-5 of the largest value)
    args = [t.double() for t in (go, x, w)]
    ref = torch.ops.aten.convolution_backward(*args, None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1, mask)[1]
    assert_match((dw,), (ref.float(),), torch.float32)


def test_float64_channels_last_grad_weight_strides():
    # torch's float64 grad_weight on a channels-last call without dilation keeps the contiguous strides
    # where they are channels-last ones too (one input channel per group, or a 1x1 kernel): so do ours
    # (every algorithm) and the fake kernel; float32 and dilated calls get the channels-last strides.
    from torch._subclasses.fake_tensor import FakeTensorMode
    for k, groups, dilation, stride, cin, cout, dtype in itertools.product(
            [(1, 1), (1, 3), (3, 3)], [1, 2, 4], [1, 2], [1, 2], [4, 8], [4, 8], [torch.float64, torch.float32]):
        if cin % groups or cout % groups:
            continue
        x = torch.randn(2, cin, 7, 7, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(cout, cin // groups, *k, dtype=dtype)
        args = ([stride] * 2, [k[0] // 2 * dilation, k[1] // 2 * dilation], [dilation] * 2, groups)
        go = torch.randn(TF.conv2d(x, w, None, *args).shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
        mask = [False, True, False]
        want = torch.ops.aten.convolution_backward(go, x, w, None, *args[:3], False, [0, 0], groups, mask)[1].stride()
        for algorithm in ("im2col", "direct", "auto"):
            assert torch.ops.fastconv.conv2d_backward(go, x, w, *args, algorithm, mask)[1].stride() == want, (
                k, groups, dilation, stride, cin, cout, dtype, algorithm)
        with FakeTensorMode() as mode:
            fake = torch.ops.fastconv.conv2d_backward(*(mode.from_tensor(t) for t in (go, x, w)), *args, "auto", mask)[1]
        assert fake.stride() == want, (k, groups, dilation, stride, cin, cout, dtype)


# Depthwise layers (groups = input = output channels), which "direct" and "auto" run on the depthwise
# kernels (conv2d_depthwise.cpp): (input, kernel, stride, padding, dilation)
DEPTHWISE = [
    ((2, 8, 9, 11), (3, 3), 1, 1, 1),
    ((2, 8, 9, 11), (3, 3), 2, 1, 1),
    ((1, 37, 7, 6), (5, 5), 1, 2, 1),            # channels past the vector blocks, a wide kernel
    ((2, 6, 10, 9), (3, 2), (2, 3), (1, 0), (2, 1)),
    ((3, 4, 1, 1), (3, 3), 1, 1, 1),             # one pixel: every tap but the centre in the padding
    ((2, 3, 8, 8), (3, 3), 3, 0, 2),             # stride past the kernel
    ((2, 16, 20, 37), (3, 3), 1, 1, 1),          # rows of several vectors and a tail
    ((3, 16, 7, 7), (3, 3), 1, 1, 1),            # NCHW through channels-last copies: whole 8-row blocks
    ((2, 24, 14, 14), (3, 3), 2, 1, 1),          # the copies' blocks with a tail of pixels
    # channels-last rows three pixels at a time: channels in blocks of four vectors and of one
    ((2, 40, 9, 10), (3, 3), 1, 1, 1),
    ((1, 64, 6, 11), (3, 3), 2, 1, 1),
    # channels-last grad_input by rows (horizontal stride 1): a dilated row, a vertical stride of 2
    ((2, 8, 12, 13), (3, 3), 1, 2, (1, 2)),
    ((1, 16, 10, 12), (3, 3), (2, 1), 1, 1),
    # NCHW planes past the copies' 256 pixels (forward) and 1024 (backward), split into stride phases in
    # place: odd and even padding, an odd width (the even/odd split's last column), a stride of 3
    ((2, 5, 17, 19), (3, 3), 2, 1, 1),
    ((1, 3, 18, 20), (5, 5), 2, 2, 1),
    ((1, 2, 20, 23), (3, 3), 3, 1, 1),
    ((1, 3, 33, 35), (3, 3), 2, 1, 1),
    ((1, 2, 33, 32), (3, 3), 1, 1, 1),
    # the stride-2 split by two vectors of a row at a time (70: two AVX-512 float rounds and a masked
    # tail; 64: whole vectors only), and output rows ending in a partial vector stored under a mask
    ((1, 3, 9, 70), (3, 3), 2, 1, 1),
    ((1, 2, 9, 64), (3, 3), 2, 0, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_depthwise_cpu_isas(cpu_isa, memory_format, dtype):
    mf = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    for x_shape, k, stride, padding, dilation in DEPTHWISE:
        for algorithm in ("direct", "auto"):
            ours, ref = run_both(x_shape, (x_shape[1], 1, *k), stride, padding, dilation, x_shape[1], dtype=dtype,
                                 device="cpu", mf=mf, algorithm=algorithm, bias=algorithm == "auto")
            assert_match(ours, ref, dtype)
    if dtype == torch.float64:   # and the gradients are the derivatives
        x = torch.randn(2, 5, 6, 7, dtype=dtype).contiguous(memory_format=mf).requires_grad_(True)
        w = torch.randn(5, 1, 3, 3, dtype=dtype, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, w: F.conv2d(x, w, None, 2, 1, 1, 5, algorithm="direct"), (x, w))


def test_nan_propagates(device):
    # A NaN in the input reaches exactly the outputs whose window covers it, as in torch; padding
    # taps never turn into NaN. Depthwise too (its kernels compute whole vectors past a row's end and
    # read grad_output through zero-padded copies), NCHW and channels-last, every gradient.
    x = torch.randn(1, 32, 6, 6, device=device)
    x[0, 3, 2, 4] = float("nan")
    w = torch.randn(32, 32, 3, 3, device=device)
    for algorithm in ("im2col", "direct"):
        y, ref = F.conv2d(x, w, padding=1, algorithm=algorithm), TF.conv2d(x, w, padding=1)
        assert torch.equal(y.isnan(), ref.isnan()), algorithm
        torch.testing.assert_close(y.nan_to_num(), ref.nan_to_num(), rtol=1e-4, atol=1e-4)
    for mf, stride in itertools.product((torch.contiguous_format, torch.channels_last), (1, 2)):
        xd = torch.randn(2, 9, 11, 13, device=device).contiguous(memory_format=mf)
        xd[1, 4, 5, 6] = float("nan")
        wd = torch.randn(9, 1, 3, 3, device=device)
        got, want = [], []
        for conv, out in ((F.conv2d, got), (TF.conv2d, want)):
            xx, ww = xd.clone().requires_grad_(True), wd.clone().requires_grad_(True)
            y = conv(xx, ww, None, stride, 1, 1, 9)
            go = torch.ones_like(y)
            go[0, 2, 1, 1] = float("nan")
            y.backward(go)
            out.extend((y, xx.grad, ww.grad))
        for a, b in zip(got, want):
            assert torch.equal(a.isnan(), b.isnan()), (mf, stride)
            torch.testing.assert_close(a.nan_to_num(), b.nan_to_num(), rtol=1e-4, atol=1e-4)


def test_channels_last_weight_gives_channels_last_output(device):
    x = torch.randn(2, 3, 8, 8, device=device)
    w = torch.randn(4, 3, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    y, ref = F.conv2d(x, w, padding=1), TF.conv2d(x, w, padding=1)
    assert y.stride() == ref.stride()
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


def test_empty_batch(device):
    x = torch.randn(0, 3, 8, 8, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    y = F.conv2d(x, w, b, padding=1)
    assert y.shape == (0, 4, 8, 8)
    y.sum().backward()
    assert x.grad.shape == x.shape
    torch.testing.assert_close(w.grad, torch.zeros_like(w))
    torch.testing.assert_close(b.grad, torch.zeros_like(b))


def test_large_image_uses_bounded_columns(device):
    # 64 channels x 3x3 x 128x128 positions would need 37 MB of columns per image; still one chunk,
    # but the batch runs through the per-image loop: compare a batch against torch.
    ours, ref = run_both((2, 64, 128, 128), (8, 64, 3, 3), 1, 1, 1, 1, dtype=torch.float32, device=device,
                         mf=torch.contiguous_format)
    assert_match(ours, ref, torch.float32)


def test_im2col_planes_too_large_to_pad():
    # The CPU forward lowers from zero-padded copies of each image's planes unless they would exceed
    # the 64 MiB workspace across threads: 2 planes of 3002^2 floats on 2 threads do (144 MB), and take
    # the plain im2col into a bounded column buffer instead.
    torch.manual_seed(0)
    x, w, b = torch.randn(1, 2, 3000, 3000), torch.randn(3, 2, 3, 3), torch.randn(3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ours = F.conv2d(x, w, b, 1, 1, algorithm="im2col")
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(ours, TF.conv2d(x, w, b, 1, 1), rtol=1e-4, atol=1e-4)


# The CPU im2col paths (csrc/cpu/conv2d.cpp) in each of their ways of sharing out work, which depend on
# the thread count, so each shape runs on 1 and 2 threads: the forward pass's images, chunks or
# channel parts in parallel; grad_input's bundles and parallel col2im; grad_weight's per-thread
# partial sums. Unpadded inputs are copied a whole image's planes at a time. (input, weight, groups,
# padding)
PACKED_PATHS = [
    ((4, 16, 40, 40), (24, 16, 3, 3), 1, 1),    # images in parallel, 5 chunks of positions each
    ((1, 16, 40, 40), (24, 16, 3, 3), 1, 1),    # one image: its chunks in parallel
    ((8, 32, 7, 7), (250, 32, 3, 3), 1, 1),     # one bundle of 8 images, 2 K blocks: channels split too
    ((20, 4, 6, 5), (12, 2, 3, 3), 2, 1),       # bundles of 17 and 3 images, a chunk ending mid-image
    ((7, 6, 15, 15), (10, 6, 3, 3), 1, 1),      # grad_weight: bundles of 3, 3 and 1 images on 2 threads
    ((3, 64, 10, 20), (16, 64, 3, 3), 1, 1),    # channels-last: chunks of 168 rows end mid-image (200 pos.)
    ((16, 24, 7, 7), (40, 24, 1, 1), 1, 0),     # 1x1 on small images: bundles of 8 images
    ((11, 12, 6, 5), (10, 6, 1, 1), 2, 0),      # groups: a group's planes per image, a smaller last bundle
    ((7, 6, 9, 9), (10, 6, 3, 3), 1, 0),        # unpadded 3x3: grad_weight's bundles copy whole images too
    ((1, 20, 5, 5), (30, 20, 1, 1), 1, 0),      # one image on 2 threads: its planes copied in two parts
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_im2col_parallel_paths_cpu_isas(cpu_isa, threads, dtype):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for x_shape, w_shape, groups, padding in PACKED_PATHS:
            for stride, dilation in ((1, 1), (2, 2)):   # runs of the lowering, and lane-by-lane gathers
                for mf in (torch.contiguous_format, torch.channels_last):   # NCHW, and NHWC in place
                    ours, ref = run_both(x_shape, w_shape, stride, padding, dilation, groups, dtype=dtype,
                                         device="cpu", mf=mf, algorithm="im2col")
                    assert_match(ours, ref, dtype)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("algorithm", ["im2col", "direct"])
def test_gradcheck_float64(device, algorithm):
    for x_shape, w_shape, s, p, d, g in [((2, 4, 6, 5), (4, 2, 3, 2), (2, 1), 1, (1, 2), 2),
                                         ((3, 5, 5), (2, 3, 2, 2), 1, "same", 1, 1),
                                         ((1, 1, 28, 27), (2, 1, 5, 5), 2, 2, 1, 1)]:   # CPU: by phases
        x = torch.randn(x_shape, dtype=torch.float64, device=device, requires_grad=True)
        w = torch.randn(w_shape, dtype=torch.float64, device=device, requires_grad=True)
        b = torch.randn(w_shape[0], dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda x, w, b, s=s, p=p, d=d, g=g: F.conv2d(x, w, b, s, p, d, g, algorithm=algorithm), (x, w, b))


DOUBLE_BACKWARD_CASES = [   # x, w, stride, padding, dilation, groups, algorithms
    ((2, 4, 6, 5), (6, 2, 3, 2), (2, 1), 1, (1, 2), 2, ["im2col", "direct"]),
    ((3, 5, 5), (2, 3, 2, 2), 1, "same", 1, 1, ["im2col", "direct", "auto"]),
    ((2, 3, 6, 7), (4, 3, 3, 3), 1, 1, 1, 1, ["winograd_2x2", "winograd_4x4", "im2col"]),
    ((1, 6, 5, 5), (6, 1, 3, 3), 2, 2, 1, 6, ["im2col", "direct"]),          # depthwise, stride 2
]


@pytest.mark.parametrize("case", range(len(DOUBLE_BACKWARD_CASES)))
def test_double_backward_gradgradcheck_float64(device, case):
    # Second derivatives (gradient penalties, MAML, Hessian-vector products) through every algorithm,
    # groups, stride, dilation, 'same' and unbatched input; third derivatives ride on the same ops.
    x_shape, w_shape, s, p, d, g, algorithms = DOUBLE_BACKWARD_CASES[case]
    torch.manual_seed(case)
    x = torch.randn(x_shape, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(w_shape, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(w_shape[0], dtype=torch.float64, device=device, requires_grad=True)
    for algorithm in algorithms:
        assert torch.autograd.gradgradcheck(
            lambda x, w, b, a=algorithm: F.conv2d(x, w, b, s, p, d, g, algorithm=a), (x, w, b))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_gradient_penalty_matches_torch(device, memory_format):
    # WGAN-GP's penalty: ||d critic / d x||^2, differentiated again with respect to the weights and x.
    torch.manual_seed(0)
    x = torch.randn(3, 4, 9, 8, device=device).contiguous(memory_format=memory_format)
    w = torch.randn(5, 4, 3, 3, device=device) * 0.2
    grads = {}
    for name, conv in (("fastconv", F.conv2d), ("torch", TF.conv2d)):
        xx, ww = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        out = torch.tanh(conv(xx, ww, None, 1, 1)).sum()
        (gx,) = torch.autograd.grad(out, xx, create_graph=True)
        penalty = (gx.flatten(1).norm(dim=1) - 1).square().mean()
        grads[name] = torch.autograd.grad(penalty, (xx, ww))
        assert grads[name][1].abs().sum() > 0
    for ours, ref in zip(grads["fastconv"], grads["torch"]):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_linear_double_backward_float64(device):
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradgradcheck(F.linear, (x, w, b))


def test_torch_compile_fullgraph(device):
    x = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)

    def f(x, w):
        return torch.relu(F.conv2d(x, w, padding=1)).sum()

    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(x, w), f(x, w))
    for a, b in zip(torch.autograd.grad(compiled(x, w), (x, w)), torch.autograd.grad(f(x, w), (x, w))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_module_matches_torch(device, padding_mode):
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 1), dilation=1, groups=2,
                          padding_mode=padding_mode).to(device)
    torch.manual_seed(0)
    ours = fastconv.nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 1), dilation=1, groups=2,
                              padding_mode=padding_mode).to(device)
    for k, v in ref.state_dict().items():   # same initialisation
        assert torch.equal(ours.state_dict()[k], v)
    x = torch.randn(2, 4, 9, 8, device=device)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)
    same = fastconv.nn.Conv2d(3, 2, 4, padding="same").to(device)
    ref_same = torch.nn.Conv2d(3, 2, 4, padding="same").to(device)
    ref_same.load_state_dict(same.state_dict())
    x = torch.randn(1, 3, 7, 6, device=device)
    torch.testing.assert_close(same(x), ref_same(x), rtol=1e-4, atol=1e-4)


def _bad(device):
    x = torch.randn(1, 4, 8, 8, device=device)
    return [
        (lambda: F.conv2d(x, torch.randn(2, 3, 3, 3, device=device)), ["expected input with 3 channels"]),
        (lambda: F.conv2d(x, torch.randn(3, 2, 3, 3, device=device), groups=2), ["groups=2 must divide out_channels"]),
        (lambda: F.conv2d(x, torch.randn(4, 2, 3, 3, device=device), groups=3), ["groups=3 must divide in_channels"]),
        (lambda: F.conv2d(x, torch.randn(2, 4, 3, device=device)), ["4-D weight"]),
        (lambda: F.conv2d(x, torch.randn(2, 4, 9, 9, device=device)), ["output size is too small"]),
        (lambda: F.conv2d(x.long(), torch.randn(2, 4, 3, 3, device=device).long()), ["float32, float64, float16 or bfloat16"]),
        (lambda: F.conv2d(x, torch.randn(2, 4, 3, 3, device=device), torch.randn(3, device=device)),
         ["expected bias of shape [2]"]),
    ]


@pytest.mark.parametrize("index", range(7))
def test_bad_input_raises_clear_error(device, index):
    call, words = _bad(device)[index]
    with pytest.raises(RuntimeError) as info:
        call()
    msg = str(info.value)
    assert "fastconv::conv2d" in msg, msg
    for w in words:
        assert w in msg, f"{w!r} missing from: {msg}"


def test_bad_python_arguments():
    x, w = torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3)
    with pytest.raises(RuntimeError, match="not supported for strided"):   # the type torch's raises
        F.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(RuntimeError, match="not supported for strided"):
        torch.nn.functional.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="winograd_4x4.*applies to 3x3 kernels.*stride 1"):   # at construction
        fastconv.nn.Conv2d(3, 4, 3, stride=2, algorithm="winograd_4x4")
    with pytest.raises(ValueError, match="winograd.*applies to 3x3 kernels"):
        fastconv.nn.Conv2d(3, 4, 5, algorithm="winograd")
    with pytest.raises(RuntimeError, match=r"fastconv.nn.Linear: fastconv.linear: expected input to be float32, "
                                           r"float64, float16 or bfloat16 .* but got input torch.int64"):   # the argument the user passed
        fastconv.nn.Linear(3, 4)(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="algorithm must be one of"):
        F.conv2d(x, w, algorithm="fft")
    with pytest.raises(RuntimeError, match="unknown or unavailable algorithm 'fft'"):
        torch.ops.fastconv.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 1, "fft")
