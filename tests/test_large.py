"""64-bit indexing: max_pool2d and batch_norm on tensors of more than 2^31 elements, where an index
computed in 32 bits would wrap. Marked slow and kept out of the default run and CI (they need up to 23 GB
of memory, about a minute here): run them with `pytest -m slow tests/test_large.py`. The values are periodic,
so the expected results near the end of the tensor are known without a second copy from torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import fastconv.functional as F

pytestmark = pytest.mark.slow
BIG = 2 ** 31 + 2 ** 20


def test_max_pool2d_beyond_2_31_elements():
    # One plane of 46,400 x 46,400 = 2.15e9 elements (> 2^31): flat indices past 2^31 must be right.
    side = 46_400
    assert side * side > 2 ** 31
    x = torch.empty(1, 1, side, side)
    x.view(-1, 8).copy_(torch.arange(8.0))        # the row-major position mod 8
    out, idx = F.max_pool2d(x, 3, 3, return_indices=True)
    # Check the last rows of windows against torch on the same rows (a slice: no second big tensor).
    first = 3 * (out.shape[2] - 8)                   # the first input row of the last 8 rows of windows
    ref_out, ref_idx = TF.max_pool2d(x[:, :, first:first + 24, :], 3, 3, return_indices=True)
    torch.testing.assert_close(out[:, :, -8:, :], ref_out)
    offset = first * side
    assert torch.equal(idx[:, :, -8:, :], ref_idx + offset)
    assert int(idx.max()) > 2 ** 31
    del out, idx
    out, idx = F.max_pool2d(x.requires_grad_(True), 3, 3, return_indices=True)   # backward scatters there
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    # k = s = 3: windows do not overlap, so each output puts a 1 on its own input
    assert grad.view(-1)[int(idx.view(-1)[-1])] == 1.0 and int(torch.count_nonzero(grad)) == out.numel()


@pytest.mark.parametrize("training", [False, True])
def test_batch_norm_beyond_2_31_elements(training):
    # Two channels of 1.07e9 elements each (2.15e9 in all): values i mod 8 in every channel, so the
    # batch statistics are mean 3.5 and variance 5.25 (biased), and the output at the very end is known.
    n_per_channel = BIG // 2
    x = torch.empty(1, 2, n_per_channel // 1024, 1024)
    x.view(-1, 8).copy_(torch.arange(8.0))
    rm, rv = torch.zeros(2), torch.ones(2)
    eps = 1e-5
    y = F.batch_norm(x, rm, rv, None, None, training, momentum=1.0, eps=eps)
    mean, var = (3.5, 5.25) if training else (0.0, 1.0)
    want_last, want_first = (7.0 - mean) / (var + eps) ** 0.5, -mean / (var + eps) ** 0.5
    assert abs(float(y.view(-1)[-1]) - want_last) < 1e-4 and abs(float(y.view(-1)[-8]) - want_first) < 1e-4
    if training:
        unbiased = 5.25 * n_per_channel / (n_per_channel - 1)
        torch.testing.assert_close(rm, torch.full((2,), 3.5))
        torch.testing.assert_close(rv, torch.full((2,), unbiased))
