"""fastconv's functional API: torch.nn.functional's signatures, fastconv's kernels."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from . import ops

__all__ = ["max_pool2d"]


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
