"""fastconv.fold_batchnorm: fold inference-mode batch norms into the convolutions before them."""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from . import nn as fnn

__all__ = ["fold_batchnorm"]


def _foldable(bn: nn.Module) -> bool:
    # A batch norm without running statistics normalises with the batch's even in eval: not a constant.
    return isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv, batch norm) child names whose convolution feeds the batch norm directly: neighbours in an
    nn.Sequential, and convN/bnN attribute pairs (the convention of torchvision's and
    fastconv.models' blocks, where bn1 normalises conv1's output)."""
    children = dict(module.named_children())
    pairs = []
    if isinstance(module, nn.Sequential):
        names = list(children)
        pairs += [(a, b) for a, b in zip(names, names[1:])
                  if isinstance(children[a], nn.Conv2d) and _foldable(children[b])]
    for name, child in children.items():
        m = re.fullmatch(r"conv(\d*)", name)
        bn_name = f"bn{m.group(1)}" if m else None
        if m and isinstance(child, nn.Conv2d) and bn_name in children and _foldable(children[bn_name]):
            pairs.append((name, bn_name))
    return pairs


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.weight is not None:
        scale = scale * bn.weight
        shift = shift * bn.weight
    if bn.bias is not None:
        shift = shift + bn.bias
    # bn(conv(x)) = s * (w * x + b) + shift per output channel, s = gamma / sqrt(var + eps) and
    # shift = beta - s * mean: so w' = s * w and b' = s * b + shift.
    conv.weight.mul_(scale.to(conv.weight.dtype).reshape(-1, 1, 1, 1))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype))


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """For inference: folds every batch norm that directly follows a convolution into that
    convolution's weight and bias, and replaces it with an ``nn.Identity`` (an ``nn.ReLU`` for
    fastconv's fused ``BatchNorm2d(relu=True)``). The model must be in eval mode (the running
    statistics become constants). Pairs are found as neighbours in an ``nn.Sequential`` and as
    ``convN``/``bnN`` attributes of one module (torchvision's and fastconv.models' blocks); batch norms
    without running statistics are left alone. Returns the folded model; the original is untouched
    unless ``inplace=True``."""
    if model.training:
        raise ValueError("fastconv.fold_batchnorm: the model is in training mode; call model.eval() first "
                         "(folding freezes the running statistics)")
    if not inplace:
        model = copy.deepcopy(model)
    for module in list(model.modules()):
        for conv_name, bn_name in _pairs(module):
            bn = getattr(module, bn_name)
            _fold(getattr(module, conv_name), bn)
            fused_relu = isinstance(bn, fnn.BatchNorm2d) and bn.relu
            setattr(module, bn_name, nn.ReLU() if fused_relu else nn.Identity())
    return model
