"""fastconv's functional API: torch.nn.functional's signatures, fastconv's kernels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import ops

__all__ = ["batch_norm", "conv2d", "gru", "gru_cell", "linear", "lstm", "lstm_cell", "max_pool2d"]


def _pair(value, name: str, op: str) -> list[int]:
    """An int or a sequence of one or two ints, as torch's 2-D ops accept, as a list of two."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        items = list(value)
        if len(items) == 1:
            items = items * 2
        if len(items) != 2 or not all(isinstance(v, int) for v in items):
            raise ValueError(f"fastconv.{op}: {name} must be an int or a sequence of 1 or 2 ints, got {value!r}")
        return items
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    raise TypeError(f"fastconv.{op}: {name} must be an int or a sequence of 1 or 2 ints, got {value!r}")


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """2-D max pooling, as :func:`torch.nn.functional.max_pool2d` (same arguments, output, indices,
    memory format and gradient), on fastconv's kernels.

    ``input`` is (N, C, H, W) or unbatched (C, H, W); ``stride`` defaults to ``kernel_size``.
    Indices are flat offsets ``h * W + w`` into each input plane, as torch's.

    dtypes: float32, float64, float16, bfloat16."""
    k = _pair(kernel_size, "kernel_size", "max_pool2d")
    s = k if stride is None or (isinstance(stride, Sequence) and len(stride) == 0) else _pair(
        stride, "stride", "max_pool2d")
    p = _pair(padding, "padding", "max_pool2d")
    d = _pair(dilation, "dilation", "max_pool2d")
    out, indices = ops.max_pool2d_with_indices(input, k, s, p, d, bool(ceil_mode))
    return (out, indices) if return_indices else out


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1, eps: float = 1e-5, *,
               relu: bool = False, relu_max: float | None = None) -> Tensor:
    """Batch normalisation, as :func:`torch.nn.functional.batch_norm` (input (N, C, *), running
    statistics updated in place in training with ``momentum`` and the unbiased batch variance), on
    fastconv's kernels. ``relu=True`` applies ReLU in the same pass (forward and backward);
    ``relu_max`` (with ``relu=True``) clamps it there, as ``torch.nn.functional.hardtanh(y, 0, relu_max)``:
    6.0 gives ReLU6 (MobileNet's activation). The bound is taken in the input's dtype, and the gradient
    stops where the output is at or beyond either bound, as torch's ``hardtanh_backward``.

    Statistics are per-channel shifted sums (shift = the channel's first value): runs of values summed
    in float32, the runs' totals in double, so they stay accurate when the mean is large against the
    spread.

    dtypes: float32, float64, float16, bfloat16 (statistics in float32; float64 for float64)."""
    if training:
        size = input.shape
        values = size[0]
        for s in size[2:]:
            values *= s
        if values == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
    # In training the op updates the running statistics in place, as torch's kernel does.
    return ops.batch_norm(input, weight, bias, running_mean, running_var, bool(training), float(momentum),
                          float(eps), bool(relu), None if relu_max is None else float(relu_max))[0]


