// Autograd for fastconv's ops in C++: one torch::autograd::Function per op, registered at the
// Autograd dispatch key (torchvision's pattern for its ops). A call that needs a gradient then records
// its graph node without leaving C++; through torch.library.register_autograd it went C++ -> Python ->
// C++ on every call, which cost a small convolution (1x4x4x4, 3x3) about 22 us of its 38.
//
// Each forward calls its op again below the Autograd key (the backend kernel, or the fake kernel
// under torch.compile's tracing). Each backward calls the op's backward op through the dispatcher: with
// create_graph (grad mode on inside the backward) through the Autograd key, so that the call is
// recorded too -- the backward ops' own autograd (double backward) stays in fastconv/ops.py, as do the
// fake kernels -- and otherwise below it (BackwardOpCall), where that Python autograd kernel would only
// have redispatched: it cost every conv2d, max-pool and batch-norm backward about 30 us. (gemm's
// backward is gemm itself, whose autograd is the C++ one here; below the key it skips that too.)
// Outputs that are bookkeeping (max-pool's indices, batch norm's saved statistics) are marked
// non-differentiable: no gradient flows through them, loudly.
//
// The LSTM and GRU layers here too since 2026-12-06 #15 (their Python autograd made a tiny LSTMCell's
// call with grad 1.56x torch's): their backward ops take the biases, which the double backward in
// fastconv/ops.py needs (the gradients depend on them through the saved gates).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

#include "common/checks.h"

namespace fastconv {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <class Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

std::vector<int64_t> ints(const c10::IValue& v) { return v.toIntVector(); }

// The edge (needs_input_grad index) of each tensor argument: a Function's optional tensor that is
// absent gets no edge, so the edges of the arguments after it move down by one.
struct Edges {
  std::vector<int> index;
  template <class... Present>
  explicit Edges(Present... present) {
    int next = 0;
    for (bool p : {present...}) index.push_back(p ? next++ : -1);
  }
};

bool needs(AutogradContext* ctx, int64_t edge) { return edge >= 0 && ctx->needs_input_grad(edge); }

// Where a backward calls its backward op: through the Autograd key when grad mode is on (create_graph,
// a double backward to record), else below it, straight to the backend (or fake) kernel.
class BackwardOpCall {
 public:
  BackwardOpCall() {
    if (!at::GradMode::is_enabled()) below_.emplace();
  }

 private:
  std::optional<at::AutoDispatchBelowADInplaceOrView> below_;
};

// ------------------------------------------------------------------------------------------------
// conv2d: grad = conv2d_backward(grad_output, x, w, ..., mask), mask from the inputs that need one.
// ------------------------------------------------------------------------------------------------
using Conv2dSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::IntArrayRef,
                             at::IntArrayRef, at::IntArrayRef, int64_t, c10::string_view);
using Conv2dBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
    c10::string_view, std::array<bool, 3>);

struct Conv2dFunction : torch::autograd::Function<Conv2dFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups, c10::string_view algorithm) {
    static const auto op = find_op<Conv2dSig>("fastconv::conv2d");
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      out = op.call(input, weight, bias, stride, padding, dilation, groups, algorithm);
    }
    ctx->save_for_backward({input, weight});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["algorithm"] = std::string(algorithm);
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<Conv2dBackwardSig>("fastconv::conv2d_backward");
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const Edges e(true, true, has_bias);
    const std::array<bool, 3> mask{needs(ctx, e.index[0]), needs(ctx, e.index[1]), needs(ctx, e.index[2])};
    const std::string algorithm = ctx->saved_data["algorithm"].toStringRef();
    const BackwardOpCall where;
    auto [dx, dw, db] = op.call(grads[0], saved[0], saved[1], ints(ctx->saved_data["stride"]),
                                ints(ctx->saved_data["padding"]), ints(ctx->saved_data["dilation"]),
                                ctx->saved_data["groups"].toInt(), algorithm, mask);
    return {mask[0] ? dx : at::Tensor(), mask[1] ? dw : at::Tensor(), mask[2] ? db : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor conv2d_autograd(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           c10::string_view algorithm) {
  return Conv2dFunction::apply(input, weight, bias, stride, padding, dilation, groups, algorithm);
}

// ------------------------------------------------------------------------------------------------
// max_pool2d_with_indices: grad_input scatters grad_output to the saved argmax indices.
// ------------------------------------------------------------------------------------------------
using MaxPoolSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                                      at::IntArrayRef, at::IntArrayRef, bool);
using MaxPoolBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                      at::IntArrayRef, at::IntArrayRef, bool, const at::Tensor&);

