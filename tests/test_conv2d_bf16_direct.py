"""bfloat16 direct convolution on the bfloat16 dot product (issue 14; cpu/conv2d_bf16_direct.h): output
positions x 64 output channels per micro-tile, read straight from a padded NHWC copy, the taps that
fall wholly in the padding skipped. Its portable build (the emulated vdpbf16ps) runs on every machine
through fastconv_testing.conv2d_bf16_direct; the real one where the CPU has AVX512-BF16, where it
must give the emulation's bits and is what algorithm="direct" (and "auto") run for bfloat16. Judged
by the flash-attention rule against float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import fastconv
import fastconv.functional as F
from lowprec import check_rule

direct_path = torch.ops.fastconv_testing.conv2d_bf16_direct
HAS_BF16 = fastconv._C.cpu_isas().index(fastconv._C.best_cpu_isa()) >= fastconv._C.cpu_isas().index("avx512_bf16")

# (input, weight, stride, padding, dilation): odd and single channels (the zero half of the last pair),
# output channels around the 64-wide panels, fewer positions than a tile, kernels 1x1 to 7x7 and
# rectangular, stride 2 and 3, dilation, padding wider than the kernel (outputs that read only padding)
SHAPES = [((2, 5, 9, 7), (3, 5, 3, 3), 1, 1, 1), ((1, 64, 8, 8), (70, 64, 3, 3), 2, 1, 1),
          ((3, 17, 11, 13), (130, 17, 3, 2), 1, (2, 0), (1, 2)), ((1, 1, 5, 5), (1, 1, 1, 1), 1, 0, 1),
          ((2, 32, 4, 4), (64, 32, 3, 3), 1, 1, 1), ((1, 3, 20, 20), (8, 3, 7, 7), 2, 3, 1),
          ((1, 4, 3, 3), (2, 4, 3, 3), 3, 4, 1), ((1, 2, 1, 1), (65, 2, 3, 3), 1, 1, 1),
          ((2, 128, 7, 7), (63, 128, 3, 3), 1, 1, 1), ((1, 6, 10, 9), (9, 6, 5, 5), 1, 2, 2),
          ((2, 16, 6, 6), (128, 16, 1, 1), 2, 0, 1)]


def _case(x_shape, w_shape, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, generator=gen).bfloat16()
    w = (torch.randn(w_shape, generator=gen) / (w_shape[1] * w_shape[2] * w_shape[3]) ** 0.5).bfloat16()
    b = torch.randn(w_shape[0], generator=gen).bfloat16() if bias else None
    return x, w, b


def _pairs(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def test_emulated_kernel_by_the_rule():
    """Every shape, with and without bias, through the portable build (every machine)."""
    for i, (x_shape, w_shape, s, p, d) in enumerate(SHAPES):
        for bias in (True, False):
            x, w, b = _case(x_shape, w_shape, seed=i, bias=bias)
            s2, p2, d2 = _pairs(s), _pairs(p), _pairs(d)
            ours = direct_path(x, w, b, s2, p2, d2, "emulated")
            ref = TF.conv2d(x.double(), w.double(), None if b is None else b.double(), s2, p2, d2)
            check_rule(ours, TF.conv2d(x, w, b, s2, p2, d2), ref, f"emulated {x_shape} {w_shape} s={s} p={p} d={d}")


def test_images_in_bundles_give_the_whole_batchs_bits():
    """The NHWC copy is bounded (a bundle of images at a time, at least one): bundles of 2, 2 and 1
    image, or one image each, give the bits of the whole batch in one bundle."""
    x, w, b = _case((5, 6, 7, 5), (66, 6, 3, 3), seed=30)
    args = (x, w, b, (1, 1), (1, 1), (1, 1), "emulated")
    image = 9 * 7 * 3 * 4   # one padded image: 9 x 7 pixels, 3 channel pairs of 4 bytes
    whole = direct_path(*args)
    for workspace in (2 * image, 1):
        assert torch.equal(direct_path(*args, workspace), whole), f"workspace {workspace}"
    with pytest.raises(RuntimeError, match="workspace of at least 0 bytes"):
        direct_path(*args, -1)


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no AVX512-BF16 (the emulation is tested above)")
def test_real_kernel_gives_the_emulations_bits():
    for i, (x_shape, w_shape, s, p, d) in enumerate(SHAPES):
        x, w, b = _case(x_shape, w_shape, seed=10 + i)
        args = (x, w, b, _pairs(s), _pairs(p), _pairs(d))
        assert torch.equal(direct_path(*args, "avx512_bf16"), direct_path(*args, "emulated")), f"{x_shape} {w_shape}"


@pytest.mark.parametrize("isa", ["avx512", "avx512_bf16", "amx"])
def test_direct_and_auto_by_the_rule_on_each_isa(isa):
    """algorithm="direct" in bfloat16 runs this kernel where the ISA has the bfloat16 dot product (and
    float32 inside below it); "auto" runs it too for layers of 16+ input and 64+ output channels but
    1x1 strided ones (conv2d_bf16_direct.cpp's measured rule). Unbatched and
    channels-last inputs come back in torch's shape and memory format."""
    if fastconv._C.cpu_isas().index(isa) > fastconv._C.cpu_isas().index(fastconv._C.best_cpu_isa()):
        pytest.skip(f"this CPU cannot run {isa} kernels (best: {fastconv._C.best_cpu_isa()})")
    before = fastconv._C.cpu_isa()
    fastconv._C.set_cpu_isa(isa)
    try:
        for i, (x_shape, w_shape, s, p, d) in enumerate(SHAPES):
            x, w, b = _case(x_shape, w_shape, seed=20 + i)
            s2, p2, d2 = _pairs(s), _pairs(p), _pairs(d)
            ref = TF.conv2d(x.double(), w.double(), b.double(), s2, p2, d2)
            theirs = TF.conv2d(x, w, b, s2, p2, d2)
            ours = F.conv2d(x, w, b, s2, p2, d2, algorithm="direct")
            check_rule(ours, theirs, ref, f"{isa} direct {x_shape} {w_shape}")
            strided_pointwise = w_shape[2:] == (1, 1) and s != 1
            if isa != "avx512" and x_shape[1] >= 16 and w_shape[0] >= 64 and not strided_pointwise:
                assert torch.equal(F.conv2d(x, w, b, s2, p2, d2), ours), f"{isa} auto is not direct: {x_shape}"
        x, w, b = _case((2, 32, 9, 9), (40, 32, 3, 3), seed=40)
        check_rule(F.conv2d(x[0], w, b, padding=1), TF.conv2d(x[0], w, b, padding=1),
                   TF.conv2d(x[0].double(), w.double(), b.double(), padding=1), f"{isa} unbatched")
        xc = x.to(memory_format=torch.channels_last)
        ours = F.conv2d(xc, w, b, padding=1)
        assert ours.is_contiguous(memory_format=torch.channels_last)
        check_rule(ours, TF.conv2d(xc, w, b, padding=1), TF.conv2d(x.double(), w.double(), b.double(), padding=1),
                   f"{isa} channels_last")
    finally:
        fastconv._C.set_cpu_isa(before)


@pytest.mark.parametrize("path", ["emulated", "avx512_bf16"])
def test_nan_and_inf_reach_the_outputs_torchs_do(path):
    """A NaN or an infinity in one pixel reaches every output whose taps read it -- a tile's skipped
    taps are only ever padding -- and nothing else."""
    if path == "avx512_bf16" and not HAS_BF16:
        pytest.skip("this CPU has no AVX512-BF16")
    x, w, b = _case((2, 24, 6, 6), (66, 24, 3, 3), seed=5)
    x[0, 3, 0, 0] = float("nan")
    x[1, 7, 5, 2] = float("inf")
    ours = direct_path(x, w, b, (1, 1), (1, 1), (1, 1), path)
    theirs = TF.conv2d(x.float(), w.float(), b.float(), padding=1)
    assert torch.equal(ours.isnan(), theirs.isnan())
    assert torch.equal(ours.isinf(), theirs.isinf())


@pytest.mark.parametrize("path", ["emulated", "avx512_bf16"])
def test_padding_is_never_multiplied(path):
    """A tile's positions share their taps, so a tap in the padding is never multiplied: an infinite
    weight on the top-left tap makes exactly the outputs whose top-left tap reads the image infinite,
    no NaN (0 * inf) anywhere, whatever shares a tile (torch's bfloat16 convolution on the CPU does
    the same; a zero-padded float64 reference would give NaN at the edges)."""
    if path == "avx512_bf16" and not HAS_BF16:
        pytest.skip("this CPU has no AVX512-BF16")
    for x_shape in [(1, 16, 6, 6), (3, 16, 4, 5), (2, 16, 1, 7)]:
        x, w, b = _case(x_shape, (64, 16, 3, 3), seed=8)
        w[0, 0, 0, 0] = float("inf")
        out = direct_path(x, w, b, (1, 1), (1, 1), (1, 1), path)
        oh = torch.arange(x_shape[2]).view(-1, 1)
        ow = torch.arange(x_shape[3]).view(1, -1)
        reads = ((oh >= 1) & (ow >= 1)).expand(x_shape[0], -1, -1)
        assert not out.isnan().any(), x_shape
        assert torch.equal(out[:, 0].isinf(), reads), x_shape
        assert out[:, 1:].isfinite().all(), x_shape


def test_cached_filters_follow_the_weight_and_inputs_are_untouched():
    """A frozen weight's packed panels are cached; changing the weight in place is seen on the next
    call (the cache compares the weight's bytes), and neither input nor weight is modified."""
    x, w, b = _case((2, 32, 7, 7), (64, 32, 3, 3), seed=6)
    x0, w0 = x.clone(), w.clone()
    first = F.conv2d(x, w, b, padding=1, algorithm="direct")
    assert torch.equal(x, x0) and torch.equal(w, w0)
    with torch.no_grad():
        w.mul_(-2)
    second = F.conv2d(x, w, b, padding=1, algorithm="direct")
    check_rule(second, TF.conv2d(x, w, b, padding=1), TF.conv2d(x.double(), w.double(), b.double(), padding=1),
               "after an in-place change")
    assert not torch.equal(first, second)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("algorithm", ["auto", "im2col", "direct"])
def test_no_input_channels_as_torch(dtype, algorithm):
    """An input of no channels: torch returns an output of no channels (whatever out_channels), an
    empty grad_input and grad_weight and a zero grad_bias. (This divided by zero before.)"""
    x = torch.randn(2, 0, 5, 5, dtype=dtype, requires_grad=True)
    w = torch.randn(3, 0, 3, 3, dtype=dtype, requires_grad=True)
    b = torch.randn(3, dtype=dtype, requires_grad=True)
    out = F.conv2d(x, w, b, padding=1, algorithm=algorithm)
    ref = TF.conv2d(x, w, b, padding=1)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    out.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    torch.testing.assert_close(b.grad, torch.zeros_like(b))
    assert F.conv2d(x[0].detach(), w.detach(), algorithm=algorithm).shape == TF.conv2d(x[0].detach(), w.detach()).shape
