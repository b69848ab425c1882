"""Python side of the op table (csrc/ops.cpp): fake (meta) kernels, so the ops trace under
``torch.compile`` without graph breaks, and the autograd formulas of the backward ops (double backward)
and of the RNN layers, whose backward is itself a fastconv op. The CNN ops' autograd (conv2d, max-pool,
batch-norm, gemm) is registered in C++ (csrc/autograd.cpp), which spares each call a trip through Python.

The kernels are reached as ``torch.ops.fastconv.<name>``; this module adds typed wrappers."""

from __future__ import annotations

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

__all__ = ["batch_norm", "batch_norm_backward", "conv2d", "gemm", "gru_layer", "lstm_layer", "max_pool2d_with_indices",
           "max_pool2d_with_indices_backward", "pool_output_size"]


# ------------------------------------------------------------------------------------------------
# shape math shared by the fake kernels (mirrors csrc/common/pool2d.h)
# ------------------------------------------------------------------------------------------------
def pool_output_size(size: int, k: int, pad: int, stride: int, dilation: int, ceil_mode: bool) -> int:
    out = (size + 2 * pad - dilation * (k - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _check(cond: bool, op: str, msg: str) -> None:
    if not cond:
        raise RuntimeError(f"fastconv::{op}: {msg}")


def _max_pool2d_shape(x: Tensor, kernel_size, stride, padding, dilation, ceil_mode, op: str):
    for name, v in (("kernel_size", kernel_size), ("stride", stride), ("padding", padding), ("dilation", dilation)):
        _check(len(v) == 2, op, f"expected {name} to have 2 elements, but got {len(v)} ({list(v)})")
    _check(x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16), op,
           f"expected input to be float32, float64, float16 or bfloat16, but got {x.dtype}")
    _check(x.dim() in (3, 4), op, f"expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, but got a {x.dim()}-D "
           f"tensor of shape {tuple(x.shape)}")
    _check(all(s > 0 for s in x.shape[-3:]), op, "expected non-empty channel and spatial dimensions (only the "
           f"batch may be 0), but got input of shape {tuple(x.shape)}")
    _check(min(kernel_size) > 0, op, f"kernel_size must be positive, but got {list(kernel_size)}")
    _check(min(stride) > 0, op, f"stride must be positive, but got {list(stride)}")
    _check(min(dilation) > 0, op, f"dilation must be positive, but got {list(dilation)}")
    _check(min(padding) >= 0, op, f"padding must be non-negative, but got {list(padding)}")
    _check(padding[0] <= kernel_size[0] // 2 and padding[1] <= kernel_size[1] // 2, op,
           f"padding must be at most half of kernel_size, but got padding={list(padding)} and "
           f"kernel_size={list(kernel_size)}")
    oh = pool_output_size(x.shape[-2], kernel_size[0], padding[0], stride[0], dilation[0], ceil_mode)
    ow = pool_output_size(x.shape[-1], kernel_size[1], padding[1], stride[1], dilation[1], ceil_mode)
    _check(oh >= 1 and ow >= 1, op, f"output size is too small: input {list(x.shape)} gives output {oh}x{ow}")
    shape = (*x.shape[:-2], oh, ow)
    fmt = suggest_memory_format(x) if x.dim() == 4 else torch.contiguous_format
    return shape, fmt


# ------------------------------------------------------------------------------------------------
# max_pool2d
# ------------------------------------------------------------------------------------------------
def max_pool2d_with_indices(x: Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool):
    return torch.ops.fastconv.max_pool2d_with_indices.default(x, kernel_size, stride, padding, dilation, ceil_mode)


def max_pool2d_with_indices_backward(grad_output, x, kernel_size, stride, padding, dilation, ceil_mode, indices):
    return torch.ops.fastconv.max_pool2d_with_indices_backward.default(
        grad_output, x, kernel_size, stride, padding, dilation, ceil_mode, indices)


@torch.library.register_fake("fastconv::max_pool2d_with_indices")
def _max_pool2d_fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    shape, fmt = _max_pool2d_shape(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d_with_indices")
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    idx = torch.empty(shape, dtype=torch.int64, device=x.device, memory_format=fmt)
    return out, idx


@torch.library.register_fake("fastconv::max_pool2d_with_indices_backward")
def _max_pool2d_backward_fake(grad_output, x, kernel_size, stride, padding, dilation, ceil_mode, indices):
    op = "max_pool2d_with_indices_backward"
    shape, fmt = _max_pool2d_shape(x, kernel_size, stride, padding, dilation, ceil_mode, op)
    _check(tuple(grad_output.shape) == shape, op, f"expected grad_output of shape {list(shape)}, but got "
           f"{list(grad_output.shape)}")
    _check(tuple(indices.shape) == shape, op, f"expected indices of shape {list(shape)}, but got {list(indices.shape)}")
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def _max_pool2d_backward_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[-1])


def _max_pool2d_double_backward(ctx, grad_grad_in):
    # The backward is linear in grad_output: grad_in[idx[o]] += grad_out[o]. Its derivative routes
    # grad_grad_in back through the same indices: a gather. An index outside the plane (a window with
    # no in-bounds tap) contributes nothing, as in the forward scatter.
    (indices,) = ctx.saved_tensors
    plane = grad_grad_in.shape[-2] * grad_grad_in.shape[-1]
    flat_idx = indices.flatten(-2)
    valid = (flat_idx >= 0) & (flat_idx < plane)
    gathered = grad_grad_in.flatten(-2).gather(-1, flat_idx.clamp(0, plane - 1))
    grad_grad_out = torch.where(valid, gathered, 0).view(indices.shape)
    return grad_grad_out, None, None, None, None, None, None, None


torch.library.register_autograd(
    "fastconv::max_pool2d_with_indices_backward", _max_pool2d_double_backward,
    setup_context=_max_pool2d_backward_setup_context)


# ------------------------------------------------------------------------------------------------
# batch_norm (+ fused ReLU, or ReLU clamped at relu_max)
# ------------------------------------------------------------------------------------------------
def _stat_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _batch_norm_format(x: Tensor):
    return suggest_memory_format(x) if x.dim() in (4, 5) else torch.contiguous_format


def _check_batch_norm_input(x: Tensor, op: str) -> int:
    _check(x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16), op,
           f"expected input to be float32, float64, float16 or bfloat16, but got {x.dtype}")
    _check(x.dim() >= 2, op, f"expected input of shape (N, C, ...) with at least 2 dimensions, but got a "
           f"{x.dim()}-D tensor of shape {tuple(x.shape)}")
    return x.shape[1]


