"""Reference CNNs built from fastconv's modules: LeNet-5 and ResNet-18.

Every model takes ``backend="fastconv"`` (the default) or ``backend="torch"``, which builds the
identical network from ``torch.nn`` — same layers, same parameter and buffer names, same
initialisation for the same seed — so the two can be trained side by side and their state_dicts
loaded into each other. With fastconv, a batch norm followed by a ReLU is one fused
``BatchNorm2d(relu=True)``; with torch it is a ``BatchNorm2d`` and a separate ``ReLU``.
"""

from __future__ import annotations

import torch
from torch import nn

from . import nn as fnn

__all__ = ["LeNet5", "ResNet18", "BasicBlock"]

BACKENDS = ("fastconv", "torch")


class _Layers:
    """The layer constructors of one backend."""

    def __init__(self, backend: str, algorithm: str):
        if backend not in BACKENDS:
            raise ValueError(f"fastconv.models: backend must be one of {BACKENDS}, got {backend!r}")
        self.fast = backend == "fastconv"
        self.algorithm = algorithm

    def conv(self, *args, **kwargs) -> nn.Module:
        if self.fast:
            return fnn.Conv2d(*args, algorithm=self.algorithm, **kwargs)
        return nn.Conv2d(*args, **kwargs)

    def bn_relu(self, channels: int) -> tuple[nn.Module, nn.Module]:
        """(batch norm, the ReLU after it): fused into the first with fastconv, Identity second."""
        if self.fast:
            return fnn.BatchNorm2d(channels, relu=True), nn.Identity()
        return nn.BatchNorm2d(channels), nn.ReLU(inplace=True)

    def bn(self, channels: int) -> nn.Module:
        return fnn.BatchNorm2d(channels) if self.fast else nn.BatchNorm2d(channels)

    def max_pool(self, *args, **kwargs) -> nn.Module:
        return fnn.MaxPool2d(*args, **kwargs) if self.fast else nn.MaxPool2d(*args, **kwargs)

    def linear(self, *args, **kwargs) -> nn.Module:
        return fnn.Linear(*args, **kwargs) if self.fast else nn.Linear(*args, **kwargs)


class LeNet5(nn.Module):
    """LeNet-5 after LeCun et al. (1998): C1 6 maps of 5x5, S2 2x2 pooling, C3 16 maps of 5x5, S4 2x2
    pooling, C5 120 units, F6 84 units, then the classifier.

    Sized for 28x28 images (``input_size=28``: C1 pads by 2, as the paper's 32x32 input) or 8x8 digits
    (``input_size=8``, scikit-learn's ``load_digits``: C1 and C3 both pad by 2, so the maps are 8, 4,
    4, 2 pixels wide). Modernised where the paper predates current practice: ReLU instead of the scaled
    tanh, max instead of trainable average pooling, and C3 connected to all of S2's maps.
    """

    def __init__(self, num_classes: int = 10, input_size: int = 28, in_channels: int = 1, *,
                 backend: str = "fastconv", algorithm: str = "auto"):
        super().__init__()
        if input_size not in (8, 28):
            raise ValueError(f"fastconv.models.LeNet5: input_size must be 8 or 28, got {input_size}")
        make = _Layers(backend, algorithm)
        c3_padding = 2 if input_size == 8 else 0
        side = 2 if input_size == 8 else 5   # after S4: 8 -> 8, 4, 4, 2; 28 -> 28, 14, 10, 5
        self.c1 = make.conv(in_channels, 6, 5, padding=2)
        self.s2 = make.max_pool(2)
        self.c3 = make.conv(6, 16, 5, padding=c3_padding)
        self.s4 = make.max_pool(2)
        self.c5 = make.linear(16 * side * side, 120)
        self.f6 = make.linear(120, 84)
        self.out = make.linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s2(torch.relu(self.c1(x)))
        x = self.s4(torch.relu(self.c3(x)))
        x = torch.relu(self.c5(torch.flatten(x, 1)))
        return self.out(torch.relu(self.f6(x)))


class BasicBlock(nn.Module):
    """ResNet's basic block (He et al. 2016): two 3x3 convolutions with batch norm, the first one's
    ReLU fused into its batch norm on fastconv; a 1x1 projection when the shape changes."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, *, make: _Layers):
        super().__init__()
        self.conv1 = make.conv(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1, self.relu1 = make.bn_relu(channels)
        self.conv2 = make.conv(channels, channels, 3, padding=1, bias=False)
        self.bn2 = make.bn(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(make.conv(in_channels, channels, 1, stride=stride, bias=False),
                                            make.bn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) with an ImageNet stem (``stem="imagenet"``: 7x7 stride-2 convolution
    and 3x3 stride-2 max-pool, for 224x224 images) or a CIFAR stem (``stem="cifar"``: one 3x3
    convolution, no pooling, for 32x32 images); four stages of two basic blocks (64, 128, 256, 512
    channels), global average pooling and a linear classifier. Parameter names follow torchvision's
    ``resnet18``."""

    def __init__(self, num_classes: int = 1000, stem: str = "imagenet", in_channels: int = 3, *,
                 backend: str = "fastconv", algorithm: str = "auto"):
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"fastconv.models.ResNet18: stem must be 'imagenet' or 'cifar', got {stem!r}")
        make = _Layers(backend, algorithm)
        if stem == "imagenet":
            self.conv1 = make.conv(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = make.max_pool(3, stride=2, padding=1)
        else:
            self.conv1 = make.conv(in_channels, 64, 3, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1, self.relu = make.bn_relu(64)
        blocks, channels = [], 64
        for i, width in enumerate((64, 128, 256, 512)):
            stage = nn.Sequential(BasicBlock(channels, width, 1 if i == 0 else 2, make=make),
                                  BasicBlock(width, width, make=make))
            setattr(self, f"layer{i + 1}", stage)
            channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = make.linear(512, num_classes)
        for m in self.modules():   # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
