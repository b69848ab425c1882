"""Python side of the op table (csrc/ops.cpp): fake (meta) kernels, so the ops trace under
``torch.compile`` without graph breaks, and autograd formulas, whose backward is itself a fastconv op.

The kernels are reached as ``torch.ops.fastconv.<name>``; this module adds typed wrappers."""

from __future__ import annotations

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

__all__ = ["max_pool2d_with_indices", "max_pool2d_with_indices_backward", "pool_output_size"]


# ------------------------------------------------------------------------------------------------
# shape math shared by the fake kernels (mirrors csrc/common/pool2d.h)
# ------------------------------------------------------------------------------------------------
def pool_output_size(size: int, k: int, pad: int, stride: int, dilation: int, ceil_mode: bool) -> int:
    out = (size + 2 * pad - dilation * (k - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _check(cond: bool, op: str, msg: str) -> None:
    if not cond:
        raise RuntimeError(f"fastconv::{op}: {msg}")


def _max_pool2d_shape(x: Tensor, kernel_size, stride, padding, dilation, ceil_mode, op: str):
    for name, v in (("kernel_size", kernel_size), ("stride", stride), ("padding", padding), ("dilation", dilation)):
        _check(len(v) == 2, op, f"expected {name} to have 2 elements, but got {len(v)} ({list(v)})")
    _check(x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16), op,
           f"expected input to be float32, float64, float16 or bfloat16, but got {x.dtype}")
    _check(x.dim() in (3, 4), op, f"expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, but got a {x.dim()}-D "
           f"tensor of shape {tuple(x.shape)}")
    _check(all(s > 0 for s in x.shape[-3:]), op, "expected non-empty channel and spatial dimensions (only the "
           f"batch may be 0), but got input of shape {tuple(x.shape)}")
    _check(min(kernel_size) > 0, op, f"kernel_size must be positive, but got {list(kernel_size)}")
    _check(min(stride) > 0, op, f"stride must be positive, but got {list(stride)}")
    _check(min(dilation) > 0, op, f"dilation must be positive, but got {list(dilation)}")
    _check(min(padding) >= 0, op, f"padding must be non-negative, but got {list(padding)}")
    _check(padding[0] <= kernel_size[0] // 2 and padding[1] <= kernel_size[1] // 2, op,
           f"padding must be at most half of kernel_size, but got padding={list(padding)} and "
           f"kernel_size={list(kernel_size)}")
    oh = pool_output_size(x.shape[-2], kernel_size[0], padding[0], stride[0], dilation[0], ceil_mode)
    ow = pool_output_size(x.shape[-1], kernel_size[1], padding[1], stride[1], dilation[1], ceil_mode)
    _check(oh >= 1 and ow >= 1, op, f"output size is too small: input {list(x.shape)} gives output {oh}x{ow}")
    shape = (*x.shape[:-2], oh, ow)
    fmt = suggest_memory_format(x) if x.dim() == 4 else torch.contiguous_format
    return shape, fmt


# ------------------------------------------------------------------------------------------------
# max_pool2d
# ------------------------------------------------------------------------------------------------
def max_pool2d_with_indices(x: Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool):
    return torch.ops.fastconv.max_pool2d_with_indices.default(x, kernel_size, stride, padding, dilation, ceil_mode)


def max_pool2d_with_indices_backward(grad_output, x, kernel_size, stride, padding, dilation, ceil_mode, indices):
    return torch.ops.fastconv.max_pool2d_with_indices_backward.default(
        grad_output, x, kernel_size, stride, padding, dilation, ceil_mode, indices)


@torch.library.register_fake("fastconv::max_pool2d_with_indices")
def _max_pool2d_fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    shape, fmt = _max_pool2d_shape(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d_with_indices")
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    idx = torch.empty(shape, dtype=torch.int64, device=x.device, memory_format=fmt)
    return out, idx


@torch.library.register_fake("fastconv::max_pool2d_with_indices_backward")
def _max_pool2d_backward_fake(grad_output, x, kernel_size, stride, padding, dilation, ceil_mode, indices):
    op = "max_pool2d_with_indices_backward"
    shape, fmt = _max_pool2d_shape(x, kernel_size, stride, padding, dilation, ceil_mode, op)
    _check(tuple(grad_output.shape) == shape, op, f"expected grad_output of shape {list(shape)}, but got "
           f"{list(grad_output.shape)}")
    _check(tuple(indices.shape) == shape, op, f"expected indices of shape {list(shape)}, but got {list(indices.shape)}")
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def _max_pool2d_setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, dilation, ceil_mode = inputs
    _, indices = output
    ctx.save_for_backward(x, indices)
    ctx.pool_args = (kernel_size, stride, padding, dilation, ceil_mode)


def _max_pool2d_backward(ctx, grad_out, _grad_indices):
    x, indices = ctx.saved_tensors
    grad_in = max_pool2d_with_indices_backward(grad_out, x, *ctx.pool_args, indices)
    return grad_in, None, None, None, None, None


torch.library.register_autograd(
    "fastconv::max_pool2d_with_indices", _max_pool2d_backward, setup_context=_max_pool2d_setup_context)


def _max_pool2d_backward_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[-1])


def _max_pool2d_double_backward(ctx, grad_grad_in):
    # The backward is linear in grad_output: grad_in[idx[o]] += grad_out[o]. Its derivative routes
    # grad_grad_in back through the same indices: a gather. An index outside the plane (a window with
    # no in-bounds tap) contributes nothing, as in the forward scatter.
    (indices,) = ctx.saved_tensors
    plane = grad_grad_in.shape[-2] * grad_grad_in.shape[-1]
    flat_idx = indices.flatten(-2)
    valid = (flat_idx >= 0) & (flat_idx < plane)
    gathered = grad_grad_in.flatten(-2).gather(-1, flat_idx.clamp(0, plane - 1))
    grad_grad_out = torch.where(valid, gathered, 0).view(indices.shape)
    return grad_grad_out, None, None, None, None, None, None, None


torch.library.register_autograd(
    "fastconv::max_pool2d_with_indices_backward", _max_pool2d_double_backward,
    setup_context=_max_pool2d_backward_setup_context)