def _check_batch_norm_act(relu: bool, relu_max, op: str) -> None:   # common/batch_norm_args.h's checks
    if relu_max is None:
        return
    _check(relu, op, f"relu_max clamps the fused ReLU, so it needs relu=True, but got relu=False with "
           f"relu_max={relu_max}")
    _check(relu_max >= 0, op, f"expected relu_max >= 0 (the ReLU's lower bound), but got {relu_max}")


def batch_norm(x: Tensor, weight, bias, running_mean, running_var, training: bool, momentum: float,
               eps: float, relu: bool, relu_max: float | None = None):
    """(out, save_mean, save_invstd, batch_var), the running statistics updated in training; see
    csrc/ops.cpp."""
    return torch.ops.fastconv.batch_norm.default(x, weight, bias, running_mean, running_var, training,
                                                 momentum, eps, relu, relu_max)


def batch_norm_backward(grad_output, x, weight, bias, save_mean, save_invstd, training, relu, grad_affine,
                        relu_max=None):
    return torch.ops.fastconv.batch_norm_backward.default(
        grad_output, x, weight, bias, save_mean, save_invstd, training, relu, grad_affine, relu_max)


@torch.library.register_fake("fastconv::batch_norm")
def _batch_norm_fake(x, weight, bias, running_mean, running_var, training, momentum, eps, relu, relu_max=None):
    C = _check_batch_norm_input(x, "batch_norm")
    _check_batch_norm_act(relu, relu_max, "batch_norm")
    sd = _stat_dtype(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_batch_norm_format(x))
    stat = x.new_empty((C,), dtype=sd)
    return out, stat, stat.new_empty((C,)), stat.new_empty((C if training else 0,))


@torch.library.register_fake("fastconv::batch_norm_backward")
def _batch_norm_backward_fake(grad_output, x, weight, bias, save_mean, save_invstd, training, relu, grad_affine,
                              relu_max=None):
    C = _check_batch_norm_input(x, "batch_norm_backward")
    _check_batch_norm_act(relu, relu_max, "batch_norm_backward")
    affine_dtype = weight.dtype if weight is not None else _stat_dtype(x)
    n = C if grad_affine else 0
    gi = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_batch_norm_format(x))
    return gi, x.new_empty((n,), dtype=affine_dtype), x.new_empty((n,), dtype=affine_dtype)


