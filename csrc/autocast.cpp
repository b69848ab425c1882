// fastconv's ops under torch.autocast, with torch's own cast policy: what torch runs in the lower
// precision (mm/addmm/linear, conv2d) runs here in the autocast dtype (bfloat16 or float16, as the
// context says): floating inputs other than float64 cast with torch's cached cast, then the op called
// again with autocast off for the rest of the call. Registered for AutocastCPU and AutocastCUDA
// (CUDA runs half precision in float32 inside until its tensor-core kernels; never run on a GPU yet). Ops torch keeps in float32 or in the input's dtype (batch_norm, max-pool,
// which take half data with float32 statistics) and the backward ops need no autocast kernel: the
// backend fallthrough runs them as called.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "common/weight_cache.h"

namespace fastconv {
namespace {

template <c10::DispatchKey Key, c10::DeviceType Device>
at::Tensor gemm_autocast(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c, bool trans_a,
                         bool trans_b, double alpha, double beta, std::optional<at::ScalarType> out_dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(Key);
  const at::ScalarType low = at::autocast::get_autocast_dtype(Device);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastconv::gemm", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               bool, bool, double, double, std::optional<at::ScalarType>)>();
  const at::Tensor a_low = at::autocast::cached_cast(low, a, Device);
  // c is added in the output's dtype: cast with a and b unless the caller chose another output.
  std::optional<at::Tensor> c_low = c;
  if (c.has_value() && c->defined() && (!out_dtype.has_value() || *out_dtype == a_low.scalar_type())) {
    c_low = at::autocast::cached_cast(low, *c, Device);
  }
  return op.call(a_low, at::autocast::cached_cast(low, b, Device), c_low, trans_a, trans_b, alpha, beta, out_dtype);
}

template <c10::DispatchKey Key, c10::DeviceType Device>
at::Tensor conv2d_autocast(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           c10::string_view algorithm) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(Key);
  const at::ScalarType low = at::autocast::get_autocast_dtype(Device);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastconv::conv2d", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
                                               c10::string_view)>();
  // A CPU weight that does not require grad (a model in eval mode, or under no_grad, where fastconv's
  // modules pass it detached) is cast once and kept in the WeightCache for as long as its bytes stay
  // the same: torch's cast cache holds only leaves that require grad, and a fresh cast every call
  // would also miss the Winograd transforms cached for the cast weight (measured: a converted
  // ResNet-18 under autocast ran at 0.5x torch's speed, 2x with the cast kept).
  const bool keep = Device == c10::DeviceType::CPU && weight.scalar_type() == at::kFloat && WeightCache::cacheable(weight);
  const at::Tensor w_low = keep ? WeightCache::instance().get(weight, WeightCache::cast_to(low), [&] { return weight.to(low); })
                                : at::autocast::cached_cast(low, weight, Device);
  return op.call(at::autocast::cached_cast(low, input, Device), w_low, at::autocast::cached_cast(low, bias, Device),
                 stride, padding, dilation, groups, algorithm);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, AutocastCPU, m) {
  m.impl("gemm", &gemm_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
  m.impl("conv2d", &conv2d_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(fastconv, AutocastCUDA, m) {
  m.impl("gemm", &gemm_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
  m.impl("conv2d", &conv2d_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

}  // namespace fastconv
