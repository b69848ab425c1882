// Argument checking and output shape for max_pool2d, shared by the CPU and CUDA glue.
// The checks and messages follow torch's pool2d_shape_check, prefixed with the fastconv op name.
#pragma once

#include <ATen/ATen.h>

#include "common/checks.h"
#include "common/pool2d.h"

namespace fastconv {

struct MaxPool2dShape {
  Pool2dGeometry g;
  int64_t batch, channels;
  bool batched;                 // 4-D input (else unbatched 3-D)
  at::MemoryFormat format;      // layout of output, indices and grad_input
};

inline MaxPool2dShape max_pool2d_shape(const at::Tensor& self, at::IntArrayRef kernel_size,
                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef dilation, bool ceil_mode, const char* op) {
  check_pair(kernel_size, op, "kernel_size");
  check_pair(stride, op, "stride");
  check_pair(padding, op, "padding");
  check_pair(dilation, op, "dilation");
  check_floating(self, op, "input");
  const int64_t dim = self.dim();
  FC_CHECK(dim == 3 || dim == 4, op, "expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, but got a ",
           dim, "-D tensor of shape ", self.sizes());
  for (int64_t i = (dim == 4 ? 1 : 0); i < dim; ++i) {
    FC_CHECK(self.size(i) > 0, op, "expected non-empty channel and spatial dimensions (only the batch "
             "may be 0), but got input of shape ", self.sizes());
  }
  MaxPool2dShape s;
  auto& g = s.g;
  g.kh = kernel_size[0]; g.kw = kernel_size[1];
  g.sh = stride[0];      g.sw = stride[1];
  g.ph = padding[0];     g.pw = padding[1];
  g.dh = dilation[0];    g.dw = dilation[1];
  FC_CHECK(g.kh > 0 && g.kw > 0, op, "kernel_size must be positive, but got ", kernel_size);
  FC_CHECK(g.sh > 0 && g.sw > 0, op, "stride must be positive, but got ", stride);
  FC_CHECK(g.dh > 0 && g.dw > 0, op, "dilation must be positive, but got ", dilation);
  FC_CHECK(g.ph >= 0 && g.pw >= 0, op, "padding must be non-negative, but got ", padding);
  FC_CHECK(g.ph <= g.kh / 2 && g.pw <= g.kw / 2, op,
           "padding must be at most half of kernel_size, but got padding=", padding,
           " and kernel_size=", kernel_size);
  s.batched = dim == 4;
  s.batch = s.batched ? self.size(0) : 1;
  s.channels = self.size(dim - 3);
  g.in_h = self.size(dim - 2);
  g.in_w = self.size(dim - 1);
  g.out_h = pool_output_size(g.in_h, g.kh, g.ph, g.sh, g.dh, ceil_mode);
  g.out_w = pool_output_size(g.in_w, g.kw, g.pw, g.sw, g.dw, ceil_mode);
  FC_CHECK(g.out_h >= 1 && g.out_w >= 1, op, "output size is too small: input ", self.sizes(),
           " with kernel_size=", kernel_size, ", stride=", stride, ", padding=", padding,
           ", dilation=", dilation, ", ceil_mode=", ceil_mode, " gives output ", g.out_h, "x", g.out_w);
  // torch keeps channels-last for 4-D channels-last input and is contiguous otherwise.
  s.format = s.batched ? self.suggest_memory_format() : at::MemoryFormat::Contiguous;
  return s;
}

inline std::vector<int64_t> max_pool2d_output_sizes(const MaxPool2dShape& s) {
  if (s.batched) return {s.batch, s.channels, s.g.out_h, s.g.out_w};
  return {s.channels, s.g.out_h, s.g.out_w};
}

// Checks of the backward op's extra tensors against the forward geometry.
inline void check_max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& self,
                                      const at::Tensor& indices, const MaxPool2dShape& s, const char* op) {
  const auto expected = max_pool2d_output_sizes(s);
  FC_CHECK(grad_output.sizes() == at::IntArrayRef(expected), op, "expected grad_output of shape ",
           at::IntArrayRef(expected), ", but got ", grad_output.sizes());
  FC_CHECK(indices.sizes() == at::IntArrayRef(expected), op, "expected indices of shape ",
           at::IntArrayRef(expected), ", but got ", indices.sizes());
  FC_CHECK(indices.scalar_type() == at::kLong, op, "expected int64 indices, but got ", indices.scalar_type());
  FC_CHECK(grad_output.scalar_type() == self.scalar_type(), op, "expected grad_output of dtype ",
           self.scalar_type(), ", but got ", grad_output.scalar_type());
  FC_CHECK(grad_output.device() == self.device() && indices.device() == self.device(), op,
           "expected grad_output, input and indices on one device, but got ", grad_output.device(), ", ",
           self.device(), " and ", indices.device());
}

}  // namespace fastconv