struct MaxPool2dFunction : torch::autograd::Function<MaxPool2dFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& self, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               bool ceil_mode) {
    static const auto op = find_op<MaxPoolSig>("fastconv::max_pool2d_with_indices");
    at::Tensor out, indices;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(out, indices) = op.call(self, kernel_size, stride, padding, dilation, ceil_mode);
    }
    ctx->mark_non_differentiable({indices});
    ctx->set_materialize_grads(false);   // no zeros made for the indices' (absent) gradient
    ctx->save_for_backward({self, indices});
    ctx->saved_data["kernel_size"] = kernel_size.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["ceil_mode"] = ceil_mode;
    return {out, indices};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<MaxPoolBackwardSig>("fastconv::max_pool2d_with_indices_backward");
    if (!grads[0].defined()) return variable_list(6);
    const auto saved = ctx->get_saved_variables();
    const BackwardOpCall where;
    at::Tensor grad_in = op.call(grads[0], saved[0], ints(ctx->saved_data["kernel_size"]),
                                 ints(ctx->saved_data["stride"]), ints(ctx->saved_data["padding"]),
                                 ints(ctx->saved_data["dilation"]), ctx->saved_data["ceil_mode"].toBool(), saved[1]);
    return {grad_in, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> max_pool2d_autograd(const at::Tensor& self, at::IntArrayRef kernel_size,
                                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                                       at::IntArrayRef dilation, bool ceil_mode) {
  auto outs = MaxPool2dFunction::apply(self, kernel_size, stride, padding, dilation, ceil_mode);
  return {outs[0], outs[1]};
}

// ------------------------------------------------------------------------------------------------
// batch_norm (+ fused ReLU, or ReLU clamped at relu_max): the gradients of input and of the affine
// parameters from the statistics the forward used (batch or running); the saved statistics and
// batch_var are not differentiable.
// ------------------------------------------------------------------------------------------------
using BatchNormSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool, double, double, bool,
    std::optional<double>);
using BatchNormBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const at::Tensor&, const at::Tensor&, bool, bool, bool, std::optional<double>);

std::optional<at::Tensor> present(const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; }

