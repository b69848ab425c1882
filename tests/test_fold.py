"""fastconv.fold_batchnorm: the folded model computes what the model did in eval, the batch norms
are gone (fused ReLUs kept), the original is untouched, and training-mode models are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastconv
from fastconv.models import ResNet18


def _warm_statistics(model, x):
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    return model.eval()


@pytest.mark.parametrize("backend", ["fastconv", "torch"])
def test_resnet18_folds(device, backend):
    torch.manual_seed(0)
    model = ResNet18(10, "cifar", backend=backend).to(device)
    x = torch.randn(4, 3, 16, 16, device=device)
    _warm_statistics(model, x)   # non-trivial running statistics
    with torch.no_grad():
        want = model(x)
        folded = fastconv.fold_batchnorm(model)
        got = folded(x)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())   # the original is untouched
    relus = sum(isinstance(m, nn.ReLU) for m in folded.modules())
    assert relus == 9   # the stem's and one per block, fused into batch norm or not


def test_sequential_with_and_without_conv_bias(device):
    torch.manual_seed(0)
    model = nn.Sequential(fastconv.nn.Conv2d(3, 8, 3, padding=1), fastconv.nn.BatchNorm2d(8, relu=True),
                          nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4, affine=False),
                          nn.BatchNorm2d(4, track_running_stats=False)).to(device)
    x = torch.randn(2, 3, 7, 7, device=device)
    _warm_statistics(model, x)
    with torch.no_grad():
        want = model(x)
        folded = fastconv.fold_batchnorm(model, inplace=True)
        got = folded(x)
    assert folded is model
    assert isinstance(model[1], nn.ReLU) and isinstance(model[3], nn.Identity)
    assert isinstance(model[4], nn.BatchNorm2d)   # no running statistics: not a constant, kept
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="training mode"):
        fastconv.fold_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))
