"""fastconv.fold_batchnorm: fold inference-mode batch norms into the convolutions that feed them.

Pairs are found by following the data flow (torch.fx): a batch norm is folded into a convolution only
when the convolution's output goes to that batch norm and nowhere else, and each of the two modules is
called exactly once in the forward. Names mean nothing here: on a pre-activation block (bn1 -> relu ->
conv1 -> relu -> conv2 -> bn2) only conv2 -> bn2 is a pair. A model that torch.fx cannot trace is
refused with the tracer's reason, rather than folded by guesswork."""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import fx, nn

from . import nn as fnn

__all__ = ["fold_batchnorm"]


def _foldable(bn: nn.Module) -> bool:
    # A batch norm without running statistics normalises with the batch's even in eval: not a constant.
    return isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None


class _Tracer(fx.Tracer):
    """Keeps convolutions, batch norms and fastconv's own modules whole (their forward is not traced
    into: fastconv's modules branch on grad mode and arguments), everything else as torch.fx does."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or type(m).__module__ == fnn.__name__:
            return True
        return super().is_leaf_module(m, qualname)


def _graph(model: nn.Module) -> fx.Graph:
    try:
        return _Tracer().trace(model)
    except Exception as e:  # torch.fx raises several types for untraceable control flow
        raise RuntimeError(
            f"fastconv.fold_batchnorm: cannot follow the data flow of {type(model).__name__} with torch.fx "
            f"({type(e).__name__}: {e}); folding by module names could pair a batch norm with a convolution "
            "that does not feed it, so nothing was folded. Fold the traceable submodules one by one, "
            "e.g. fold_batchnorm(model.features)") from e


def _pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, batch norm) qualified names where the convolution's output feeds that batch norm alone."""
    graph = _graph(model)
    # Calls per module object (a module registered under two names is still one module).
    calls = Counter(id(model.get_submodule(n.target)) for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _foldable(model.get_submodule(node.target)):
            continue
        src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(src, fx.Node) and src.op == "call_module"
                and isinstance(model.get_submodule(src.target), nn.Conv2d)):
            continue
        conv, bn = model.get_submodule(src.target), model.get_submodule(node.target)
        if len(src.users) == 1 and calls[id(conv)] == 1 and calls[id(bn)] == 1:
            pairs.append((src.target, node.target))
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


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """For inference: folds every batch norm whose input is the output of a convolution (and of nothing
    else: the convolution's output has no other use, and neither module is called twice) into that
    convolution's weight and bias, and replaces it with an ``nn.Identity`` (the activation it fused for
    fastconv's ``BatchNorm2d(relu=True)``: ``nn.ReLU``, or ``nn.ReLU6`` / ``nn.Hardtanh(0, m)`` with
    ``relu_max``). Pairs are found by tracing the model with torch.fx,
    so a batch norm is never paired by its name; a model torch.fx cannot trace raises a RuntimeError
    (fold its traceable parts instead). The model must be in eval mode (the running statistics become
    constants). Batch norms without running statistics, or that do not follow a convolution, are left
    alone. Returns the folded model; the original is untouched unless ``inplace=True``."""
    if model.training:
        raise ValueError("fastconv.fold_batchnorm: the model is in training mode; call model.eval() first "
                         "(folding freezes the running statistics)")
    pairs = _pairs(model)
    if not inplace:
        model = copy.deepcopy(model)
    for conv_name, bn_name in pairs:
        bn = model.get_submodule(bn_name)
        _fold(model.get_submodule(conv_name), bn)
        _replace(model, bn_name, _activation_left_behind(bn))
    return model


def _activation_left_behind(bn: nn.Module) -> nn.Module:
    """What a folded batch norm leaves in its place: the activation fastconv's fused ``BatchNorm2d``
    applied (``nn.ReLU``, ``nn.ReLU6`` for ``relu_max=6``, else ``nn.Hardtanh(0, relu_max)``), or
    ``nn.Identity``."""
    if not (isinstance(bn, fnn.BatchNorm2d) and bn.relu):
        return nn.Identity()
    if bn.relu_max is None:
        return nn.ReLU()
    return nn.ReLU6() if bn.relu_max == 6.0 else nn.Hardtanh(0.0, bn.relu_max)
