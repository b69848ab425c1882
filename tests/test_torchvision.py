"""fastconv.convert on torchvision's own models (random initialisation built in the test, nothing
downloaded): ResNet-18, VGG-11 with batch norm, MobileNet-v2 and SqueezeNet 1.1. The converted model
computes what the original does in eval, through a training step (loss, every gradient, running
stats), and under torch.compile; ResNet blocks get their inner batch norm + ReLU pairs fused, MobileNet's
batch norm + ReLU6 pairs too."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastconv
import fastconv.nn as fnn
from fastconv.convert import FusedBasicBlock, FusedBottleneck

models = pytest.importorskip("torchvision.models", reason="torchvision is not installed")

# (builder, input side): small inputs keep the CPU run short; every model still goes down to 1-2 pixels.
# MobileNet-v2 gets 64 pixels: at 32 its last batch norms see 2 values per channel, ill-conditioned
# enough (gradients of 1e6) to turn float64 rounding into 1e-7 relative differences.
MODELS = {
    "resnet18": (lambda: models.resnet18(num_classes=10), 32),
    "resnet_bottleneck": (lambda: models.resnet.ResNet(models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10), 32),
    "vgg11_bn": (lambda: models.vgg11_bn(num_classes=10), 32),
    "mobilenet_v2": (lambda: models.mobilenet_v2(num_classes=10), 64),
    "squeezenet1_1": (lambda: models.squeezenet1_1(num_classes=10), 64),
}
REPLACED = {nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.MaxPool2d}


def _build(name, device, dtype):
    torch.manual_seed(0)
    make, side = MODELS[name]
    ref = make().to(device, dtype)
    x = torch.randn(2, 3, side, side, device=device, dtype=dtype)
    return ref, fastconv.convert(ref), x


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torchvision_model_converts_and_matches(device, name):
    ref, ours, x = _build(name, device, torch.float64)
    counts = {k: sum(type(m) is k for m in ref.modules()) for k in REPLACED}
    assert not {type(m) for m in ours.modules()} & REPLACED
    assert sum(isinstance(m, fnn.Conv2d) for m in ours.modules()) == counts[nn.Conv2d]
    assert sum(isinstance(m, fnn.BatchNorm2d) for m in ours.modules()) == counts[nn.BatchNorm2d]

    ref.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-9, atol=1e-10)

    ref.train(), ours.train()
    y = torch.tensor([3, 7], device=device)
    losses = []
    for model in (ours, ref):
        torch.manual_seed(1)   # the same dropout masks in both
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-9, atol=1e-10)
    # Gradients compared per tensor against its own largest entry, with a floor at the model's largest
    # gradient: some are exactly zero in theory (a convolution's bias ahead of a batch norm) and are
    # rounding noise in both.
    ref_params = dict(ref.named_parameters())
    scale = max(p.grad.abs().max().item() for p in ref.parameters())
    for pname, p in ours.named_parameters():
        expected = ref_params[pname].grad
        err = (p.grad - expected).abs().max().item()
        assert err <= 1e-7 * expected.abs().max().item() + 1e-10 * scale, (pname, err, scale)
    ref_buffers = dict(ref.named_buffers())
    for bname, b in ours.named_buffers():
        torch.testing.assert_close(b, ref_buffers[bname], rtol=1e-9, atol=1e-10, msg=bname)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torchvision_model_under_torch_compile(name):
    ref, ours, x = _build(name, "cpu", torch.float32)
    ours.eval()
    compiled = torch.compile(ours, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ours(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, fused_type, fused, count", [("resnet18", FusedBasicBlock, 1, 8),
                                                             ("resnet_bottleneck", FusedBottleneck, 2, 4)])
def test_resnet_blocks_fuse_inner_relus(name, fused_type, fused, count):
    ref, ours, _ = _build(name, "cpu", torch.float32)
    blocks = [m for m in ours.modules() if type(m) is fused_type]
    assert len(blocks) == count
    for block in blocks:
        assert all(getattr(block, f"bn{i}").relu for i in range(1, fused + 1))
        assert not getattr(block, f"bn{fused + 1}").relu    # the last one's ReLU comes after the sum
    assert ours.state_dict().keys() == ref.state_dict().keys()
    assert ours.bn1.relu and isinstance(ours.relu, nn.Identity)   # the stem's pair, fused too


def test_unknown_blocks_keep_their_relus():
    class Block(nn.Module):   # same attribute names as torchvision's BasicBlock, but not its type
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1, self.relu = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU()

        def forward(self, x):
            return self.relu(self.bn1(self.conv1(x))) - 1

    converted = fastconv.convert(Block())
    assert type(converted) is Block and not converted.bn1.relu


def test_mobilenet_relu6_pairs_fuse():
    ref, ours, _ = _build("mobilenet_v2", "cpu", torch.float32)
    relu6 = sum(type(m) is nn.ReLU6 for m in ref.modules())
    clamped = [m for m in ours.modules() if isinstance(m, fnn.BatchNorm2d) and m.relu_max is not None]
    assert relu6 == 35 and len(clamped) == relu6   # every Conv2dNormActivation's BatchNorm2d, ReLU6
    assert all(m.relu and m.relu_max == 6.0 for m in clamped)
    assert not any(type(m) is nn.ReLU6 for m in ours.modules())
    assert ours.state_dict().keys() == ref.state_dict().keys()
