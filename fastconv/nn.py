"""fastconv's modules: drop-in subclasses of their torch.nn twins (same constructor, attributes,
state_dict and repr) whose forward runs fastconv's kernels."""

from __future__ import annotations

import torch

from . import functional as F

__all__ = ["BatchNorm2d", "Conv2d", "Linear", "MaxPool2d"]


class MaxPool2d(torch.nn.MaxPool2d):
    """:class:`torch.nn.MaxPool2d` on fastconv's max-pool kernels."""

    def forward(self, input: torch.Tensor):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class BatchNorm2d(torch.nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` on fastconv's kernels, with ``relu=True`` to fuse the ReLU that
    usually follows. Same constructor, parameters, buffers (``num_batches_tracked`` included), state_dict
    and initialisation as torch's; ``momentum=None`` is the cumulative moving average."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, relu: bool = False):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.relu = relu

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # The same bookkeeping as torch.nn.modules.batchnorm._BatchNorm.forward.
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return F.batch_norm(input, self.running_mean if track else None, self.running_var if track else None,
                            self.weight, self.bias, use_batch_stats, factor, self.eps, relu=self.relu)


class Linear(torch.nn.Linear):
    """:class:`torch.nn.Linear` on fastconv's GEMM engine: same constructor, initialisation and
    state_dict."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias)


class Conv2d(torch.nn.Conv2d):
    """:class:`torch.nn.Conv2d` on fastconv's convolution: same constructor (plus keyword-only
    ``algorithm``), initialisation, state_dict and padding modes (non-zero modes pad first, as torch)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 algorithm: str = "auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        if algorithm not in F.ALGORITHMS:
            raise ValueError(f"fastconv.nn.Conv2d: algorithm must be one of {F.ALGORITHMS}, got {algorithm!r}")
        self.algorithm = algorithm

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", algorithm={self.algorithm!r}" if self.algorithm != "auto" else "")

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            padded = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups,
                            algorithm=self.algorithm)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                        algorithm=self.algorithm)
