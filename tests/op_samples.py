"""Sample inputs for every op in fastconv's op table, used by the contract test (opcheck).

Every new schema in csrc/ops.cpp needs an entry here: test_ops_contract.py fails for an op that has
none. Each entry maps the op's name to a function (device) -> list of (args, kwargs).

Samples of backward ops include inputs that require grad, so that opcheck differentiates them (double
backward) and a missing formula cannot hide. Ops whose double backward runs in eager mode only are in
EAGER_DOUBLE_BACKWARD: their requires-grad samples are checked without opcheck's AOT-dispatch test, and
differentiated eagerly."""

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


def _batch_norm(device):
    samples = []
    C = 3
    for shape, mf, training, relu, affine in [((4, C, 5, 6), torch.contiguous_format, True, True, True),
                                              ((4, C, 5, 6), torch.channels_last, True, False, False),
                                              ((5, C), torch.contiguous_format, False, True, True),
                                              ((2, C, 3, 2, 2), torch.contiguous_format, False, False, True)]:
        x = torch.randn(shape, device=device).contiguous(memory_format=mf).requires_grad_(True)
        w = torch.rand(C, device=device, requires_grad=True) if affine else None
        b = torch.randn(C, device=device, requires_grad=True) if affine else None
        rm, rv = torch.randn(C, device=device), torch.rand(C, device=device) + 0.5
        samples.append(((x, w, b, rm, rv, training, 0.1, 1e-5, relu), {}))
    # ReLU clamped (ReLU6's relu_max, a low bound so that values reach it), in training and in inference
    for training in (True, False):
        x = torch.randn(4, C, 5, 6, device=device).mul_(4).requires_grad_(True)
        w, b = torch.rand(C, device=device, requires_grad=True), torch.randn(C, device=device, requires_grad=True)
        rm, rv = torch.randn(C, device=device), torch.rand(C, device=device) + 0.5
        samples.append(((x, w, b, rm, rv, training, 0.1, 1e-5, True), {"relu_max": 0.5 if training else 6.0}))
    return samples


def _batch_norm_backward(device):
    samples = []
    for (x, w, b, rm, rv, training, momentum, eps, relu), kw in _batch_norm(device):
        _, mean, invstd, _ = torch.ops.fastconv.batch_norm(x.detach(), w, b, rm, rv, training, momentum, eps,
                                                           relu, **kw)
        go = torch.randn_like(x)
        w, b = (w.detach(), b.detach()) if w is not None else (None, None)
        samples.append(((go, x.detach(), w, b, mean.detach(), invstd.detach(), training, relu, w is not None), kw))
    for i in (0, 4):   # double backward: with ReLU, and with it clamped (relu_max)
        (go, x, w, b, mean, invstd, training, relu, affine), kw = samples[i]
        w = w.clone().requires_grad_(True) if i == 4 else w
        samples.append(((go.clone().requires_grad_(True), x.clone().requires_grad_(True), w, b, mean, invstd,
                         training, relu, affine), kw))
    return samples


SAMPLES["fastconv::batch_norm"] = _batch_norm
SAMPLES["fastconv::batch_norm_backward"] = _batch_norm_backward


def _gemm(device):
    samples = []
    for (m, n, k), ta, tb, with_c in [((5, 7, 3), False, False, True), ((6, 33, 4), True, False, False),
                                      ((3, 4, 9), False, True, True), ((2, 5, 1), True, True, False)]:
        a = torch.randn((k, m) if ta else (m, k), device=device, requires_grad=True)
        b = torch.randn((n, k) if tb else (k, n), device=device, requires_grad=True)
        c = torch.randn(n, device=device, requires_grad=True) if with_c else None
        samples.append(((a, b, c, ta, tb, 0.5, 1.5 if with_c else 0.0), {}))
    # half precision (CUDA: float32 inside until the tensor-core kernels)
    for dtype, out_dtype in [(torch.bfloat16, None), (torch.float16, torch.float32), (torch.bfloat16, torch.float16)]:
        a = torch.randn(6, 5, device=device).to(dtype).requires_grad_()
        b = torch.randn(7, 5, device=device).to(dtype).requires_grad_()
        c = torch.randn(7, device=device).to(out_dtype or dtype)
        samples.append(((a, b, c, False, True, 1.0, 1.0), {"out_dtype": out_dtype}))
    return samples


SAMPLES["fastconv::gemm"] = _gemm


