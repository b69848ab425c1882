"""fastconv's functional API: torch.nn.functional's signatures, fastconv's kernels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import ops

__all__ = ["batch_norm", "conv2d", "linear", "max_pool2d"]


def _pair(value, name: str, op: str) -> list[int]:
    """An int or a sequence of one or two ints, as torch's 2-D ops accept, as a list of two."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        items = list(value)
        if len(items) == 1:
            items = items * 2
        if len(items) != 2 or not all(isinstance(v, int) for v in items):
            raise ValueError(f"fastconv.{op}: {name} must be an int or a sequence of 1 or 2 ints, got {value!r}")
        return items
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    raise TypeError(f"fastconv.{op}: {name} must be an int or a sequence of 1 or 2 ints, got {value!r}")


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """2-D max pooling, as :func:`torch.nn.functional.max_pool2d` (same arguments, output, indices,
    memory format and gradient), on fastconv's kernels.

    ``input`` is (N, C, H, W) or unbatched (C, H, W); ``stride`` defaults to ``kernel_size``.
    Indices are flat offsets ``h * W + w`` into each input plane, as torch's."""
    k = _pair(kernel_size, "kernel_size", "max_pool2d")
    s = k if stride is None or (isinstance(stride, Sequence) and len(stride) == 0) else _pair(
        stride, "stride", "max_pool2d")
    p = _pair(padding, "padding", "max_pool2d")
    d = _pair(dilation, "dilation", "max_pool2d")
    out, indices = ops.max_pool2d_with_indices(input, k, s, p, d, bool(ceil_mode))
    return (out, indices) if return_indices else out


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1, eps: float = 1e-5, *,
               relu: bool = False) -> Tensor:
    """Batch normalisation, as :func:`torch.nn.functional.batch_norm` (input (N, C, *), running
    statistics updated in place in training with ``momentum`` and the unbiased batch variance), on
    fastconv's kernels. ``relu=True`` applies ReLU in the same pass (forward and backward).

    Statistics are per-channel shifted sums (shift = the channel's first value): runs of values summed
    in float32, the runs' totals in double, so they stay accurate when the mean is large against the
    spread."""
    if training:
        size = input.shape
        values = size[0]
        for s in size[2:]:
            values *= s
        if values == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
    out, save_mean, _save_invstd, batch_var = ops.batch_norm(
        input, weight, bias, running_mean, running_var, bool(training), float(eps), bool(relu))
    if training and input.numel() > 0 and (running_mean is not None or running_var is not None):
        # torch's update: running = (1 - momentum) * running + momentum * batch statistic, with the
        # unbiased variance n / (n - 1) * var.
        n = input.numel() // input.shape[1]
        with torch.no_grad():
            if running_mean is not None:
                running_mean.mul_(1 - momentum).add_(save_mean.detach().to(running_mean.dtype), alpha=momentum)
            if running_var is not None:
                unbiased = batch_var.detach().to(running_var.dtype) * (n / (n - 1))
                running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
    return out


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = input @ weight^T + bias, as :func:`torch.nn.functional.linear` (any leading dimensions,
    optional bias), on fastconv's GEMM engine: one gemm with the bias as its beta term."""
    if weight.dim() != 2:
        raise RuntimeError(f"fastconv.linear: expected a 2-D weight (out_features, in_features), but got shape "
                           f"{tuple(weight.shape)}")
    if input.dim() == 0 or input.shape[-1] != weight.shape[1]:
        raise RuntimeError(f"fastconv.linear: expected input with last dimension {weight.shape[1]} "
                           f"(in_features), but got shape {tuple(input.shape)}")
    lead = input.shape[:-1]
    out = ops.gemm(input.reshape(-1, weight.shape[1]), weight, bias, False, True, 1.0, 0.0 if bias is None else 1.0)
    return out.reshape(*lead, weight.shape[0])


ALGORITHMS = ops.CONV2D_ALGORITHMS   # the names the op accepts


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1, *, algorithm: str = "auto") -> Tensor:
    """2-D convolution, as :func:`torch.nn.functional.conv2d` (4-D or unbatched 3-D input, int or pair
    arguments, ``padding='same'``/``'valid'``, dilation, groups, optional bias, channels-last input), on
    fastconv's kernels.

    ``algorithm``:

    - ``"im2col"`` lowers each image to columns (in chunks of at most 64 MiB) and runs the GEMM engine;
      1x1 stride-1 convolutions skip the lowering.
    - ``"direct"`` runs a loop nest over register-blocked tiles (CPU: 8 pixels x 32 output channels in
      AVX-512 registers; CUDA: an 8x16 pixel tile with its input patch in shared memory), reading the
      input in place. Its grad_input is the transposed convolution in the same form; grad_weight is
      im2col's columns x grad_output.
    - ``"winograd_2x2"`` / ``"winograd_4x4"``: Winograd's minimal filtering F(2x2, 3x3) / F(4x4, 3x3)
      (Lavin & Gray 2015) for 3x3 kernels, stride 1, dilation 1, groups 1, any padding and size:
      input and output tile transforms around 16 / 36 GEMMs over channels on the GEMM engine; the
      transformed filters are cached per weight tensor and recomputed when its version counter moves.
      grad_input is a Winograd convolution with the flipped, transposed filters; grad_weight is
      im2col's. Other shapes raise an error. ``"winograd"`` picks F(4x4) unless the output is under
      4 pixels on a side.
    - ``"auto"``: on the CPU, Winograd F(4x4) for 3x3 stride-1 layers with at least 64 input and
      output channels and outputs of at least 7x7 (when the weight requires grad, so its transform
      cannot be cached, also at least 128 4x4 tiles in the batch); ``"im2col"`` otherwise (it is
      faster than ``"direct"`` on every shape measured). On CUDA, ``"im2col"`` (the other kernels have
      not been measured on a GPU yet).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"fastconv.conv2d: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    s = _pair(stride, "stride", "conv2d")
    d = _pair(dilation, "dilation", "conv2d")
    if isinstance(padding, str):
        if padding == "valid":
            p = [0, 0]
        elif padding == "same":
            if s != [1, 1]:
                raise ValueError("fastconv.conv2d: padding='same' is not supported for strided convolutions")
            if weight.dim() != 4:
                raise RuntimeError(f"fastconv::conv2d: expected a 4-D weight, but got shape {tuple(weight.shape)}")
            # torch's rule: total padding d*(k-1) per dimension, the odd one out at the end.
            total = [d[0] * (weight.shape[2] - 1), d[1] * (weight.shape[3] - 1)]
            p = [total[0] // 2, total[1] // 2]
            extra = [total[0] - 2 * p[0], total[1] - 2 * p[1]]
            if any(extra):
                input = torch.nn.functional.pad(input, (0, extra[1], 0, extra[0]))
        else:
            raise ValueError(f"fastconv.conv2d: padding must be 'valid', 'same', an int or a pair, got {padding!r}")
    else:
        p = _pair(padding, "padding", "conv2d")
    if not torch.is_grad_enabled() and weight.requires_grad:
        # No gradient can reach the weight: hand over a detached view (same storage and version
        # counter), which the weight cache may keep (csrc/common/weight_cache.h) and which
        # tells "auto" that this is inference.
        weight = weight.detach()
    return ops.conv2d(input, weight, bias, s, p, d, int(groups), algorithm)
