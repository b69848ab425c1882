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


def test_fused_clamped_relu_left_behind(device):
    torch.manual_seed(0)
    model = nn.Sequential(fastconv.nn.Conv2d(3, 8, 3, padding=1), fastconv.nn.BatchNorm2d(8, relu=True, relu_max=6.0),
                          fastconv.nn.Conv2d(8, 4, 1), fastconv.nn.BatchNorm2d(4, relu=True, relu_max=0.5)).to(device)
    x = torch.randn(2, 3, 7, 7, device=device) * 4
    _warm_statistics(model, x)
    with torch.no_grad():
        want = model(x)
        folded = fastconv.fold_batchnorm(model)
        got = folded(x)
    assert type(folded[1]) is nn.ReLU6
    assert type(folded[3]) is nn.Hardtanh and (folded[3].min_val, folded[3].max_val) == (0.0, 0.5)
    assert (want == 0.5).any() and (want == 0).any()   # both bounds were reached
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="training mode"):
        fastconv.fold_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))


class _PreActBlock(nn.Module):
    # bn1 -> relu -> conv1 -> relu -> conv2 -> bn2: bn1 normalises the block's input, not conv1's output.
    def __init__(self, c):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.bn2(self.conv2(torch.relu(self.conv1(torch.relu(self.bn1(x))))))


class _Branches(nn.Module):
    # conv's output feeds bn and a skip connection; shared is called twice: neither may be folded.
    def __init__(self, c):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)
        self.shared, self.bn_shared = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)
        self.alias = self.shared   # one module under two names

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y + self.bn_shared(self.shared(x)) + self.alias(x)


@pytest.mark.parametrize("model_fn, folded_bns", [
    (lambda: _PreActBlock(4), ["bn2"]),
    (lambda: _Branches(4), []),
    (lambda: nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)), ["2"]),
])
def test_follows_the_data_flow_not_the_names(model_fn, folded_bns):
    # The report: on a pre-activation block bn1 was folded into conv1 (paired by name) and the
    # eval output moved by 40%.
    torch.manual_seed(0)
    model = model_fn()
    x = torch.randn(2, 4, 6, 6)
    _warm_statistics(model, x * 3 + 1)
    with torch.no_grad():
        want = model(x)
        folded = fastconv.fold_batchnorm(model)
        got = folded(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    gone = sorted(name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
                  and not isinstance(folded.get_submodule(name), nn.BatchNorm2d))
    assert gone == folded_bns


def test_torchvision_resnet_folds_every_pair():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = fastconv.convert(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    _warm_statistics(model, x)
    with torch.no_grad():
        want = model(x)
        folded = fastconv.fold_batchnorm(model)
        torch.testing.assert_close(folded(x), want, rtol=1e-3, atol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


def test_untraceable_model_is_refused_loudly():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    model = DataDependent().eval()
    with pytest.raises(RuntimeError, match="fastconv.fold_batchnorm: cannot follow the data flow of DataDependent"):
        fastconv.fold_batchnorm(model)
    assert isinstance(model.bn, nn.BatchNorm2d)
