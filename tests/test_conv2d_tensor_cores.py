"""conv2d's half-precision forward on the CUDA tensor cores (issue 14; common/conv2d_tensor_cores.h):
im2col of float16/bfloat16 images into column rows padded to 16-byte multiples, then the mma.sync GEMM
over a strided batch of (image, group) with float32 sums and the bias added before the one rounding.
The CPU emulation (fastconv_testing.cuda_conv2d_half: the same plan, pitches and batch offsets, the
kernel's thread bodies and the emulated mma.sync kernel, every read bounds-checked) runs on every
machine; on a GPU of compute capability 8.0+, conv2d with im2col or auto in half precision must match
it within float32 roundings. Judged by the flash-attention rule against float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import fastconv.functional as F
from lowprec import check_rule

HALF = [torch.bfloat16, torch.float16]
emulated = torch.ops.fastconv_testing.cuda_conv2d_half
BIG = 1 << 26

# (input, weight, stride, padding, dilation, groups): a group's filter row of 27 and 30 elements (not a
# multiple of 8: the padded copy), output positions not a multiple of 8 (padded column rows), more
# output channels than a 128-row block tile, 1x1 and rectangular kernels, stride, dilation, groups
# (batch offsets per group), depthwise, padding wider than the kernel
SHAPES = [((2, 3, 9, 11), (16, 3, 3, 3), 1, 1, 1, 1), ((3, 6, 7, 5), (10, 3, 3, 2), (2, 1), (1, 0), (1, 2), 2),
          ((1, 8, 10, 10), (130, 8, 1, 1), 1, 0, 1, 1), ((2, 16, 6, 6), (32, 16, 3, 3), 2, 1, 1, 1),
          ((2, 4, 5, 5), (4, 1, 3, 3), 1, 1, 1, 4), ((1, 2, 3, 3), (3, 2, 3, 3), 3, 4, 1, 1),
          ((1, 12, 9, 9), (24, 4, 5, 5), 1, 2, 2, 3)]


def _case(x_shape, w_shape, dtype, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, generator=gen).to(dtype)
    w = (torch.randn(w_shape, generator=gen) / (w_shape[1] * w_shape[2] * w_shape[3]) ** 0.5).to(dtype)
    b = torch.randn(w_shape[0], generator=gen).to(dtype) if bias else None
    return x, w, b


def _pair(v):
    return (v, v) if isinstance(v, int) else v


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_emulated_by_the_rule(dtype):
    for i, (xs, ws, st, pd, dl, g) in enumerate(SHAPES):
        for bias in (True, False):
            x, w, b = _case(xs, ws, dtype, seed=i, bias=bias)
            ours = emulated(x, w, b, _pair(st), _pair(pd), _pair(dl), g, BIG)
            theirs = TF.conv2d(x, w, b, st, pd, dl, g)
            ref = TF.conv2d(x.double(), w.double(), None if b is None else b.double(), st, pd, dl, g)
            assert ours.dtype == dtype and ours.shape == ref.shape
            check_rule(ours, theirs, ref, f"{dtype} {xs} * {ws} bias={bias}")


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_emulated_layouts_unbatched_and_empty(dtype):
    """channels_last input (the output follows it, as torch's), an unbatched image, no images, and no
    input channels (bias only, output of torch's shape)."""
    x, w, b = _case((2, 6, 8, 7), (12, 6, 3, 3), dtype, seed=20)
    xl = x.to(memory_format=torch.channels_last)
    ours = emulated(xl, w, b, (1, 1), (1, 1), (1, 1), 1, BIG)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ours, emulated(x, w, b, (1, 1), (1, 1), (1, 1), 1, BIG))
    one = emulated(x[0], w, b, (1, 1), (1, 1), (1, 1), 1, BIG)
    assert one.shape == (12, 8, 7) and torch.equal(one, emulated(x[:1], w, b, (1, 1), (1, 1), (1, 1), 1, BIG)[0])
    assert emulated(x[:0], w, b, (1, 1), (1, 1), (1, 1), 1, BIG).shape == (0, 12, 8, 7)
    x0, w0, b0 = _case((2, 0, 5, 5), (4, 0, 3, 3), dtype, seed=21)
    out = emulated(x0, w0, b0, (1, 1), (1, 1), (1, 1), 1, BIG)
    assert out.shape == TF.conv2d(x0.float(), w0.float(), b0.float(), padding=1).shape


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_emulated_bundles_and_chunks_give_the_same_bits(dtype):
    """A workspace for two of five images (bundles), and one too small for one image's columns (chunks
    of 8-multiples of positions, the last one ragged): every output's sum is formed in the same order,
    so the bits equal the one-launch result's."""
    x, w, b = _case((5, 4, 11, 9), (20, 2, 3, 3), dtype, seed=22)
    whole = emulated(x, w, b, (1, 1), (1, 1), (1, 1), 2, BIG)
    rows, pitch = 4 * 9, 104   # column rows per image; 99 positions padded to 104
    for workspace in (2 * rows * pitch * 2 + 10, rows * 24 * 2, rows * 8 * 2, 1):
        assert torch.equal(emulated(x, w, b, (1, 1), (1, 1), (1, 1), 2, workspace), whole), workspace


@pytest.mark.parametrize("device", ["cuda"], indirect=True)
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_conv2d_half_on_the_tensor_cores(device, dtype):
    """On compute capability 8.0+, conv2d in half precision with im2col or auto runs on the tensor
    cores: by the rule, and within float32 roundings of the emulation (the tensor cores' internal
    order is unspecified, so not bit for bit). Never run yet: no GPU so far."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("the tensor-core GEMM needs compute capability 8.0")
    for i, (xs, ws, st, pd, dl, g) in enumerate(SHAPES):
        x, w, b = _case(xs, ws, dtype, seed=30 + i)
        expected = emulated(x, w, b, _pair(st), _pair(pd), _pair(dl), g, BIG)
        ref = TF.conv2d(x.double(), w.double(), b.double(), st, pd, dl, g)
        for algorithm in ("im2col", "auto"):
            ours = F.conv2d(x.to(device), w.to(device), b.to(device), st, pd, dl, g, algorithm=algorithm).cpu()
            check_rule(ours, TF.conv2d(x, w, b, st, pd, dl, g), ref, f"cuda {algorithm} {dtype} {xs} * {ws}")
            torch.testing.assert_close(ours.float(), expected.float(), rtol=1e-2, atol=1e-2 * ref.abs().max().item())