def _batch_norm_backward_setup_context(ctx, inputs, output):
    grad_output, x, weight, bias, save_mean, save_invstd, training, relu, grad_affine, *rest = inputs
    ctx.save_for_backward(grad_output, x, weight, bias, save_mean, save_invstd)
    ctx.args = (training, relu, rest[0] if rest else None, grad_affine)


def _with_grad_of(value: Tensor, expr: Tensor) -> Tensor:
    """`value` (the statistic the op used, bit for bit), with the derivative of `expr` (the same
    statistic recomputed from the input)."""
    return value + (expr - expr.detach())


def _batch_norm_backward_math(go, x, w, b, save_mean, save_invstd, training, relu, relu_max):
    """batch_norm_backward's (grad_input, grad_weight, grad_bias) as differentiable elementwise torch
    math (glue for the double backward; the op's kernels compute the same values). In training the batch
    statistics are functions of x, as torch's double backward takes them; the activation's mask is
    piecewise constant (no derivative), judged on the output rounded to x's dtype with the kernels'
    scale and shift (rounded from double, common/batch_norm.h's bn_scale_shift). y itself may differ from
    the kernels' in its last bit (they may fuse the multiply-add), which moves the mask only for a value
    within a rounding of a bound."""
    cdt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    dims = [0, *range(2, x.dim())]
    view = [1, x.shape[1]] + [1] * (x.dim() - 2)
    xc, goc = x.to(cdt), go.to(cdt)
    mean, invstd = save_mean.to(cdt).view(view), save_invstd.to(cdt).view(view)
    wv = w.to(cdt).view(view) if w is not None else torch.ones((), dtype=cdt, device=x.device)
    bv = b.to(cdt).view(view) if b is not None else torch.zeros((), dtype=cdt, device=x.device)
    if training:
        m = xc.mean(dims, keepdim=True)
        var = (xc - m).square().mean(dims, keepdim=True)
        mean = _with_grad_of(mean, m)
        invstd = _with_grad_of(invstd, (var + (invstd.square().reciprocal() - var).detach()).rsqrt())
    g = goc
    if relu:
        with torch.no_grad():
            s64 = wv.double() * save_invstd.double().view(view)
            scale, shift = s64.to(cdt), (bv.double() - save_mean.double().view(view) * s64).to(cdt)
            y = (xc * scale + shift).to(x.dtype).to(cdt)
            stop = y <= 0
            if relu_max is not None:
                stop |= y >= torch.tensor(relu_max, dtype=x.dtype).to(cdt)
        g = goc.masked_fill(stop, 0)
    xm = xc - mean
    count = x.numel() // x.shape[1]
    sum_g, sum_gx = g.sum(dims, keepdim=True), (g * xm).sum(dims, keepdim=True)
    if training:
        gi = wv * invstd * (g - sum_g / count - xm * invstd.square() * sum_gx / count)
    else:
        gi = wv * invstd * g
    return gi, (sum_gx * invstd).flatten(), sum_g.flatten()


def _batch_norm_double_backward(ctx, gg_x, gg_w, gg_b):
    # The gradients of batch_norm_backward's outputs (gg_*) taken back to grad_output, x and weight by
    # torch's autograd over _batch_norm_backward_math. Under create_graph the math is built on the saved
    # tensors themselves, so third derivatives follow; bias enters only through the mask (derivative 0),
    # the statistics are not differentiable (as in the forward).
    go, x, w, b, save_mean, save_invstd = ctx.saved_tensors
    training, relu, relu_max, grad_affine = ctx.args
    wanted = [i for i, t in enumerate((go, x, w)) if ctx.needs_input_grad[i] and t is not None]
    pairs = [(k, gg) for k, gg in enumerate((gg_x, gg_w, gg_b)) if gg is not None and (k == 0 or grad_affine)]
    result = [None] * 10
    if not wanted or not pairs or x.numel() == 0:
        return tuple(result)
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        ins = [t if create else (t.detach().requires_grad_(i in wanted) if t is not None else None)
               for i, t in enumerate((go, x, w))]
        outs = _batch_norm_backward_math(ins[0], ins[1], ins[2], b, save_mean, save_invstd, training, relu, relu_max)
        pairs = [(k, gg) for k, gg in pairs if outs[k].requires_grad]   # e.g. grad_bias without grad_output's
        if not pairs:
            return tuple(result)
        grads = torch.autograd.grad([outs[k] for k, _ in pairs], [ins[i] for i in wanted],
                                    [gg.to(outs[k].dtype) for k, gg in pairs], allow_unused=True,
                                    create_graph=create)
    for i, g in zip(wanted, grads):
        ref = (go, x, w)[i]
        result[i] = torch.zeros_like(ref) if g is None else g.to(ref.dtype)
    if relu and b is not None and ctx.needs_input_grad[3]:
        result[3] = torch.zeros_like(b)   # as torch's: bias reaches the gradient through the mask alone
    return tuple(result)


