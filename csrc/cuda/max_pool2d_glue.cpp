// CUDA glue for max_pool2d: checks, allocation and layout on the torch side, then the raw-pointer
// launchers of max_pool2d.cu on the current stream, under a guard for the input's device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/pool2d_args.h"
#include "cuda/max_pool2d.h"

namespace fastconv::cuda {
namespace {

constexpr const char* kForward = "max_pool2d_with_indices";
constexpr const char* kBackward = "max_pool2d_with_indices_backward";

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices_cuda(const at::Tensor& self, at::IntArrayRef kernel_size,
                                                                at::IntArrayRef stride, at::IntArrayRef padding,
                                                                at::IntArrayRef dilation, bool ceil_mode) {
  const MaxPool2dShape s = max_pool2d_shape(self, kernel_size, stride, padding, dilation, ceil_mode, kForward);
  const c10::cuda::CUDAGuard guard(self.device());
  const auto sizes = max_pool2d_output_sizes(s);
  at::Tensor out = at::empty(sizes, self.options().memory_format(s.format));
  at::Tensor idx = at::empty(sizes, self.options().dtype(at::kLong).memory_format(s.format));
  if (out.numel() == 0) return {out, idx};
  const at::Tensor in = self.contiguous(s.format);
  C10_CUDA_CHECK(max_pool2d_forward(to_dtype(self.scalar_type()), in.data_ptr(), out.data_ptr(),
                                    idx.data_ptr<int64_t>(), s.batch, s.channels, s.g,
                                    s.format == at::MemoryFormat::ChannelsLast,
                                    c10::cuda::getCurrentCUDAStream().stream()));
  return {out, idx};
}

at::Tensor max_pool2d_with_indices_backward_cuda(const at::Tensor& grad_output, const at::Tensor& self,
                                                 at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                 at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode,
                                                 const at::Tensor& indices) {
  const MaxPool2dShape s = max_pool2d_shape(self, kernel_size, stride, padding, dilation, ceil_mode, kBackward);
  check_max_pool2d_backward(grad_output, self, indices, s, kBackward);
  const c10::cuda::CUDAGuard guard(self.device());
  at::Tensor gi = at::empty(self.sizes(), self.options().memory_format(s.format));
  if (gi.numel() == 0) return gi;
  const at::Tensor go = grad_output.contiguous(s.format);
  const at::Tensor idx = indices.contiguous(s.format);
  C10_CUDA_CHECK(max_pool2d_backward(to_dtype(self.scalar_type()), go.data_ptr(), idx.data_ptr<int64_t>(),
                                     gi.data_ptr(), s.batch, s.channels, s.g,
                                     s.format == at::MemoryFormat::ChannelsLast,
                                     c10::cuda::getCurrentCUDAStream().stream()));
  return gi;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("max_pool2d_with_indices", &max_pool2d_with_indices_cuda);
  m.impl("max_pool2d_with_indices_backward", &max_pool2d_with_indices_backward_cuda);
}

}  // namespace fastconv::cuda