struct BatchNormFunction : torch::autograd::Function<BatchNormFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
                               const std::optional<at::Tensor>& running_var, bool training, double momentum,
                               double eps, bool relu, std::optional<double> relu_max) {
    static const auto op = find_op<BatchNormSig>("fastconv::batch_norm");
    at::Tensor out, save_mean, save_invstd, batch_var;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(out, save_mean, save_invstd, batch_var) =
          op.call(input, weight, bias, running_mean, running_var, training, momentum, eps, relu, relu_max);
    }
    ctx->mark_non_differentiable({save_mean, save_invstd, batch_var});
    ctx->set_materialize_grads(false);   // no zeros made for the statistics' (absent) gradients
    const bool has_weight = weight.has_value() && weight->defined(), has_bias = bias.has_value() && bias->defined();
    ctx->save_for_backward({input, has_weight ? *weight : at::Tensor(), has_bias ? *bias : at::Tensor(), save_mean,
                            save_invstd});
    ctx->saved_data["training"] = training;
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["relu_max"] = relu_max.has_value() ? c10::IValue(*relu_max) : c10::IValue();
    ctx->saved_data["has_weight"] = has_weight;
    ctx->saved_data["has_bias"] = has_bias;
    return {out, save_mean, save_invstd, batch_var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<BatchNormBackwardSig>("fastconv::batch_norm_backward");
    if (!grads[0].defined()) return variable_list(10);
    const auto saved = ctx->get_saved_variables();
    const bool has_weight = ctx->saved_data["has_weight"].toBool(), has_bias = ctx->saved_data["has_bias"].toBool();
    const Edges e(true, has_weight, has_bias);   // the running statistics' edges come after these
    const bool grad_affine = needs(ctx, e.index[1]) || needs(ctx, e.index[2]);
    const BackwardOpCall where;
    auto [gi, gw, gb] = op.call(grads[0], saved[0], present(saved[1]), present(saved[2]), saved[3], saved[4],
                                ctx->saved_data["training"].toBool(), ctx->saved_data["relu"].toBool(), grad_affine,
                                ctx->saved_data["relu_max"].toOptional<double>());
    return {needs(ctx, e.index[0]) ? gi : at::Tensor(), has_weight && grad_affine ? gw : at::Tensor(),
            has_bias && grad_affine ? gb : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_autograd(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, bool training,
    double momentum, double eps, bool relu, std::optional<double> relu_max) {
  // As aten::native_batch_norm's autograd: in grad mode a running statistic requiring grad is refused
  // (the op writes it in place and has no gradient for it), in training and inference alike.
  const auto refuse_grad = [](const std::optional<at::Tensor>& t, const char* name) {
    FC_CHECK(!(t.has_value() && t->defined() && t->requires_grad()), "batch_norm",
             "the running statistics are not differentiable: expected ", name, " not to require grad, but it does");
  };
  if (at::GradMode::is_enabled()) {
    refuse_grad(running_mean, "running_mean");
    refuse_grad(running_var, "running_var");
  }
  auto outs =
      BatchNormFunction::apply(input, weight, bias, running_mean, running_var, training, momentum, eps, relu, relu_max);
  return {outs[0], outs[1], outs[2], outs[3]};
}

// ------------------------------------------------------------------------------------------------
// gemm: out = alpha * op(A) @ op(B) + beta * c. d op(A) = alpha * grad @ op(B)^T and d op(B) =
// alpha * op(A)^T @ grad; a transposed operand receives the transpose, again one gemm with the flags
// swapped; dc = beta * grad summed to c's shape (c broadcasts). Half-precision inputs with a float32
// output: the gradients are computed in float32 (the other operand widened) and returned in the
// inputs' dtype.
// ------------------------------------------------------------------------------------------------
using GemmSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, bool, bool, double,
                           double, std::optional<at::ScalarType>);

struct GemmFunction : torch::autograd::Function<GemmFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b,
                            const std::optional<at::Tensor>& c, bool trans_a, bool trans_b, double alpha, double beta,
                            std::optional<at::ScalarType> out_dtype) {
    static const auto op = find_op<GemmSig>("fastconv::gemm");
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      out = op.call(a, b, c, trans_a, trans_b, alpha, beta, out_dtype);
    }
    ctx->save_for_backward({a, b});
    ctx->saved_data["trans_a"] = trans_a;
    ctx->saved_data["trans_b"] = trans_b;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["beta"] = beta;
    const bool has_c = c.has_value() && c->defined();
    ctx->saved_data["has_c"] = has_c;
    if (has_c) ctx->saved_data["c_shape"] = c->sizes().vec();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<GemmSig>("fastconv::gemm");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad = grads[0];
    const bool ta = ctx->saved_data["trans_a"].toBool(), tb = ctx->saved_data["trans_b"].toBool();
    const double alpha = ctx->saved_data["alpha"].toDouble(), beta = ctx->saved_data["beta"].toDouble();
    const bool has_c = ctx->saved_data["has_c"].toBool();
    const at::ScalarType in_dtype = saved[0].scalar_type();
    const at::Tensor a = grad.scalar_type() != in_dtype ? saved[0].to(grad.scalar_type()) : saved[0];
    const at::Tensor b = grad.scalar_type() != in_dtype ? saved[1].to(grad.scalar_type()) : saved[1];
    const std::nullopt_t none = std::nullopt;
    at::Tensor ga, gb, gc;
    const BackwardOpCall where;
    if (ctx->needs_input_grad(0)) {
      ga = ta ? op.call(b, grad, none, tb, true, alpha, 0.0, none) : op.call(grad, b, none, false, !tb, alpha, 0.0, none);
      ga = ga.to(in_dtype);
    }
    if (ctx->needs_input_grad(1)) {
      gb = tb ? op.call(grad, a, none, true, ta, alpha, 0.0, none) : op.call(a, grad, none, !ta, false, alpha, 0.0, none);
      gb = gb.to(in_dtype);
    }
    if (has_c && ctx->needs_input_grad(2)) gc = (grad * beta).sum_to_size(ints(ctx->saved_data["c_shape"]));
    return {ga, gb, gc, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor gemm_autograd(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c, bool trans_a,
                         bool trans_b, double alpha, double beta, std::optional<at::ScalarType> out_dtype) {
  return GemmFunction::apply(a, b, c, trans_a, trans_b, alpha, beta, out_dtype);
}

// ------------------------------------------------------------------------------------------------
// RNN layers: (output, hy[, cy], workspace) of one layer and direction; the workspace (what the
// backward needs) is not differentiable. The backward op's output_mask from the inputs that need one:
// (input, the initial states, the weights and biases together).
// ------------------------------------------------------------------------------------------------
using OptTensor = std::optional<at::Tensor>;
using LstmSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const OptTensor&, const OptTensor&, const OptTensor&, bool);
using LstmBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
    const at::Tensor&, const at::Tensor&, bool, std::array<bool, 3>);
using GruSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                             const at::Tensor&, const at::Tensor&, const OptTensor&,
                                                             const OptTensor&, bool);
using GruBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const OptTensor&, const OptTensor&, const at::Tensor&, const at::Tensor&, bool,
    std::array<bool, 3>);

bool defined(const OptTensor& t) { return t.has_value() && t->defined(); }
at::Tensor or_empty(const OptTensor& t) { return defined(t) ? *t : at::Tensor(); }
at::Tensor or_zeros(const at::Tensor& grad, const at::Tensor& like) {
  return grad.defined() ? grad : at::zeros_like(like);
}
at::Tensor if_on(bool on, const at::Tensor& t) { return on ? t : at::Tensor(); }

struct LstmLayerFunction : torch::autograd::Function<LstmLayerFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& batch_sizes,
                               const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
                               const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                               const OptTensor& w_hr, bool reverse) {
    static const auto op = find_op<LstmSig>("fastconv::lstm_layer");
    at::Tensor out, hy, cy, ws;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(out, hy, cy, ws) = op.call(x, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse);
    }
    ctx->mark_non_differentiable({ws});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, batch_sizes, hx, cx, w_ih, w_hh, or_empty(b_ih), or_empty(b_hh), or_empty(w_hr), out,
                            ws});
    ctx->saved_data["reverse"] = reverse;
    return {out, hy, cy, ws};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<LstmBackwardSig>("fastconv::lstm_layer_backward");
    const auto v = ctx->get_saved_variables();   // x, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, out, ws
    const Edges e(true, true, true, true, true, true, v[6].defined(), v[7].defined(), v[8].defined());
    const std::array<bool, 3> mask{needs(ctx, e.index[0]), needs(ctx, e.index[2]) || needs(ctx, e.index[3]),
                                   needs(ctx, e.index[4]) || needs(ctx, e.index[5]) || needs(ctx, e.index[6]) ||
                                       needs(ctx, e.index[7]) || needs(ctx, e.index[8])};
    if (!grads[0].defined() && !grads[1].defined() && !grads[2].defined()) return variable_list(10);
    const BackwardOpCall where;
    auto [gx, ghx, gcx, gw_ih, gw_hh, gb, gw_hr] =
        op.call(or_zeros(grads[0], v[9]), or_zeros(grads[1], v[2]), or_zeros(grads[2], v[3]), v[0], v[1], v[2], v[3],
                v[4], v[5], present(v[6]), present(v[7]), present(v[8]), v[9], v[10],
                ctx->saved_data["reverse"].toBool(), mask);
    return {if_on(mask[0], gx), at::Tensor(), if_on(mask[1], ghx), if_on(mask[1], gcx), if_on(mask[2], gw_ih),
            if_on(mask[2], gw_hh), if_on(mask[2] && v[6].defined(), gb), if_on(mask[2] && v[7].defined(), gb),
            if_on(mask[2] && v[8].defined(), gw_hr), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_autograd(
    const at::Tensor& x, const at::Tensor& batch_sizes, const at::Tensor& hx, const at::Tensor& cx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
    bool reverse) {
  auto outs = LstmLayerFunction::apply(x, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse);
  return {outs[0], outs[1], outs[2], outs[3]};
}

struct GruLayerFunction : torch::autograd::Function<GruLayerFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& batch_sizes,
                               const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                               const OptTensor& b_ih, const OptTensor& b_hh, bool reverse) {
    static const auto op = find_op<GruSig>("fastconv::gru_layer");
    at::Tensor out, hy, ws;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(out, hy, ws) = op.call(x, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse);
    }
    ctx->mark_non_differentiable({ws});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, batch_sizes, hx, w_ih, w_hh, or_empty(b_ih), or_empty(b_hh), out, ws});
    ctx->saved_data["reverse"] = reverse;
    return {out, hy, ws};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<GruBackwardSig>("fastconv::gru_layer_backward");
    const auto v = ctx->get_saved_variables();   // x, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, out, ws
    const Edges e(true, true, true, true, true, v[5].defined(), v[6].defined());
    const std::array<bool, 3> mask{needs(ctx, e.index[0]), needs(ctx, e.index[2]),
                                   needs(ctx, e.index[3]) || needs(ctx, e.index[4]) || needs(ctx, e.index[5]) ||
                                       needs(ctx, e.index[6])};
    if (!grads[0].defined() && !grads[1].defined()) return variable_list(8);
    const BackwardOpCall where;
    auto [gx, ghx, gw_ih, gw_hh, gb_ih, gb_hh] =
        op.call(or_zeros(grads[0], v[7]), or_zeros(grads[1], v[2]), v[0], v[1], v[2], v[3], v[4], present(v[5]),
                present(v[6]), v[7], v[8], ctx->saved_data["reverse"].toBool(), mask);
    return {if_on(mask[0], gx), at::Tensor(), if_on(mask[1], ghx), if_on(mask[2], gw_ih), if_on(mask[2], gw_hh),
            if_on(mask[2] && v[5].defined(), gb_ih), if_on(mask[2] && v[6].defined(), gb_hh), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_autograd(const at::Tensor& x, const at::Tensor& batch_sizes,
                                                                  const at::Tensor& hx, const at::Tensor& w_ih,
                                                                  const at::Tensor& w_hh, const OptTensor& b_ih,
                                                                  const OptTensor& b_hh, bool reverse) {
  auto outs = GruLayerFunction::apply(x, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse);
  return {outs[0], outs[1], outs[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, Autograd, m) {
  m.impl("conv2d", &conv2d_autograd);
  m.impl("max_pool2d_with_indices", &max_pool2d_autograd);
  m.impl("batch_norm", &batch_norm_autograd);
  m.impl("gemm", &gemm_autograd);
  m.impl("lstm_layer", &lstm_layer_autograd);
  m.impl("gru_layer", &gru_layer_autograd);
}

}  // namespace fastconv
