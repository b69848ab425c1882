"""fastconv.convert: swap torch.nn layers for their fastconv twins in any model."""

from __future__ import annotations

import copy

import torch
from torch import nn

from . import nn as fnn
from .functional import ALGORITHMS

__all__ = ["convert", "FusedBasicBlock", "FusedBottleneck"]


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
        new = fnn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, device="meta",
                              bias=m.bias is not None or not m.affine)
    elif kind is nn.Linear:
        new = fnn.Linear(m.in_features, m.out_features, m.bias is not None, device="meta")
    elif kind is nn.MaxPool2d:
        new = fnn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode)
    elif kind in (nn.LSTM, nn.GRU):
        twin = fnn.LSTM if kind is nn.LSTM else fnn.GRU
        extra = {"proj_size": m.proj_size} if kind is nn.LSTM else {}
        new = twin(m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first, float(m.dropout),
                   m.bidirectional, device="meta", **extra)
    elif kind in (nn.LSTMCell, nn.GRUCell):
        twin = fnn.LSTMCell if kind is nn.LSTMCell else fnn.GRUCell
        new = twin(m.input_size, m.hidden_size, m.bias, device="meta")
    else:
        return None
    return _adopt(new, m)


class _FusedResNetBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock`` or ``Bottleneck`` after conversion, with the ReLU after every
    inner batch norm fused into it. Same submodules under the same names (state_dict unchanged); only
    forward differs: torchvision's applies the one shared ``self.relu`` after each inner batch norm and
    after the residual sum, and here it is applied only after the sum."""

    def __init__(self, block: nn.Module, inner: tuple[str, ...]):
        super().__init__()
        for name, child in block.named_children():
            setattr(self, name, child)
        self.downsample = block.downsample        # None is a plain attribute, not a child
        self.stride = block.stride
        self._inner = inner                       # ("1",) for BasicBlock, ("1", "2") for Bottleneck
        self._last = str(len(inner) + 1)
        for i in inner:
            getattr(self, f"bn{i}").relu = True
        self.train(block.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i in (*self._inner, self._last):
            out = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class FusedBasicBlock(_FusedResNetBlock):
    __doc__ = _FusedResNetBlock.__doc__


class FusedBottleneck(_FusedResNetBlock):
    __doc__ = _FusedResNetBlock.__doc__


# torchvision's blocks whose inner BatchNorm2d + ReLU pairs are safe to fuse: their forward is known
# (exact types, matched by name so torchvision is not imported), and the ReLU module they share is a
# plain nn.ReLU. (module, class) -> (fused class, the numbers of the inner conv/bn pairs)
_KNOWN_BLOCKS = {
    ("torchvision.models.resnet", "BasicBlock"): (FusedBasicBlock, ("1",)),
    ("torchvision.models.resnet", "Bottleneck"): (FusedBottleneck, ("1", "2")),
}


def _fuse_known_block(block: nn.Module) -> nn.Module | None:
    known = _KNOWN_BLOCKS.get((type(block).__module__, type(block).__name__))
    if known is None:
        return None
    fused, inner = known
    last = str(len(inner) + 1)
    names = [f"{kind}{i}" for i in (*inner, last) for kind in ("conv", "bn")]
    if type(getattr(block, "relu", None)) is not nn.ReLU or not all(
            isinstance(getattr(block, n, None), fnn.Conv2d if n.startswith("conv") else fnn.BatchNorm2d)
            and not getattr(getattr(block, n), "relu", False) for n in names):
        return None   # not the block we know (or its layers were not converted): leave it alone
    return fused(block, inner)


def _fuse_known_stem(model: nn.Module) -> None:
    """torchvision's ``ResNet`` (exact type): its forward calls ``self.relu`` once, straight after
    ``self.bn1`` (the stem), so that pair fuses like a Sequential's: ``bn1(relu=True)`` and an
    ``nn.Identity`` for ``relu`` (no parameters: the state_dict is unchanged)."""
    if (type(model).__module__, type(model).__name__) != ("torchvision.models.resnet", "ResNet"):
        return
    bn = getattr(model, "bn1", None)
    if type(getattr(model, "relu", None)) is nn.ReLU and isinstance(bn, fnn.BatchNorm2d) and not bn.relu:
        bn.relu = True
        model.relu = nn.Identity()


def _convert_children(module: nn.Module, algorithm: str) -> None:
    for name, child in list(module.named_children()):
        twin = _twin(child, algorithm)
        if twin is not None:
            setattr(module, name, twin)
        else:
            _convert_children(child, algorithm)
            fused = _fuse_known_block(child)
            if fused is not None:
                setattr(module, name, fused)
            _fuse_known_stem(child)
    if isinstance(module, nn.Sequential):   # BatchNorm2d then ReLU (or ReLU6): one fused module
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            bn, act = module._modules[a], module._modules[b]
            fusable, relu_max = _fusable_relu(act)
            if isinstance(bn, fnn.BatchNorm2d) and not bn.relu and fusable:
                bn.relu, bn.relu_max = True, relu_max
                module._modules[b] = nn.Identity()


def _fusable_relu(act: nn.Module) -> tuple[bool, float | None]:
    """Whether ``act`` is an activation a fused batch norm computes, and its ``relu_max``: ``nn.ReLU``
    (None), ``nn.ReLU6`` (6.0) and ``nn.Hardtanh(0, m)`` (m >= 0), exactly those types."""
    if type(act) is nn.ReLU:
        return True, None
    if type(act) in (nn.ReLU6, nn.Hardtanh) and act.min_val == 0 and act.max_val >= 0:
        return True, float(act.max_val)
    return False, None


def convert(model: nn.Module, *, inplace: bool = False, algorithm: str = "auto") -> nn.Module:
    """Returns ``model`` with every ``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.BatchNorm2d``, ``nn.Linear``,
    ``nn.LSTM``, ``nn.GRU``, ``nn.LSTMCell`` and ``nn.GRUCell`` (exactly those types, not subclasses)
    replaced by its fastconv twin carrying the same parameters, buffers and training mode; convolutions
    get ``algorithm``. A ``BatchNorm2d`` followed by an ``nn.ReLU`` in an ``nn.Sequential`` becomes one
    ``BatchNorm2d(relu=True)`` (the ReLU an ``nn.Identity``), one followed by ``nn.ReLU6`` (or
    ``nn.Hardtanh(0, m)``) one ``BatchNorm2d(relu=True, relu_max=6.0)`` (or ``m``: MobileNet-v2's pairs),
    and so do the inner pairs of torchvision's ResNet ``BasicBlock`` and ``Bottleneck``, which become :class:`FusedBasicBlock` / :class:`FusedBottleneck` (same submodules
    and state_dict; their forward skips the ReLU calls the fused batch norms now make), as does the
    stem of torchvision's ``ResNet`` (``bn1`` then ``relu``). ReLUs in any other block's forward are
    left alone. The original model is untouched (deep-copied)
    unless ``inplace=True``, in which case the parameters stay the same tensor objects."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"fastconv.convert: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if not inplace:
        model = copy.deepcopy(model)
    twin = _twin(model, algorithm)
    if twin is not None:
        return twin
    _convert_children(model, algorithm)
    _fuse_known_stem(model)
    return model
