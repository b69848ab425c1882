"""fastconv.convert: every torch layer fastconv has a twin for is swapped, parameters and buffers carried
over, BatchNorm2d + ReLU fused in Sequentials; the converted model computes what the original did, in
eval and through a training step, and runs under torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastconv
import fastconv.nn as fnn
from fastconv.models import LeNet5, ResNet18


def _small_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def _step(model, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss


@pytest.mark.parametrize("make", [lambda: ResNet18(10, "cifar", backend="torch"), _small_cnn],
                         ids=["resnet18", "sequential"])
def test_converted_model_matches(device, make):
    torch.manual_seed(0)
    ref = make().to(device)
    ours = fastconv.convert(copy.deepcopy(ref))
    kinds = {type(m) for m in ours.modules()}
    assert not kinds & {nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.MaxPool2d}, kinds
    x = torch.randn(4, 3, 8 if make is _small_cnn else 16, 8 if make is _small_cnn else 16, device=device)
    y = torch.randint(0, 5, (4,), device=device)
    ref.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=2e-3, atol=2e-4)
    # The training step in float64: in float32 a converted ResNet's Winograd layers (auto picks them for
    # training as well) round differently enough to flip the odd ReLU at a value within ~1e-5 of zero,
    # which moves a gradient by a few per cent (seen at one of ResNet-18's 16K block outputs). float64
    # runs the same algorithms with no such flips, so the comparison can be tight.
    ref, ours, x = ref.double(), ours.double(), x.double()
    ref.train(), ours.train()
    torch.testing.assert_close(_step(ours, x, y), _step(ref, x, y), rtol=1e-10, atol=1e-12)
    params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, params[name].grad, rtol=1e-7, atol=1e-9, msg=name)
    buffers = dict(ref.named_buffers())
    for name, b in ours.named_buffers():
        torch.testing.assert_close(b, buffers[name], msg=name)


def test_sequential_fuses_batch_norm_and_relu():
    model = fastconv.convert(_small_cnn())
    assert isinstance(model[1], fnn.BatchNorm2d) and model[1].relu and isinstance(model[2], nn.Identity)
    assert isinstance(model[5], fnn.BatchNorm2d) and not model[5].relu   # no ReLU after it


def test_sequential_fuses_batch_norm_and_clamped_relu():
    """nn.ReLU6 and nn.Hardtanh(0, m) after a BatchNorm2d fuse as relu_max; other bounds, subclasses and
    a ReLU6 after anything but a batch norm stay as they are. The fused model computes what torch's does."""
    class MyReLU6(nn.ReLU6):
        pass

    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU6(inplace=True),
                        nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6), nn.Hardtanh(0.0, 0.5),
                        nn.BatchNorm2d(6), nn.Hardtanh(-1.0, 1.0), nn.BatchNorm2d(6), MyReLU6(),
                        nn.ReLU6())
    ours = fastconv.convert(ref)
    assert ours[1].relu and ours[1].relu_max == 6.0 and isinstance(ours[2], nn.Identity)
    assert ours[4].relu and ours[4].relu_max == 0.5 and isinstance(ours[5], nn.Identity)
    assert not ours[6].relu and type(ours[7]) is nn.Hardtanh        # a lower bound other than 0
    assert not ours[8].relu and type(ours[9]) is MyReLU6             # a subclass: its forward is unknown
    assert type(ours[10]) is nn.ReLU6                                # after a ReLU6, not a batch norm
    x = torch.randn(4, 3, 6, 6) * 3
    for mode in (True, False):
        ref.train(mode), ours.train(mode)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = ours(xa), ref(xb)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        go = torch.randn_like(ya)
        ya.backward(go), yb.backward(go)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)


def test_original_untouched_or_shared_inplace():
    torch.manual_seed(0)
    ref = _small_cnn().eval()
    out = fastconv.convert(ref, algorithm="direct")
    assert type(ref[0]) is nn.Conv2d and out[0].algorithm == "direct"
    assert not out.training and out[1].weight is not ref[1].weight
    same = fastconv.convert(ref, inplace=True)
    assert same is ref and isinstance(ref[0], fnn.Conv2d)
    conv = nn.Conv2d(2, 3, 3)
    twin = fastconv.convert(conv, inplace=True)   # a bare layer converts too
    assert isinstance(twin, fnn.Conv2d) and twin.weight is conv.weight


def test_subclasses_are_left_alone():
    class MyConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = fastconv.convert(nn.Sequential(MyConv(1, 1, 1)))
    assert type(model[0]) is MyConv


def test_bad_algorithm():
    with pytest.raises(ValueError, match="algorithm must be one of"):
        fastconv.convert(_small_cnn(), algorithm="fft")


def test_converted_model_under_torch_compile():
    torch.manual_seed(0)
    model = fastconv.convert(LeNet5(10, 8, backend="torch")).eval()
    x = torch.randn(3, 1, 8, 8)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
