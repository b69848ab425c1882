"""fastconv's modules: drop-in subclasses of their torch.nn twins (same constructor, attributes,
state_dict and repr) whose forward runs fastconv's kernels."""

from __future__ import annotations

import torch

from . import functional as F

__all__ = ["MaxPool2d"]


class MaxPool2d(torch.nn.MaxPool2d):
    """:class:`torch.nn.MaxPool2d` on fastconv's max-pool kernels."""

    def forward(self, input: torch.Tensor):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)
