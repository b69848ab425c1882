// CUDA glue for batch_norm: checks and layout on the torch side (shared with the CPU glue), per-channel
// parameters converted to the statistics dtype (O(C)), then the raw-pointer launchers of
// batch_norm.cu on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/batch_norm_args.h"
#include "cuda/batch_norm.h"

namespace fastconv::cuda {
namespace {

constexpr const char* kForward = "batch_norm";
constexpr const char* kBackward = "batch_norm_backward";

// A per-channel argument as a contiguous tensor of the statistics dtype (undefined if absent).
at::Tensor as_stat(const std::optional<at::Tensor>& t, at::ScalarType type) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  return t->detach().to(type).contiguous();
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

BnCudaShape cuda_shape(const BatchNormShape& s) { return {s.N, s.C, s.S, s.interleaved}; }

// The activation's parameters for this output dtype (float ones for all but double), held in double.
BnActParams<double> act_params(BnActKind kind, const std::optional<double>& relu_max, at::ScalarType dtype) {
  if (dtype == at::kDouble) return bn_act_params<double>(kind, relu_max, dtype);
  const BnActParams<float> a = bn_act_params<float>(kind, relu_max, dtype);
  return {a.kind, a.hi, a.grad_lo, a.grad_hi};
}

// torch's update of a running statistic in training (O(C) glue on the stream): running = momentum *
// batch * scale + (1 - momentum) * running, in place (scale n / (n - 1) makes the variance unbiased).
void update_running(const std::optional<at::Tensor>& running, const at::Tensor& batch, double scale,
                    double momentum) {
  if (!running.has_value() || !running->defined()) return;
  running->mul_(1 - momentum).add_(batch.to(running->scalar_type()), momentum * scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_cuda(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, bool training,
    double momentum, double eps, bool relu, std::optional<double> relu_max) {
  const BatchNormShape s =
      check_batch_norm_forward(input, weight, bias, running_mean, running_var, training, eps, kForward);
  const BnActKind act = batch_norm_act_kind(relu, relu_max, kForward);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto stat_opts = input.options().dtype(s.stat_type);
  at::Tensor out = at::empty(input.sizes(), input.options().memory_format(s.format));
  if (input.numel() == 0) {
    return {out, at::zeros({s.C}, stat_opts), at::zeros({s.C}, stat_opts), at::zeros({training ? s.C : 0}, stat_opts)};
  }
  check_batch_norm_count(input, s, training, kForward);
  const at::Tensor x = input.contiguous(s.format);
  const at::Tensor w = as_stat(weight, s.stat_type), b = as_stat(bias, s.stat_type);
  at::Tensor save_mean = at::empty({s.C}, stat_opts), save_invstd = at::empty({s.C}, stat_opts);
  at::Tensor scale = at::empty({s.C}, stat_opts), shift = at::empty({s.C}, stat_opts);
  at::Tensor batch_var = at::empty({training ? s.C : 0}, stat_opts);
  const DType dt = to_dtype(input.scalar_type());
  const BnCudaShape sh = cuda_shape(s);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  if (training) {
    at::Tensor ws = at::empty({2 * s.C * batch_norm_reduce_blocks(sh)}, input.options().dtype(at::kDouble));
    C10_CUDA_CHECK(batch_norm_stats(dt, x.data_ptr(), sh, eps, ptr_or_null(w), ptr_or_null(b), ws.data_ptr<double>(),
                                    save_mean.data_ptr(), save_invstd.data_ptr(), batch_var.data_ptr(),
                                    scale.data_ptr(), shift.data_ptr(), stream));
    update_running(running_mean, save_mean, 1.0, momentum);
    const double n = static_cast<double>(s.count());
    update_running(running_var, batch_var, n / (n - 1), momentum);
  } else {
    const at::Tensor rm = as_stat(running_mean, s.stat_type), rv = as_stat(running_var, s.stat_type);
    C10_CUDA_CHECK(batch_norm_prepare(dt, s.C, rm.data_ptr(), rv.data_ptr(), eps, ptr_or_null(w), ptr_or_null(b),
                                      save_mean.data_ptr(), save_invstd.data_ptr(), scale.data_ptr(),
                                      shift.data_ptr(), stream));
  }
  C10_CUDA_CHECK(batch_norm_normalize(dt, x.data_ptr(), out.data_ptr(), sh, scale.data_ptr(), shift.data_ptr(),
                                      act_params(act, relu_max, input.scalar_type()), stream));
  return {out, save_mean, save_invstd, batch_var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& save_mean, const at::Tensor& save_invstd,
    bool training, bool relu, bool grad_affine, std::optional<double> relu_max) {
  const BatchNormShape s =
      check_batch_norm_backward(grad_output, input, weight, bias, save_mean, save_invstd, kBackward);
  const BnActKind act = batch_norm_act_kind(relu, relu_max, kBackward);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor dx = at::empty(input.sizes(), input.options().memory_format(s.format));
  const auto affine_type = batch_norm_affine_type(weight, s);
  const auto affine_opts = input.options().dtype(affine_type);
  const int64_t affine_n = grad_affine ? s.C : 0;
  if (input.numel() == 0) return {dx, at::zeros({affine_n}, affine_opts), at::zeros({affine_n}, affine_opts)};
  const auto stat_opts = input.options().dtype(s.stat_type);
  const at::Tensor x = input.contiguous(s.format), dy = grad_output.contiguous(s.format);
  const at::Tensor w = as_stat(weight, s.stat_type), b = as_stat(bias, s.stat_type);
  const at::Tensor mean = save_mean.detach().to(s.stat_type).contiguous();
  const at::Tensor invstd = save_invstd.detach().to(s.stat_type).contiguous();
  at::Tensor scale = at::empty({s.C}, stat_opts), shift = at::empty({s.C}, stat_opts);
  at::Tensor coeffs = at::empty({3 * s.C}, stat_opts);
  at::Tensor gw = at::empty({affine_n}, stat_opts), gb = at::empty({affine_n}, stat_opts);
  const DType dt = to_dtype(input.scalar_type());
  const BnCudaShape sh = cuda_shape(s);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  C10_CUDA_CHECK(batch_norm_prepare(dt, s.C, mean.data_ptr(), nullptr, 0.0, ptr_or_null(w), ptr_or_null(b), nullptr,
                                    invstd.data_ptr(), scale.data_ptr(), shift.data_ptr(), stream));
  at::Tensor ws = at::empty({2 * s.C * batch_norm_reduce_blocks(sh)}, input.options().dtype(at::kDouble));
  C10_CUDA_CHECK(batch_norm_backward(dt, dy.data_ptr(), x.data_ptr(), dx.data_ptr(), sh, mean.data_ptr(),
                                     invstd.data_ptr(), ptr_or_null(w), scale.data_ptr(), shift.data_ptr(), training,
                                     act_params(act, relu_max, input.scalar_type()), grad_affine,
                                     ws.data_ptr<double>(), coeffs.data_ptr(),
                                     grad_affine ? gw.data_ptr() : nullptr, grad_affine ? gb.data_ptr() : nullptr,
                                     stream));
  return {dx, gw.to(affine_type), gb.to(affine_type)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("batch_norm", &batch_norm_cuda);
  m.impl("batch_norm_backward", &batch_norm_backward_cuda);
}

}  // namespace fastconv::cuda
