"""Sample inputs for every op in fastconv's op table, used by the contract test (opcheck).

Every new schema in csrc/ops.cpp needs an entry here: test_ops_contract.py fails for an op that has
none. Each entry maps the op's name to a function (device) -> list of (args, kwargs)."""

from __future__ import annotations

import torch


def _max_pool2d(device):
    samples = []
    for shape, mf, req in [((2, 3, 9, 7), torch.contiguous_format, True),
                           ((2, 3, 9, 7), torch.channels_last, True),
                           ((3, 8, 5), torch.contiguous_format, False)]:
        x = torch.randn(shape, device=device).contiguous(memory_format=mf).requires_grad_(req)
        samples.append(((x, [3, 2], [2, 1], [1, 1], [1, 2], True), {}))
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, device=device, requires_grad=True)
    samples.append(((x, [2, 2], [2, 2], [0, 0], [1, 1], False), {}))
    return samples


def _max_pool2d_backward(device):
    samples = []
    for (x, k, s, p, d, ceil), _ in _max_pool2d(device):
        out, idx = torch.ops.fastconv.max_pool2d_with_indices(x.detach(), k, s, p, d, ceil)
        go = torch.randn_like(out).requires_grad_(True)
        samples.append(((go, x.detach(), k, s, p, d, ceil, idx), {}))
    return samples


SAMPLES = {
    "fastconv::max_pool2d_with_indices": _max_pool2d,
    "fastconv::max_pool2d_with_indices_backward": _max_pool2d_backward,
}