def _conv2d(device):
    samples = []
    for x_shape, w_shape, s, p, d, g, bias, mf, algo in [
            ((2, 4, 7, 6), (6, 2, 3, 2), [2, 1], [1, 0], [1, 2], 2, True, torch.contiguous_format, "im2col"),
            ((2, 3, 5, 5), (4, 3, 1, 1), [1, 1], [0, 0], [1, 1], 1, False, torch.channels_last, "im2col"),
            ((3, 6, 6), (2, 3, 3, 3), [1, 1], [1, 1], [1, 1], 1, True, torch.contiguous_format, "im2col"),
            ((2, 4, 7, 6), (6, 2, 3, 2), [2, 1], [1, 0], [1, 2], 2, True, torch.contiguous_format, "direct"),
            ((2, 3, 5, 5), (4, 3, 3, 3), [1, 1], [1, 1], [1, 1], 1, False, torch.channels_last, "direct"),
            ((2, 16, 5, 5), (32, 16, 3, 3), [1, 1], [1, 1], [1, 1], 1, True, torch.contiguous_format, "auto"),
            ((2, 3, 7, 6), (4, 3, 3, 3), [1, 1], [1, 1], [1, 1], 1, True, torch.contiguous_format, "winograd_2x2"),
            ((2, 3, 5, 9), (4, 3, 3, 3), [1, 1], [2, 0], [1, 1], 1, False, torch.channels_last, "winograd_4x4"),
            # depthwise: the NCHW phase kernels (17x17 planes), and channels-last
            ((2, 5, 17, 17), (5, 1, 3, 3), [2, 2], [1, 1], [1, 1], 5, True, torch.contiguous_format, "auto"),
            ((2, 6, 7, 6), (6, 1, 3, 3), [1, 1], [1, 1], [1, 1], 6, False, torch.channels_last, "direct"),
            # a strided 5x5 layer with output rows of 14: grad_weight by stride phases on the CPU
            ((1, 2, 28, 27), (3, 2, 5, 5), [2, 2], [2, 2], [1, 1], 1, True, torch.channels_last, "auto")]:
        x = torch.randn(x_shape, device=device)
        if x.dim() == 4:
            x = x.contiguous(memory_format=mf)
        x.requires_grad_(True)
        w = torch.randn(w_shape, device=device, requires_grad=True)
        b = torch.randn(w_shape[0], device=device, requires_grad=True) if bias else None
        samples.append(((x, w, b, s, p, d, g, algo), {}))
    # half precision (CUDA: float32 inside until the tensor-core kernels)
    # (bfloat16 "direct" and "auto" with 16+ in, 64+ out channels: the bfloat16 direct kernel where the
    # CPU has vdpbf16ps; channels-last in, channels-last out)
    for dtype, algo, cin, cout, mf in [(torch.bfloat16, "im2col", 4, 5, torch.contiguous_format),
                                       (torch.float16, "winograd_4x4", 4, 5, torch.contiguous_format),
                                       (torch.bfloat16, "direct", 17, 66, torch.contiguous_format),
                                       (torch.bfloat16, "auto", 16, 64, torch.channels_last)]:
        x = torch.randn(2, cin, 6, 6, device=device).to(dtype).contiguous(memory_format=mf).requires_grad_(True)
        w = torch.randn(cout, cin, 3, 3, device=device).to(dtype).requires_grad_(True)
        b = torch.randn(cout, device=device).to(dtype).requires_grad_(True)
        samples.append(((x, w, b, [1, 1], [1, 1], [1, 1], 1, algo), {}))
    return samples


def _conv2d_backward(device):
    samples = []
    for (x, w, b, s, p, d, g, algo), _ in _conv2d(device):
        y = torch.ops.fastconv.conv2d(x.detach(), w.detach(), None, s, p, d, g, algo)
        go = torch.randn_like(y).requires_grad_(True)
        samples.append(((go, x, w, s, p, d, g, algo, [True, True, b is not None]), {}))
    samples.append(((go, x, w, s, p, d, g, algo, [False, True, False]), {}))
    samples.append(((go, x, w, s, p, d, g, algo, [True, False, False]), {}))
    samples.append(((go.detach(), x.detach(), w.detach(), s, p, d, g, algo, [True, True, True]), {}))
    return samples


SAMPLES["fastconv::conv2d"] = _conv2d
SAMPLES["fastconv::conv2d_backward"] = _conv2d_backward


