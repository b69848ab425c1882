"""fastconv's modules: drop-in subclasses of their torch.nn twins (same constructor, attributes,
state_dict and repr) whose forward runs fastconv's kernels."""

from __future__ import annotations

import functools

import torch
from torch.nn.utils.rnn import PackedSequence

from . import functional as F

_conv2d_op = torch.ops.fastconv.conv2d.default

__all__ = ["BatchNorm2d", "Conv2d", "GRU", "GRUCell", "LSTM", "LSTMCell", "Linear", "MaxPool2d"]


def _named_errors(forward):
    """Errors a module raises on its arguments name the module: torch's own checks, which the RNN
    modules reuse, say only "input.size(-1) must be equal to input_size", and the kernels' name their
    op (``fastconv::lstm_layer: ...``). The same exception type, the message prefixed with
    ``fastconv.nn.<Module>:``."""
    @functools.wraps(forward)
    def wrapped(self, *args, **kwargs):
        try:
            return forward(self, *args, **kwargs)
        except (RuntimeError, ValueError, TypeError) as e:
            if type(e) not in (RuntimeError, ValueError, TypeError):
                raise   # a subclass (out of memory, ...) is not an argument error
            raise type(e)(f"fastconv.nn.{type(self).__name__}: {e}") from e
    return wrapped