torch.library.register_autograd(
    "fastconv::batch_norm_backward", _batch_norm_double_backward, setup_context=_batch_norm_backward_setup_context)


# ------------------------------------------------------------------------------------------------
# gemm: out = alpha * op(a) @ op(b) + beta * c
# ------------------------------------------------------------------------------------------------
def gemm(a: Tensor, b: Tensor, c: Tensor | None = None, trans_a: bool = False, trans_b: bool = False,
         alpha: float = 1.0, beta: float = 0.0, out_dtype: torch.dtype | None = None) -> Tensor:
    return torch.ops.fastconv.gemm.default(a, b, c, trans_a, trans_b, alpha, beta, out_dtype)


_HALF = (torch.float16, torch.bfloat16)


@torch.library.register_fake("fastconv::gemm")
def _gemm_fake(a, b, c, trans_a, trans_b, alpha, beta, out_dtype=None):
    _check(a.dim() == 2 and b.dim() == 2, "gemm", f"expected 2-D a and b, but got shapes {tuple(a.shape)} and "
           f"{tuple(b.shape)}")
    _check(a.dtype in (torch.float32, torch.float64, *_HALF), "gemm",
           f"expected a to be float32, float64, float16 or bfloat16, but got {a.dtype}")
    _check(b.dtype == a.dtype, "gemm", f"expected b of dtype {a.dtype}, but got {b.dtype}")
    out = a.dtype if out_dtype is None else out_dtype
    _check(out == a.dtype or (a.dtype in _HALF and out in (torch.float32, *_HALF)), "gemm",
           f"expected out_dtype {a.dtype} for {a.dtype} inputs, but got {out}")
    m, k = (a.shape[1], a.shape[0]) if trans_a else (a.shape[0], a.shape[1])
    kb, n = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
    _check(k == kb, "gemm", f"inner dimensions differ: op(a) is {m}x{k} and op(b) is {kb}x{n}")
    return a.new_empty((m, n), dtype=out)




# ------------------------------------------------------------------------------------------------
# conv2d (symmetric padding; fastconv.functional.conv2d handles 'same'/'valid' and asymmetric padding)
# ------------------------------------------------------------------------------------------------
def conv2d(x: Tensor, weight: Tensor, bias, stride, padding, dilation, groups: int, algorithm: str) -> Tensor:
    return torch.ops.fastconv.conv2d.default(x, weight, bias, stride, padding, dilation, groups, algorithm)


def _conv2d_format(x: Tensor, weight: Tensor):
    if x.dim() == 4 and torch.channels_last in (suggest_memory_format(x), suggest_memory_format(weight)):
        return torch.channels_last
    return torch.contiguous_format


CONV2D_ALGORITHMS = ("auto", "im2col", "direct", "winograd", "winograd_2x2", "winograd_4x4")


def _check_conv2d_algorithm(weight: Tensor, stride, dilation, groups: int, algorithm: str, op: str) -> None:
    """The kernels' algorithm checks (csrc/common/conv2d_args.h), so traced code fails as eager does."""
    _check(algorithm in CONV2D_ALGORITHMS, op, f"unknown or unavailable algorithm '{algorithm}' (this build has: "
           f"{', '.join(CONV2D_ALGORITHMS)})")
    if algorithm.startswith("winograd"):
        ok = (weight.dim() == 4 and tuple(weight.shape[2:]) == (3, 3) and list(stride) == [1, 1]
              and list(dilation) == [1, 1] and groups == 1)
        _check(ok, op, f"algorithm '{algorithm}' applies to 3x3 kernels with stride 1, dilation 1 and groups=1, "
               f"but got weight {tuple(weight.shape)}, stride={list(stride)}, dilation={list(dilation)}, "
               f"groups={groups} (use 'auto', 'im2col' or 'direct')")


