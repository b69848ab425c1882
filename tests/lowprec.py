"""The flash-attention accuracy rule for low-precision results, shared by the half-precision tests:
against a float64 reference, fastconv's error is at most 2x torch's own error in the same dtype, plus
one rounding of the largest value (and 1e-6, for exact cases)."""

from __future__ import annotations

import torch


def error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest absolute difference from the float64 reference (0 for empty tensors)."""
    return (x.double() - ref).abs().max().item() if x.numel() else 0.0


def check_rule(ours: torch.Tensor, theirs: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """ours in torch's dtype and shape, and err(ours) <= 2 err(theirs) + eps(dtype) * max|ref| + 1e-6."""
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype}, torch's {theirs.dtype}"
    assert ours.shape == theirs.shape == ref.shape, f"{what}: shape {tuple(ours.shape)}, torch's {tuple(theirs.shape)}"
    scale = ref.abs().max().item() if ref.numel() else 0.0
    tol = 2 * error(theirs, ref) + torch.finfo(ours.dtype).eps * scale + 1e-6
    assert error(ours, ref) <= tol, f"{what}: error {error(ours, ref)} > {tol} (torch's {error(theirs, ref)})"
