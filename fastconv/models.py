"""Reference models built from fastconv's modules: LeNet-5 and ResNet-18 (CNNs), a character-level
LSTM language model and a CNN + LSTM captioner.

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

__all__ = ["BasicBlock", "Captioner", "CharLM", "LeNet5", "ResNet18"]

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

    def lstm(self, *args, **kwargs) -> nn.Module:
        return fnn.LSTM(*args, **kwargs) if self.fast else nn.LSTM(*args, **kwargs)


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


class CharLM(nn.Module):
    """A character-level LSTM language model (after Karpathy's char-rnn): an embedding of the
    ``vocab_size`` characters, ``num_layers`` LSTM layers of ``hidden`` units (dropout between them)
    and a linear read-out of the next character's logits.

    ``forward(tokens (B, T), state=None) -> (logits (B, T, vocab_size), state)``; :meth:`generate`
    samples text one character at a time, carrying the LSTM state."""

    def __init__(self, vocab_size: int, embed: int = 32, hidden: int = 128, num_layers: int = 2,
                 dropout: float = 0.0, *, backend: str = "fastconv"):
        super().__init__()
        make = _Layers(backend, "auto")
        self.embed = nn.Embedding(vocab_size, embed)
        self.lstm = make.lstm(embed, hidden, num_layers, batch_first=True, dropout=dropout)
        self.head = make.linear(hidden, vocab_size)

    def forward(self, tokens: torch.Tensor, state=None):
        out, state = self.lstm(self.embed(tokens), state)
        return self.head(out), state

    @torch.no_grad()
    def generate(self, prefix: torch.Tensor, length: int, temperature: float = 0.8,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """``prefix`` (T,) token ids; returns them followed by ``length`` sampled ids."""
        was_training = self.training
        self.eval()
        logits, state = self(prefix[None])
        out = [prefix]
        for _ in range(length):
            probs = torch.softmax(logits[0, -1] / temperature, -1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(prefix.device)
            out.append(nxt)
            logits, state = self(nxt[None], state)
        self.train(was_training)
        return torch.cat(out)


class Captioner(nn.Module):
    """A CNN + LSTM captioner ("feed an image through a convnet, then run an RNN"): a small
    convolutional encoder (two 3x3 convolution + batch norm + ReLU + 2x2 max-pool stages, then a linear
    layer) turns an image into the LSTM decoder's initial state (h_0, c_0); the decoder reads the
    caption's previous word (teacher forcing in training) and predicts the next.

    ``forward(images (B, 1, H, W), words (B, L)) -> logits (B, L, vocab_size)``;
    :meth:`greedy` decodes from ``bos`` until ``eos`` or ``max_len`` words. The image height and width
    must be multiples of 4; ``feature`` is the encoder's flattened size for them."""

    def __init__(self, vocab_size: int, image_size: tuple[int, int] = (8, 32), hidden: int = 128, embed: int = 32, *,
                 backend: str = "fastconv"):
        super().__init__()
        make = _Layers(backend, "auto")
        h, w = image_size
        if h % 4 or w % 4:
            raise ValueError(f"fastconv.models.Captioner: image size must be a multiple of 4, got {image_size}")
        self.conv1 = make.conv(1, 16, 3, padding=1, bias=False)
        self.bn1, self.relu1 = make.bn_relu(16)
        self.pool1 = make.max_pool(2)
        self.conv2 = make.conv(16, 32, 3, padding=1, bias=False)
        self.bn2, self.relu2 = make.bn_relu(32)
        self.pool2 = make.max_pool(2)
        self.init_state = make.linear(32 * (h // 4) * (w // 4), 2 * hidden)
        self.embed = nn.Embedding(vocab_size, embed)
        self.lstm = make.lstm(embed, hidden, batch_first=True)
        self.head = make.linear(hidden, vocab_size)
        self.hidden = hidden

    def encode(self, images: torch.Tensor):
        x = self.pool1(self.relu1(self.bn1(self.conv1(images))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        h, c = torch.tanh(self.init_state(torch.flatten(x, 1))).chunk(2, dim=1)
        return h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()

    def forward(self, images: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(words), self.encode(images))
        return self.head(out)

    @torch.no_grad()
    def greedy(self, images: torch.Tensor, bos: int, eos: int, max_len: int) -> torch.Tensor:
        """(B, max_len) word ids, each row the argmax words after ``bos`` (``eos`` repeated once done)."""
        state = self.encode(images)
        word = torch.full((images.shape[0], 1), bos, dtype=torch.int64, device=images.device)
        out = []
        done = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        for _ in range(max_len):
            logits, state = self.lstm(self.embed(word), state)
            word = self.head(logits).argmax(-1)
            word[done] = eos
            done |= word[:, 0] == eos
            out.append(word)
        return torch.cat(out, 1)