class MaxPool2d(torch.nn.MaxPool2d):
    """:class:`torch.nn.MaxPool2d` on fastconv's max-pool kernels."""

    @_named_errors
    def forward(self, input: torch.Tensor):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class BatchNorm2d(torch.nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` on fastconv's kernels, with ``relu=True`` to fuse the ReLU that
    usually follows, and ``relu_max`` (with ``relu=True``) to clamp it there: ``relu_max=6.0`` is
    ``nn.ReLU6`` (MobileNet's ``BatchNorm2d, ReLU6`` pairs). Same constructor (``bias=False``: an affine weight without a shift, as torch 2.14's),
    parameters, buffers (``num_batches_tracked`` included), state_dict and initialisation as torch's;
    ``momentum=None`` is the cumulative moving average."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True,
                 relu: bool = False, relu_max: float | None = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        if relu_max is not None and (not relu or not relu_max >= 0):
            raise ValueError(f"fastconv.nn.BatchNorm2d: relu_max clamps the fused ReLU, so it needs relu=True and "
                             f"relu_max >= 0, but got relu={relu}, relu_max={relu_max}")
        self.relu = relu
        self.relu_max = relu_max

    def extra_repr(self) -> str:
        return (super().extra_repr() + (", relu=True" if self.relu else "")
                + (f", relu_max={self.relu_max}" if self.relu_max is not None else ""))

    @_named_errors
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
                            self.weight, self.bias, use_batch_stats, factor, self.eps, relu=self.relu,
                            relu_max=self.relu_max)


class Linear(torch.nn.Linear):
    """:class:`torch.nn.Linear` on fastconv's GEMM engine: same constructor, initialisation and
    state_dict."""

    @_named_errors
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
        if algorithm.startswith("winograd") and (tuple(self.kernel_size) != (3, 3) or tuple(self.stride) != (1, 1)
                                                 or tuple(self.dilation) != (1, 1) or groups != 1):
            # refused here rather than at the first forward
            raise ValueError(f"fastconv.nn.Conv2d: algorithm {algorithm!r} applies to 3x3 kernels with stride 1, "
                             f"dilation 1 and groups=1, but got kernel_size={self.kernel_size}, stride={self.stride}, "
                             f"dilation={self.dilation}, groups={groups} (use 'auto', 'im2col' or 'direct')")
        self.algorithm = algorithm

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", algorithm={self.algorithm!r}" if self.algorithm != "auto" else "")

    @_named_errors
    def _conv_forward(self, input, weight, bias):
        if self.padding_mode == "zeros" and not isinstance(self.padding, str):
            # The common case straight to the op: the constructor has checked the arguments and made
            # them pairs, which is what fastconv.functional.conv2d would do again on every call.
            return _conv2d_op(input, F._weight_for_call(weight), bias, self.stride, self.padding,
                              self.dilation, self.groups, self.algorithm)
        if self.padding_mode != "zeros":
            padded = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups,
                            algorithm=self.algorithm)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                        algorithm=self.algorithm)


class _RNNMixin:
    """The forward of :class:`torch.nn.LSTM` / :class:`torch.nn.GRU` (input forms, hidden-state checks
    and permutations, PackedSequence in and out, unbatched input) with fastconv's layers under it."""

    def _run(self, mode: str, input, hx):
        self._update_flat_weights()
        orig_input = input
        dirs = 2 if self.bidirectional else 1
        lstm = mode == "lstm"
        real_hidden = self.proj_size if lstm and self.proj_size > 0 else self.hidden_size
        batch_sizes = None
        is_batched = True
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch = int(batch_sizes[0]) if batch_sizes.numel() else 0
            if hx is not None:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            max_batch = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = unsorted_indices = None
            if hx is not None:
                want = 3 if is_batched else 2
                states = hx if lstm else (hx,)
                if any(h.dim() != want for h in states):
                    dims = ", ".join(f"{h.dim()}-D" for h in states)
                    raise RuntimeError(f"For {'batched 3-D' if is_batched else 'unbatched 2-D'} input, hx "
                                       f"{'and cx ' if lstm else ''}should also be {want}-D but got ({dims}) tensors")
                if not is_batched:
                    hx = tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
        if hx is None:
            zeros = functools.partial(torch.zeros, dtype=input.dtype, device=input.device)
            h0 = zeros(self.num_layers * dirs, max_batch, real_hidden)
            hx = (h0, zeros(self.num_layers * dirs, max_batch, self.hidden_size)) if lstm else h0
        self.check_forward_args(input, hx, batch_sizes)
        fn = F.lstm if lstm else F.gru
        result = fn(input, hx, self._flat_weights, self.bias, self.num_layers, self.dropout, self.training,
                    self.bidirectional, self.batch_first, batch_sizes=batch_sizes)
        output, hidden = result[0], (result[1:] if lstm else result[1])
        if isinstance(orig_input, PackedSequence):
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), \
                self.permute_hidden(hidden, unsorted_indices)
        if not is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
            hidden = tuple(h.squeeze(1) for h in hidden) if lstm else hidden.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)


class LSTM(_RNNMixin, torch.nn.LSTM):
    """:class:`torch.nn.LSTM` on fastconv's LSTM layers: the same constructor (num_layers, bias,
    batch_first, dropout, bidirectional, proj_size, device, dtype), parameters and their names
    (``weight_ih_l0``, ``weight_hh_l0_reverse``, ``weight_hr_l0``, ...), initialisation, state_dict and
    repr; padded, unbatched or PackedSequence input (sorted or not), optional ``(h_0, c_0)``."""

    @_named_errors
    def forward(self, input, hx=None):
        return self._run("lstm", input, hx)


class GRU(_RNNMixin, torch.nn.GRU):
    """:class:`torch.nn.GRU` on fastconv's GRU layers: the same constructor, parameters, initialisation,
    state_dict, repr and input forms as torch's."""

    @_named_errors
    def forward(self, input, hx=None):
        return self._run("gru", input, hx)


class LSTMCell(torch.nn.LSTMCell):
    """:class:`torch.nn.LSTMCell` on fastconv's fused LSTM step: same constructor, parameters,
    initialisation and state_dict; unbatched input and a missing state as torch's."""

    @_named_errors
    def forward(self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
        elif not is_batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        h, c = F.lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(torch.nn.GRUCell):
    """:class:`torch.nn.GRUCell` on fastconv's fused GRU step: same constructor, parameters,
    initialisation and state_dict; unbatched input and a missing state as torch's."""

    @_named_errors
    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        if input.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
        elif not is_batched:
            hx = hx.unsqueeze(0)
        h = F.gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h if is_batched else h.squeeze(0)