@torch.library.register_fake("fastconv::conv2d")
def _conv2d_fake(x, weight, bias, stride, padding, dilation, groups, algorithm):
    _check_conv2d_algorithm(weight, stride, dilation, groups, algorithm, "conv2d")
    _check(x.dim() in (3, 4), "conv2d", f"expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, but got a {x.dim()}-D "
           f"tensor of shape {tuple(x.shape)}")
    _check(weight.dim() == 4, "conv2d", f"expected a 4-D weight, but got shape {tuple(weight.shape)}")
    oh = (x.shape[-2] + 2 * padding[0] - dilation[0] * (weight.shape[2] - 1) - 1) // stride[0] + 1
    ow = (x.shape[-1] + 2 * padding[1] - dilation[1] * (weight.shape[3] - 1) - 1) // stride[1] + 1
    _check(oh >= 1 and ow >= 1, "conv2d", f"output size is too small: {oh}x{ow}")
    shape = (*x.shape[:-3], weight.shape[0] if x.shape[-3] else 0, oh, ow)   # no input channels: none out (torch's)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_conv2d_format(x, weight))


@torch.library.register_fake("fastconv::conv2d_backward")
def _conv2d_backward_fake(grad_output, x, weight, stride, padding, dilation, groups, algorithm, output_mask):
    _check_conv2d_algorithm(weight, stride, dilation, groups, algorithm, "conv2d_backward")
    empty = x.new_empty((0,))
    fmt = _conv2d_format(x, weight)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    dw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device, memory_format=fmt)
    both = weight.shape[1] == 1 or weight.shape[2] * weight.shape[3] == 1   # contiguous is channels-last too
    # torch's strides, as the CPU kernel's (conv2d.cpp: torch_float64_weight_strides)
    if (fmt == torch.channels_last and both and x.dtype == torch.float64 and list(dilation) == [1, 1]
            and x.device.type == "cpu"):
        dw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    db = x.new_empty((weight.shape[0],))
    return (dx if output_mask[0] else empty, dw if output_mask[1] else empty.clone(),
            db if output_mask[2] else empty.clone())


def _conv2d_backward_setup_context(ctx, inputs, output):
    grad_output, x, weight, stride, padding, dilation, groups, algorithm, output_mask = inputs
    ctx.save_for_backward(grad_output, x, weight)
    ctx.args = (stride, padding, dilation, groups, algorithm)
    ctx.mask = [bool(m) for m in output_mask]


def _conv2d_double_backward(ctx, gg_x, gg_w, gg_b):
    # conv2d_backward is linear in grad_output (dx = conv2d's input-gradient of w, dw = its weight-
    # gradient against x, db = sum of grad_output) and in each of x and w, so its gradients are
    # convolutions again (gg_*: the gradients reaching dx, dw and db):
    #   d grad_output = conv2d(gg_x, w) + conv2d(x, gg_w) + gg_b,
    #   d x = the input-gradient of conv2d(., gg_w) at grad_output,
    #   d w = the weight-gradient of conv2d(gg_x, .) at grad_output.
    # Written with fastconv's own ops, whose autograd makes third derivatives work too.
    grad_output, x, weight = ctx.saved_tensors
    use_x, use_w, use_b = (ctx.mask[0] and gg_x is not None, ctx.mask[1] and gg_w is not None,
                           ctx.mask[2] and gg_b is not None)
    need_go, need_x, need_w = (bool(n) for n in ctx.needs_input_grad[:3])
    d_go = d_x = d_w = None
    if need_go and (use_x or use_w or use_b):
        d_go = grad_output.new_zeros(()).expand(grad_output.shape)
        if use_x:
            d_go = d_go + conv2d(gg_x, weight, None, *ctx.args)
        if use_w:
            d_go = d_go + conv2d(x, gg_w, None, *ctx.args)
        if use_b:
            d_go = d_go + gg_b.view(-1, 1, 1)
    if need_x and use_w:
        d_x = torch.ops.fastconv.conv2d_backward.default(grad_output, x, gg_w, *ctx.args, [True, False, False])[0]
    if need_w and use_x:
        d_w = torch.ops.fastconv.conv2d_backward.default(grad_output, gg_x, weight, *ctx.args, [False, True, False])[1]
    return d_go, d_x, d_w, None, None, None, None, None, None