_LINEAR_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = input @ weight^T + bias, as :func:`torch.nn.functional.linear` (any leading dimensions,
    optional bias), on fastconv's GEMM engine: one gemm with the bias as its beta term.

    dtypes: float32, float64, float16 and bfloat16 (input, weight and bias alike; as torch, the output
    has the input's dtype). Half precision is accumulated in float32 and rounded once, to nearest even
    (CPU; on CUDA half precision is not implemented yet and raises)."""
    if weight.dim() != 2:
        raise RuntimeError(f"fastconv.linear: expected a 2-D weight (out_features, in_features), but got shape "
                           f"{tuple(weight.shape)}")
    # Under torch.autocast the op's autocast kernel casts the three to the autocast dtype, as torch's does.
    autocast = torch.is_autocast_enabled(input.device.type)
    if input.dtype not in _LINEAR_DTYPES or (weight.dtype != input.dtype and not autocast):
        raise RuntimeError(f"fastconv.linear: expected input to be float32, float64, float16 or bfloat16 and weight "
                           f"of the same dtype, but got input {input.dtype} and weight {weight.dtype}")
    if bias is not None and bias.dtype != input.dtype and not autocast:
        raise RuntimeError(f"fastconv.linear: expected bias of dtype {input.dtype}, but got {bias.dtype}")
    if input.dim() == 0 or input.shape[-1] != weight.shape[1]:
        raise RuntimeError(f"fastconv.linear: expected input with last dimension {weight.shape[1]} "
                           f"(in_features), but got shape {tuple(input.shape)}")
    beta = 0.0 if bias is None else 1.0
    if input.dim() == 2:   # no reshapes (two tensor calls, ~3 us of a tiny layer's 22)
        return ops.gemm(input, weight, bias, False, True, 1.0, beta)
    lead = input.shape[:-1]
    rows = 1
    for n in lead:
        rows *= n
    # rows spelled out: reshape(-1, 0) is ambiguous when in_features is 0 (torch's linear gives the bias)
    out = ops.gemm(input.reshape(rows, weight.shape[1]), weight, bias, False, True, 1.0, beta)
    return out.reshape(*lead, weight.shape[0])


ALGORITHMS = ops.CONV2D_ALGORITHMS   # the names the op accepts


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1, *, algorithm: str = "auto") -> Tensor:
    """2-D convolution, as :func:`torch.nn.functional.conv2d` (4-D or unbatched 3-D input, int or pair
    arguments, ``padding='same'``/``'valid'``, dilation, groups, optional bias, channels-last input), on
    fastconv's kernels.

    ``algorithm``:

    - ``"im2col"`` lowers each image to columns (in chunks of at most 64 MiB) and runs the GEMM engine;
      1x1 stride-1 convolutions skip the lowering. Channels-last input (16+ channels per group, float32
      or float64) is lowered, and its gradients computed, in NHWC without copies; other algorithms
      (and fewer channels) go through NCHW copies, except grad_weight, which is NHWC's for all.
      On the CPU, grad_weight of a strided layer (one group) with a kernel of 25+ taps, or channels-last
      over fewer than 16 channels, and output rows of 14+ values lowers nothing: the input is split
      into its stride phases and the GEMM reads each tap's runs where they lie (the stems).
    - ``"direct"`` runs a loop nest over register-blocked tiles (CPU: 8 pixels x 32 output channels in
      AVX-512 registers; CUDA: an 8x16 pixel tile with its input patch in shared memory), reading the
      input in place (CPU: NCHW or channels-last). Its grad_input is the transposed convolution in the
      same form; grad_weight is im2col's columns x grad_output. Depthwise layers (groups = input =
      output channels) run dedicated CPU kernels instead, all three passes: NCHW planes zero-padded and
      split into stride phases, vectorised along rows; channels-last vectorised along the channels.
    - ``"winograd_2x2"`` / ``"winograd_4x4"``: Winograd's minimal filtering F(2x2, 3x3) / F(4x4, 3x3)
      (Lavin & Gray 2015) for 3x3 kernels, stride 1, dilation 1, groups 1, any padding and size:
      input and output tile transforms around 16 / 36 GEMMs over channels on the GEMM engine; the
      transformed filters are cached per weight tensor and recomputed when its version counter moves.
      grad_input is a Winograd convolution with the flipped, transposed filters; grad_weight is
      im2col's. Other shapes raise an error. ``"winograd"`` picks F(4x4) unless the output is under
      4 pixels on a side.
    - ``"auto"``: on the CPU, Winograd F(4x4) for 3x3 stride-1 layers with at least 64 input and
      output channels and outputs of at least 7x7 (when the weight requires grad, so its transform
      cannot be cached, also at least 128 4x4 tiles in the batch); ``"direct"`` for depthwise layers
      (its depthwise kernels); ``"im2col"`` otherwise (faster than ``"direct"`` on every other shape
      measured). grad_input chooses apart: Winograd F(4x4) on
      the same layers without the tile condition, im2col otherwise. On CUDA, ``"im2col"`` (the other kernels have
      not been measured on a GPU yet).

    dtypes: float32, float64, float16 and bfloat16 (input, weight and bias alike; under torch.autocast
    they are cast to the autocast dtype as torch casts its convolution's). Half precision on the CPU
    runs the float32 kernels on the widened operands (float32 accumulation) and rounds the output once;
    CUDA refuses it for now.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"fastconv.conv2d: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    s = _pair(stride, "stride", "conv2d")
    d = _pair(dilation, "dilation", "conv2d")
    if isinstance(padding, str):
        if padding == "valid":
            p = [0, 0]
        elif padding == "same":
            if s != [1, 1]:   # torch's functional raises RuntimeError here (its module, ValueError)
                raise RuntimeError("fastconv.conv2d: padding='same' is not supported for strided convolutions")
            if weight.dim() != 4:
                raise RuntimeError(f"fastconv::conv2d: expected a 4-D weight, but got shape {tuple(weight.shape)}")
            # torch's rule: total padding d*(k-1) per dimension, the odd one out at the end.
            total = [d[0] * (weight.shape[2] - 1), d[1] * (weight.shape[3] - 1)]
            p = [total[0] // 2, total[1] // 2]
            extra = [total[0] - 2 * p[0], total[1] - 2 * p[1]]
            if any(extra):
                input = torch.nn.functional.pad(input, (0, extra[1], 0, extra[0]))
        else:
            raise ValueError(f"fastconv.conv2d: padding must be 'valid', 'same', an int or a pair, got {padding!r}")
    else:
        p = _pair(padding, "padding", "conv2d")
    return ops.conv2d(input, _weight_for_call(weight), bias, s, p, d, int(groups), algorithm)


def _weight_for_call(weight: Tensor) -> Tensor:
    """A weight as conv2d's and the RNN layers' ops should see it: where no gradient can reach it (grad
    mode off), a detached view (same storage), whose prepared form (a Winograd transform, packed
    panels) the weight cache may keep (csrc/common/weight_cache.h: checked against a digest of the
    weight's bytes on every call) and which tells conv2d's "auto" that this is inference."""
    if weight is not None and not torch.is_grad_enabled() and weight.requires_grad:
        return weight.detach()
    return weight


# ------------------------------------------------------------------------------------------------
# RNNs: cells and whole (multi-layer, bidirectional, packed) sequences
# ------------------------------------------------------------------------------------------------
def _steps(T: int, B: int) -> Tensor:
    """batch_sizes of a padded sequence: every one of the T steps has all B rows."""
    return torch.full((T,), B, dtype=torch.int64)


def _cell_input(op: str, input: Tensor, w_ih: Tensor) -> None:
    if input.dim() != 2:
        raise RuntimeError(f"fastconv.{op}: expected a 2-D input (batch, input_size), but got shape "
                           f"{tuple(input.shape)}")
    if w_ih.dim() != 2 or input.shape[1] != w_ih.shape[1]:
        raise RuntimeError(f"fastconv.{op}: input has {input.shape[1]} features but weight_ih expects "
                           f"{w_ih.shape[-1] if w_ih.dim() else '?'} (input_size)")


def _cell_state(op: str, name: str, state: Tensor, batch: int, size: int) -> None:
    if tuple(state.shape) != (batch, size):
        raise RuntimeError(f"fastconv.{op}: expected {name} of shape ({batch}, {size}), but got {tuple(state.shape)}")


def lstm_cell(input: Tensor, hx: tuple[Tensor, Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
              b_hh: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One LSTM step, as ``torch.lstm_cell`` (what :class:`torch.nn.LSTMCell` calls): ``input`` (B, I),
    ``hx = (h, c)`` (B, H) each, ``w_ih`` (4H, I), ``w_hh`` (4H, H) in torch's gate order i, f, g, o;
    returns ``(h', c')`` (dtypes: float32, float64, and float16/bfloat16 computed in float32). Runs as a one-step :func:`lstm` layer: the two products accumulate into one
    gate buffer, then one fused pass applies the nonlinearities and the state update.

    >>> h, c = torch.zeros(8, 64), torch.zeros(8, 64)
    >>> w_ih, w_hh = torch.randn(256, 32) * 0.1, torch.randn(256, 64) * 0.1
    >>> h, c = lstm_cell(torch.randn(8, 32), (h, c), w_ih, w_hh)"""
    _cell_input("lstm_cell", input, w_ih)
    h, c = hx
    H = w_ih.shape[0] // 4
    _cell_state("lstm_cell", "hx[0]", h, input.shape[0], w_hh.shape[1] if w_hh.dim() == 2 else H)
    _cell_state("lstm_cell", "hx[1]", c, input.shape[0], H)
    if input.dtype in _HALF:
        x, h32, c32, *ws = _widened("lstm_cell", input, [h, c, w_ih, w_hh, b_ih, b_hh])
        return tuple(t.to(input.dtype) for t in lstm_cell(x, (h32, c32), *ws))
    _, hy, cy, _ = ops.lstm_layer(input, _steps(1, input.shape[0]), h, c, _weight_for_call(w_ih),
                                  _weight_for_call(w_hh), b_ih, b_hh, None, False)
    return hy, cy


def gru_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None) -> Tensor:
    """One GRU step, as ``torch.gru_cell`` (what :class:`torch.nn.GRUCell` calls): ``input`` (B, I), ``hx``
    (B, H), ``w_ih`` (3H, I), ``w_hh`` (3H, H) in torch's gate order r, z, n, with
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``; returns ``h'``. dtypes: float32, float64, and
    float16/bfloat16 computed in float32.

    >>> h = gru_cell(torch.randn(8, 32), torch.zeros(8, 64), torch.randn(192, 32), torch.randn(192, 64))"""
    _cell_input("gru_cell", input, w_ih)
    _cell_state("gru_cell", "hx", hx, input.shape[0], w_ih.shape[0] // 3)
    if input.dtype in _HALF:
        return gru_cell(*_widened("gru_cell", input, [hx, w_ih, w_hh, b_ih, b_hh])).to(input.dtype)
    _, hy, _ = ops.gru_layer(input, _steps(1, input.shape[0]), hx, _weight_for_call(w_ih), _weight_for_call(w_hh),
                             b_ih, b_hh, False)
    return hy


_HALF = (torch.float16, torch.bfloat16)


def _widened(op: str, input: Tensor, others) -> list:
    """Half precision for the recurrent ops: float32 copies of ``input`` and ``others`` (None kept),
    which must all have input's dtype (as torch requires). The layers then run in float32 — the gates'
    sums and the cell state, which torch also keeps in float32 — and the caller rounds the results
    once, to nearest even, into the input's dtype. The casts are differentiable: gradients come back in
    the half-precision dtype."""
    for t in others:
        if t is not None and t.dtype != input.dtype:
            raise RuntimeError(f"fastconv.{op}: expected every tensor in {input.dtype} like the input, but got "
                               f"one in {t.dtype}")
    return [input.float(), *(None if t is None else t.float() for t in others)]


def _rnn(mode: str, input: Tensor, hx: list[Tensor], params, has_biases: bool, num_layers: int, dropout: float,
         train: bool, bidirectional: bool, batch_first: bool, batch_sizes: Tensor | None):
    """The layers of :func:`lstm` / :func:`gru`: returns (output, h_n[, c_n])."""
    dirs = 2 if bidirectional else 1
    proj = mode == "lstm" and hx[0].shape[-1] != hx[1].shape[-1]
    per = 2 + 2 * bool(has_biases) + int(proj)
    params = list(params)
    if len(params) != per * num_layers * dirs:
        raise RuntimeError(f"fastconv.{mode}: expected {per * num_layers * dirs} parameter tensors ({per} per layer "
                           f"and direction), but got {len(params)}")
    for i, h in enumerate(hx):
        if h.dim() != 3 or h.shape[0] != num_layers * dirs:
            raise RuntimeError(f"fastconv.{mode}: expected hx[{i}] of shape ({num_layers * dirs}, batch, size), but "
                               f"got {tuple(h.shape)}")
    if batch_sizes is None:
        if input.dim() != 3:
            raise RuntimeError(f"fastconv.{mode}: expected a 3-D input, but got shape {tuple(input.shape)}")
        x = input.transpose(0, 1) if batch_first else input
        T, B = x.shape[0], x.shape[1]
        if T == 0:
            raise RuntimeError(f"fastconv.{mode}: Expected sequence length to be larger than 0 in RNN")
        data, steps = x.reshape(T * B, x.shape[2]), _steps(T, B)
    else:
        data, steps = input, batch_sizes
    states: list[list[Tensor]] = [[] for _ in hx]
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w = [_weight_for_call(p) for p in params[k * per:(k + 1) * per]]
            b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
            if mode == "lstm":
                out, hy, cy, _ = ops.lstm_layer(data, steps, hx[0][k], hx[1][k], w[0], w[1], b_ih, b_hh,
                                                w[-1] if proj else None, d == 1)
                states[1].append(cy)
            else:
                out, hy, _ = ops.gru_layer(data, steps, hx[0][k], w[0], w[1], b_ih, b_hh, d == 1)
            states[0].append(hy)
            outs.append(out)
        data = torch.cat(outs, 1) if dirs == 2 else outs[0]
        if dropout > 0 and train and layer < num_layers - 1:
            data = torch.nn.functional.dropout(data, dropout, True)
    if batch_sizes is None:
        data = data.view(T, B, data.shape[1])
        if batch_first:
            data = data.transpose(0, 1)
    return (data, *(torch.stack(s) for s in states))


def lstm(input: Tensor, hx, params, has_biases: bool = True, num_layers: int = 1, dropout: float = 0.0,
         train: bool = False, bidirectional: bool = False, batch_first: bool = False, *,
         batch_sizes: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """A multi-layer LSTM over a whole sequence, as ``torch.lstm`` (what :class:`torch.nn.LSTM` calls):
    ``input`` (T, B, I) (or (B, T, I) with ``batch_first``), or the packed rows of a
    ``PackedSequence`` with its ``batch_sizes``; ``hx = (h_0, c_0)`` of shape (layers * directions, B,
    H_out) and (layers * directions, B, H); ``params`` the weights in :class:`torch.nn.LSTM`'s order
    (``module._flat_weights``: per layer and direction ``w_ih, w_hh[, b_ih, b_hh][, w_hr]``), a
    projection inferred, as torch does, from h_0 being narrower than c_0. Returns
    ``(output, h_n, c_n)``. Dropout between layers when ``train``. dtypes: float32, float64; float16 and
    bfloat16 run in float32 (the gates' sums and the cell state, as torch keeps them; the results
    rounded once), and under torch.autocast an LSTM runs in the autocast dtype, as torch's.

    Each layer and direction is one ``fastconv::lstm_layer``: the input projection of every step as one
    GEMM, then per step the recurrent GEMM and a fused gate kernel, on a step's real rows only.

    >>> lstm_ = torch.nn.LSTM(32, 64, num_layers=2)
    >>> x, h0 = torch.randn(50, 8, 32), torch.zeros(2, 8, 64)
    >>> out, h_n, c_n = lstm(x, (h0, h0), lstm_._flat_weights, True, 2)"""
    dev = input.device.type
    if torch.is_autocast_enabled(dev):
        # torch's cast policy runs an LSTM in the autocast dtype (CPU: through oneDNN's RNN, bfloat16;
        # torch's float16 there fails inside oneDNN, fastconv's runs): float32 tensors are cast to it,
        # float64 ones are left alone, and the rest of the call runs with autocast off.
        low = torch.get_autocast_dtype(dev)

        def cast(t: Tensor) -> Tensor:
            return t.to(low) if t.dtype == torch.float32 else t

        with torch.autocast(dev, enabled=False):
            return lstm(cast(input), tuple(cast(h) for h in hx), [cast(p) for p in params], has_biases, num_layers,
                        dropout, train, bidirectional, batch_first, batch_sizes=batch_sizes)
    if input.dtype in _HALF:
        hx, params = list(hx), list(params)
        x, *rest = _widened("lstm", input, [*hx, *params])
        out = _rnn("lstm", x, rest[:len(hx)], rest[len(hx):], has_biases, num_layers, dropout, train, bidirectional,
                   batch_first, batch_sizes)
        return tuple(t.to(input.dtype) for t in out)
    return _rnn("lstm", input, list(hx), params, has_biases, num_layers, dropout, train, bidirectional, batch_first,
                batch_sizes)


def gru(input: Tensor, hx: Tensor, params, has_biases: bool = True, num_layers: int = 1, dropout: float = 0.0,
        train: bool = False, bidirectional: bool = False, batch_first: bool = False, *,
        batch_sizes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """A multi-layer GRU over a whole sequence, as ``torch.gru`` (what :class:`torch.nn.GRU` calls); the
    arguments as :func:`lstm`'s with one state ``hx`` (layers * directions, B, H) and per layer and
    direction ``w_ih, w_hh[, b_ih, b_hh]``. Returns ``(output, h_n)``. dtypes: as :func:`lstm`'s (torch
    keeps a GRU in float32 under autocast, and so does this).

    >>> gru_ = torch.nn.GRU(32, 64)
    >>> out, h_n = gru(torch.randn(50, 8, 32), torch.zeros(1, 8, 64), gru_._flat_weights)"""
    if input.dtype in _HALF:   # torch keeps a GRU in float32 under autocast: only half inputs come here
        params = list(params)
        x, h, *ps = _widened("gru", input, [hx, *params])
        out = _rnn("gru", x, [h], ps, has_biases, num_layers, dropout, train, bidirectional, batch_first, batch_sizes)
        return tuple(t.to(input.dtype) for t in out)
    return _rnn("gru", input, [hx], params, has_biases, num_layers, dropout, train, bidirectional, batch_first,
                batch_sizes)