def _rnn_weights(gates: int, I: int, H: int, P: int, device, bias: bool, dtype=torch.float32):
    w_ih = torch.randn(gates * H, I, device=device, dtype=dtype, requires_grad=True)
    w_hh = torch.randn(gates * H, P or H, device=device, dtype=dtype, requires_grad=True)
    b = [torch.randn(gates * H, device=device, dtype=dtype, requires_grad=True) for _ in range(2)] if bias else [None, None]
    w_hr = torch.randn(P, H, device=device, dtype=dtype, requires_grad=True) if P else None
    return w_ih, w_hh, b[0], b[1], w_hr


# (batch_sizes, I, H, proj_size, bias, reverse): padded, packed (lengths 3, 2, 2, 1), a projection
_RNN_CASES = [([3, 3, 3], 4, 5, 0, True, False), ([4, 3, 1], 3, 6, 0, False, True), ([2, 2], 3, 5, 3, True, True)]


def _lstm_layer(device):
    samples = []
    for bs, I, H, P, bias, rev in _RNN_CASES:
        x = torch.randn(sum(bs), I, device=device, requires_grad=True)
        hx = torch.randn(bs[0], P or H, device=device, requires_grad=True)
        cx = torch.randn(bs[0], H, device=device, requires_grad=True)
        w_ih, w_hh, b_ih, b_hh, w_hr = _rnn_weights(4, I, H, P, device, bias)
        samples.append(((x, torch.tensor(bs), hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, rev), {}))
    return samples


def _lstm_layer_backward(device):
    samples = []
    for (x, bs, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, rev), _ in _lstm_layer(device):
        x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr = (None if t is None else t.detach()
                                                   for t in (x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr))
        out, hy, cy, ws = torch.ops.fastconv.lstm_layer(x, bs, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, rev)
        grads = [torch.randn_like(t) for t in (out, hy, cy)]
        samples.append(((*grads, x, bs, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, out, ws, rev, [True, True, True]), {}))
    args = list(samples[2][0])   # reverse, with biases and a projection
    for i in (0, 3, 7, 9, 11):   # grad_output, input, w_ih, b_ih, w_hr: the double backward
        args[i] = args[i].clone().requires_grad_(True)
    samples.append((tuple(args), {}))
    return samples


def _gru_layer(device):
    samples = []
    for bs, I, H, _P, bias, rev in _RNN_CASES:
        x = torch.randn(sum(bs), I, device=device, requires_grad=True)
        hx = torch.randn(bs[0], H, device=device, requires_grad=True)
        w_ih, w_hh, b_ih, b_hh, _ = _rnn_weights(3, I, H, 0, device, bias)
        samples.append(((x, torch.tensor(bs), hx, w_ih, w_hh, b_ih, b_hh, rev), {}))
    return samples


def _gru_layer_backward(device):
    samples = []
    for (x, bs, hx, w_ih, w_hh, b_ih, b_hh, rev), _ in _gru_layer(device):
        x, hx, w_ih, w_hh, b_ih, b_hh = (None if t is None else t.detach() for t in (x, hx, w_ih, w_hh, b_ih, b_hh))
        out, hy, ws = torch.ops.fastconv.gru_layer(x, bs, hx, w_ih, w_hh, b_ih, b_hh, rev)
        grads = [torch.randn_like(t) for t in (out, hy)]
        samples.append(((*grads, x, bs, hx, w_ih, w_hh, b_ih, b_hh, out, ws, rev, [True, False, True]), {}))
    args = list(samples[2][0])   # reverse, with biases
    for i in (0, 2, 4, 6, 8):   # grad_output, input, hx, w_hh, b_hh: the double backward
        args[i] = args[i].clone().requires_grad_(True)
    samples.append((tuple(args), {}))
    return samples


SAMPLES["fastconv::lstm_layer"] = _lstm_layer
SAMPLES["fastconv::lstm_layer_backward"] = _lstm_layer_backward
SAMPLES["fastconv::gru_layer"] = _gru_layer
SAMPLES["fastconv::gru_layer_backward"] = _gru_layer_backward

# Their double backward runs in eager mode only (the RNN steps' sizes are data, which a traced graph
# cannot loop over): their requires-grad samples skip opcheck's AOT-dispatch test, and run a double
# backward eagerly instead.
EAGER_DOUBLE_BACKWARD = {"fastconv::lstm_layer_backward", "fastconv::gru_layer_backward"}