torch.library.register_autograd("fastconv::conv2d_backward", _conv2d_double_backward,
                                setup_context=_conv2d_backward_setup_context)


# ------------------------------------------------------------------------------------------------
# RNN layers: one layer, one direction, over a packed sequence (see csrc/ops.cpp)
# ------------------------------------------------------------------------------------------------
def lstm_layer(x: Tensor, batch_sizes: Tensor, hx: Tensor, cx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih, b_hh,
               w_hr, reverse: bool):
    """(output, hy, cy, workspace) of one LSTM layer in one direction; see csrc/ops.cpp."""
    return torch.ops.fastconv.lstm_layer.default(x, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)


def gru_layer(x: Tensor, batch_sizes: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih, b_hh, reverse: bool):
    """(output, hy, workspace) of one GRU layer in one direction; see csrc/ops.cpp."""
    return torch.ops.fastconv.gru_layer.default(x, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse)


def _rnn_layer_shapes(op: str, gates: int, x: Tensor, batch_sizes: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
                      w_hr) -> tuple[int, int]:
    """The checks of csrc/common/rnn_args.h that shapes alone decide (batch_sizes' values are data)."""
    _check(x.dtype in (torch.float32, torch.float64), op, f"expected input to be float32 or float64, but got {x.dtype}")
    _check(x.dim() == 2, op, f"expected a 2-D input (N x input_size), but got shape {tuple(x.shape)}")
    _check(batch_sizes.dim() == 1 and batch_sizes.dtype == torch.int64, op,
           "expected batch_sizes to be a 1-D int64 tensor on the CPU")
    _check(w_ih.dim() == 2 and w_ih.shape[0] % gates == 0 and w_ih.shape[0] > 0 and w_ih.shape[1] == x.shape[1], op,
           f"expected weight_ih of shape ({gates} * hidden_size, {x.shape[1]}), but got {tuple(w_ih.shape)}")
    H = w_ih.shape[0] // gates
    P = w_hr.shape[0] if w_hr is not None else H
    _check(tuple(w_hh.shape) == (gates * H, P), op, f"expected weight_hh of shape ({gates * H}, {P}), but got "
           f"{tuple(w_hh.shape)}")
    _check(hx.dim() == 2 and hx.shape[1] == P, op, f"expected hx of shape (batch, {P}), but got {tuple(hx.shape)}")
    return H, P


