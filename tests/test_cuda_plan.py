"""The CUDA im2col convolution's launch plan, run on the CPU: torch.ops.fastconv_testing.cuda_conv2d_plan
runs common/conv2d_gemm_plan.h (the batching of images and groups into one launch, the batched GEMMs'
offsets, the chunking over images and output positions) with host loops over the CUDA kernels' own
thread bodies (im2col_source, col2im_gather) and block tiles (gemm_block_tile). No CUDA code of
fastconv has run on a GPU yet; this checks, on every machine, the arithmetic the GPU will run.
Outputs the plan must write whole are prefilled with NaN, so an unwritten element fails."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import fastconv  # noqa: F401  (loads the kernels and the testing op)

# (input shape, weight shape, stride, padding, dilation, groups)
SHAPES = [
    ((2, 3, 9, 11), (4, 3, 3, 3), 1, 1, 1, 1),
    ((3, 4, 9, 11), (6, 2, 3, 2), (2, 1), (1, 0), (1, 2), 2),
    ((5, 6, 8, 8), (12, 1, 3, 3), 2, 1, 1, 6),                # depthwise, multiplier 2
    ((3, 6, 7, 5), (4, 6, 1, 1), 1, 0, 1, 1),                 # 1x1: input read in place
    ((3, 6, 7, 5), (4, 3, 1, 1), 1, 0, 1, 2),                 # 1x1 grouped
    ((2, 5, 7, 7), (3, 5, 1, 1), 2, 0, 1, 1),                 # 1x1 strided: lowered
    ((2, 3, 16, 16), (5, 3, 7, 7), 2, 3, 1, 1),               # stem-like
    ((2, 3, 10, 10), (2, 3, 3, 3), 1, 5, 4, 1),               # dilation 4, padding > kernel
    ((1, 2, 13, 5), (3, 2, 5, 1), (1, 2), (2, 0), 1, 1),      # non-square, primes
    ((2, 70, 3, 3), (67, 70, 3, 3), 1, 1, 1, 1),              # GEMM tiles + 1 (M = 67, K = 630)
    ((0, 3, 5, 5), (4, 3, 3, 3), 1, 1, 1, 1),                 # empty batch
]

# Workspaces (bytes) that make a launch take all images, some images (with a remainder), one image,
# or a few output positions of one image.
WORKSPACES = [64 << 20, 3000 * 8, 400 * 8, 40 * 8]


@pytest.mark.parametrize("workspace", WORKSPACES, ids=lambda b: f"ws{b}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}-{s[1]}-s{s[2]}-p{s[3]}-d{s[4]}-g{s[5]}")
def test_plan_matches_torch(shape, workspace):
    x_shape, w_shape, stride, padding, dilation, groups = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=g, dtype=torch.float64)
    w = torch.randn(w_shape, generator=g, dtype=torch.float64)
    x.requires_grad_(True)
    w.requires_grad_(True)
    ref = TF.conv2d(x, w, None, stride, padding, dilation, groups)
    dy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref_dx, ref_dw = torch.autograd.grad(ref, (x, w), dy, allow_unused=True)
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    out, dx, dw = torch.ops.fastconv_testing.cuda_conv2d_plan(
        x.detach(), w.detach(), dy, pair(stride), pair(padding), pair(dilation), groups, workspace)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx, ref_dx if ref_dx is not None else torch.zeros_like(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dw, ref_dw if ref_dw is not None else torch.zeros_like(w), rtol=1e-12, atol=1e-12)


def test_plan_batches_as_documented():
    """The batching rule itself: all images per launch when they fit, whole images otherwise, and
    position chunks of one image only when one image's columns do not fit."""
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    dy = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    # One image's columns: 2*9 rows x 16 positions = 288 elements.
    for ws in (288 * 8 * 5, 288 * 8 * 2, 288 * 8, 288 * 8 // 2, 8):
        out, _, _ = torch.ops.fastconv_testing.cuda_conv2d_plan(x, w, dy, (1, 1), (1, 1), (1, 1), 1, ws)
        torch.testing.assert_close(out, TF.conv2d(x, w, None, 1, 1), rtol=1e-12, atol=1e-12)


def test_plan_rejects_bad_arguments():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    dy = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="workspace_bytes"):
        torch.ops.fastconv_testing.cuda_conv2d_plan(x, w, dy, (1, 1), (0, 0), (1, 1), 1, 0)
    with pytest.raises(RuntimeError, match="float64"):
        torch.ops.fastconv_testing.cuda_conv2d_plan(x.float(), w, dy, (1, 1), (0, 0), (1, 1), 1, 64)
