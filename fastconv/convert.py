"""fastconv.convert: swap torch.nn layers for their fastconv twins in any model."""

from __future__ import annotations

import copy

import torch
from torch import nn

from . import nn as fnn
from .functional import ALGORITHMS

__all__ = ["convert"]


def _adopt(new: nn.Module, old: nn.Module) -> nn.Module:
    """new takes over old's parameters and buffers (the same tensor objects, so an optimizer that holds
    them keeps working) and its training mode."""
    for name, p in old.named_parameters(recurse=False):
        setattr(new, name, p)
    for name, b in old.named_buffers(recurse=False):
        new.register_buffer(name, b, persistent=name not in old._non_persistent_buffers_set)
    return new.train(old.training)


def _twin(m: nn.Module, algorithm: str) -> nn.Module | None:
    """The fastconv twin of a layer fastconv replaces (built on the meta device: no memory, no random
    numbers drawn), or None. Exact types only: a subclass may have changed forward."""
    kind = type(m)
    if kind is nn.Conv2d:
        new = fnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                         m.bias is not None, m.padding_mode, device="meta", algorithm=algorithm)
    elif kind is nn.BatchNorm2d:
        new = fnn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, device="meta")
    elif kind is nn.Linear:
        new = fnn.Linear(m.in_features, m.out_features, m.bias is not None, device="meta")
    elif kind is nn.MaxPool2d:
        new = fnn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode)
    else:
        return None
    return _adopt(new, m)


def _convert_children(module: nn.Module, algorithm: str) -> None:
    for name, child in list(module.named_children()):
        twin = _twin(child, algorithm)
        if twin is not None:
            setattr(module, name, twin)
        else:
            _convert_children(child, algorithm)
    if isinstance(module, nn.Sequential):   # BatchNorm2d then ReLU: one fused module
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            bn, relu = module._modules[a], module._modules[b]
            if isinstance(bn, fnn.BatchNorm2d) and not bn.relu and type(relu) is nn.ReLU:
                bn.relu = True
                module._modules[b] = nn.Identity()


def convert(model: nn.Module, *, inplace: bool = False, algorithm: str = "auto") -> nn.Module:
    """Returns ``model`` with every ``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.BatchNorm2d`` and ``nn.Linear``
    (exactly those types, not subclasses) replaced by its fastconv twin carrying the same parameters,
    buffers and training mode; convolutions get ``algorithm``. A ``BatchNorm2d`` followed by an
    ``nn.ReLU`` in an ``nn.Sequential`` becomes one ``BatchNorm2d(relu=True)`` (the ReLU an
    ``nn.Identity``). ReLUs a block's forward applies itself (torchvision's BasicBlock shares one
    ``self.relu`` between two places) are left alone. The original model is untouched (deep-copied)
    unless ``inplace=True``, in which case the parameters stay the same tensor objects."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"fastconv.convert: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if not inplace:
        model = copy.deepcopy(model)
    twin = _twin(model, algorithm)
    if twin is not None:
        return twin
    _convert_children(model, algorithm)
    return model