@torch.library.register_fake("fastconv::lstm_layer")
def _lstm_layer_fake(x, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    H, P = _rnn_layer_shapes("lstm_layer", 4, x, batch_sizes, hx, w_ih, w_hh, w_hr)
    n = x.shape[0]
    return (x.new_empty((n, P)), hx.new_empty(hx.shape), cx.new_empty(cx.shape),
            x.new_empty((n, (6 if w_hr is not None else 5) * H)))


@torch.library.register_fake("fastconv::lstm_layer_backward")
def _lstm_layer_backward_fake(grad_output, grad_hy, grad_cy, x, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                              output, workspace, reverse, output_mask):
    H, P = _rnn_layer_shapes("lstm_layer_backward", 4, x, batch_sizes, hx, w_ih, w_hh, w_hr)

    def maybe(on: bool, shape):
        return x.new_empty(shape if on else (0,))

    return (maybe(output_mask[0], x.shape), maybe(output_mask[1], hx.shape), maybe(output_mask[1], cx.shape),
            maybe(output_mask[2], w_ih.shape), maybe(output_mask[2], w_hh.shape), maybe(output_mask[2], (4 * H,)),
            maybe(output_mask[2] and w_hr is not None, (P, H)))


@torch.library.register_fake("fastconv::gru_layer")
def _gru_layer_fake(x, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse):
    H, _ = _rnn_layer_shapes("gru_layer", 3, x, batch_sizes, hx, w_ih, w_hh, None)
    return x.new_empty((x.shape[0], H)), hx.new_empty(hx.shape), x.new_empty((x.shape[0], 4 * H))


@torch.library.register_fake("fastconv::gru_layer_backward")
def _gru_layer_backward_fake(grad_output, grad_hy, x, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, output, workspace,
                             reverse, output_mask):
    H, _ = _rnn_layer_shapes("gru_layer_backward", 3, x, batch_sizes, hx, w_ih, w_hh, None)

    def maybe(on: bool, shape):
        return x.new_empty(shape if on else (0,))

    return (maybe(output_mask[0], x.shape), maybe(output_mask[1], hx.shape), maybe(output_mask[2], w_ih.shape),
            maybe(output_mask[2], w_hh.shape), maybe(output_mask[2], (3 * H,)), maybe(output_mask[2], (3 * H,)))


# The layers' own autograd is C++ (csrc/autograd.cpp). Their backward ops' autograd (double backward:
# gradient penalties, Hessian-vector products) is here: the gradients of the backward op's outputs,
# taken by torch's autograd through the recurrence rewritten in differentiable ops — fastconv's gemm
# (its own double backward) for the products, torch elementwise glue for the gates. The recurrence is
# computed again from the inputs, weights and biases, so it covers every dependence, the saved gates'
# included; output and workspace are taken as what the forward made of those (they get no gradient).
# Eager only: the steps' sizes are data (batch_sizes), which a traced graph cannot loop over.
def _rnn_steps(x: Tensor, batch_sizes: Tensor, h0: list[Tensor], step, reverse: bool):
    """Run ``step(rows of x, states cut to the step's batch) -> (output rows, new states)`` over a packed
    sequence as the layer ops do: step t holds batch_sizes[t] rows, a row's state carries over from the
    previous step it was in (hx where it starts). Returns (output, final states)."""
    sizes = batch_sizes.tolist()
    starts = [0]
    for n in sizes:
        starts.append(starts[-1] + n)
    outs, states = [None] * len(sizes), list(h0)
    for t in (reversed(range(len(sizes))) if reverse else range(len(sizes))):
        n = sizes[t]
        out, new = step(x[starts[t]:starts[t + 1]], [s[:n] for s in states])
        outs[t] = out
        states = [torch.cat([a, s[n:]]) for a, s in zip(new, states)]
    out = torch.cat(outs) if outs else x.new_empty((0, h0[0].shape[1]))
    return out, states


def _lstm_layer_math(x, batch_sizes, hx, cx, w_ih, w_hh, gate_bias: Tensor, w_hr, reverse):
    """lstm_layer's (output, hy, cy) in differentiable ops (torch's gate order i, f, g, o); gate_bias is
    what the biases add to the gates' pre-activations."""
    xw = gemm(x, w_ih, trans_b=True) + gate_bias

    def step(xw_t, hc):
        h, c = hc
        i, f, g, o = (xw_t + gemm(h, w_hh, trans_b=True)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        h = gemm(h, w_hr, trans_b=True) if w_hr is not None else h
        return h, (h, c)

    out, (hy, cy) = _rnn_steps(xw, batch_sizes, [hx, cx], step, reverse)
    return out, hy, cy


def _gru_layer_math(x, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse):
    """gru_layer's (output, hy) in differentiable ops (gate order r, z, n; n = tanh(x_n + r * h_n))."""
    xw = gemm(x, w_ih, trans_b=True) + b_ih

    def step(xw_t, hs):
        (h,) = hs
        x_r, x_z, x_n = xw_t.chunk(3, 1)
        h_r, h_z, h_n = (gemm(h, w_hh, trans_b=True) + b_hh).chunk(3, 1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        h = torch.lerp(torch.tanh(x_n + r * h_n), h, z)
        return h, (h,)

    out, (hy,) = _rnn_steps(xw, batch_sizes, [hx], step, reverse)
    return out, hy


def _second_order(ctx, tensors: list, positions: list, first_order, ggs: tuple) -> list:
    """The double backward of an RNN backward op. ``tensors``: its tensor inputs (None where absent) at
    ``positions`` in its schema; ``first_order(vars) -> [(output index, first-order gradient)]`` recomputes its outputs
    from per-slot variables of those tensors (a tensor passed in two places, hx and cx the same zeros,
    keeps each place's gradient); ``ggs``: the gradients of its outputs. Returns the gradients of the
    tensor inputs (None where not needed)."""
    wanted = [i for i, t in enumerate(tensors) if t is not None and ctx.needs_input_grad[positions[i]]]
    result = [None] * len(tensors)
    if not wanted or all(gg is None for gg in ggs):
        return result
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        vs = [None if t is None else t.view_as(t) if create and i in wanted else
              t.detach().requires_grad_(t.is_floating_point()) for i, t in enumerate(tensors)]
        pairs = [(g, ggs[k]) for k, g in first_order(vs)
                 if g is not None and g.requires_grad and ggs[k] is not None and ggs[k].numel() > 0]
        if pairs:
            grads = torch.autograd.grad([g for g, _ in pairs], [vs[i] for i in wanted], [gg for _, gg in pairs],
                                        allow_unused=True, create_graph=create)
            for i, g in zip(wanted, grads):
                result[i] = torch.zeros_like(tensors[i]) if g is None else g
    for i in wanted:
        if result[i] is None:
            result[i] = torch.zeros_like(tensors[i])
    return result


def _grads_of(outs, grad_outputs, targets):
    """First-order gradients of ``outs`` with respect to ``targets`` (None entries stay None), as a
    differentiable graph."""
    pairs = [(o, g) for o, g in zip(outs, grad_outputs) if o.requires_grad]
    present = [t for t in targets if t is not None]
    if not pairs or not present:
        return [None] * len(targets)
    got = iter(torch.autograd.grad([o for o, _ in pairs], present, [g for _, g in pairs], create_graph=True,
                                   allow_unused=True))
    return [None if t is None else next(got) for t in targets]


def _lstm_layer_backward_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4], *inputs[5:12])   # all but batch_sizes, output, workspace
    ctx.batch_sizes, ctx.reverse, ctx.mask = inputs[4], inputs[14], inputs[15]


def _lstm_layer_double_backward(ctx, *ggs):
    g_out, g_hy, g_cy, x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr = ctx.saved_tensors
    H = w_ih.shape[0] // 4

    def first_order(v):
        g_out, g_hy, g_cy, x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr = v
        gate_bias = x.new_zeros(4 * H).requires_grad_()   # grad_bias is the gradient of what the biases add
        total = gate_bias + sum(b for b in (b_ih, b_hh) if b is not None)
        outs = _lstm_layer_math(x, ctx.batch_sizes, hx, cx, w_ih, w_hh, total, w_hr, ctx.reverse)
        firsts = _grads_of(outs, (g_out, g_hy, g_cy), [x, hx, cx, w_ih, w_hh, gate_bias, w_hr])
        return [(k, g) for k, g in enumerate(firsts)
                if ctx.mask[0 if k == 0 else 1 if k in (1, 2) else 2]]

    r = _second_order(ctx, [g_out, g_hy, g_cy, x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr],
                      [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11], first_order, ggs)
    return (*r[:4], None, *r[4:], None, None, None, None)


def _gru_layer_backward_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3], *inputs[4:9])   # all but batch_sizes, output, workspace
    ctx.batch_sizes, ctx.reverse, ctx.mask = inputs[3], inputs[11], inputs[12]


def _gru_layer_double_backward(ctx, *ggs):
    g_out, g_hy, x, hx, w_ih, w_hh, b_ih, b_hh = ctx.saved_tensors
    H = w_ih.shape[0] // 3

    def first_order(v):
        g_out, g_hy, x, hx, w_ih, w_hh, b_ih, b_hh = v
        # an absent bias is a zero one, whose gradient the op returns all the same
        b_ih, b_hh = (x.new_zeros(3 * H).requires_grad_() if b is None else b for b in (b_ih, b_hh))
        outs = _gru_layer_math(x, ctx.batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, ctx.reverse)
        firsts = _grads_of(outs, (g_out, g_hy), [x, hx, w_ih, w_hh, b_ih, b_hh])
        return [(k, g) for k, g in enumerate(firsts) if ctx.mask[min(k, 2)]]

    r = _second_order(ctx, [g_out, g_hy, x, hx, w_ih, w_hh, b_ih, b_hh], [0, 1, 2, 4, 5, 6, 7, 8], first_order, ggs)
    return (*r[:3], None, *r[3:], None, None, None, None)


torch.library.register_autograd("fastconv::lstm_layer_backward", _lstm_layer_double_backward,
                                setup_context=_lstm_layer_backward_setup)
torch.library.register_autograd("fastconv::gru_layer_backward", _gru_layer_double_backward,
                                setup_context=_gru_layer_backward_setup)
