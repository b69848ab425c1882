// Convolution index math shared by the CPU and CUDA kernels (host-and-device, torch-free).
//
// out[n, k, oh, ow] = bias[k] + sum over c in the group, i < kh, j < kw of
//                     w[k, c, i, j] * x[n, g*Cg + c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]
// (taps outside the input read zero). As a GEMM per image and group (implicit-GEMM vocabulary:
// M = output channels of the group, N = output positions OH*OW, K = Cg*kh*kw), the "columns" matrix
// is cols[(c*kh + i)*kw + j][oh*OW + ow] = that input tap: im2col builds it, col2im adds it back.
#pragma once

#include <cstdint>

#include "common/macros.h"
#include "common/pool2d.h"   // div_floor

namespace fastconv {

struct Conv2dGeometry {
  int64_t in_h, in_w, out_h, out_w;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// torch's convolution output size (floor mode).
FC_HD int64_t conv_output_size(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dil) {
  return div_floor(in + 2 * pad - dil * (k - 1) - 1, stride) + 1;
}

// The input row (or column) that kernel tap i of output position o reads; may be out of range.
FC_HD int64_t conv_tap(int64_t o, int64_t i, int64_t stride, int64_t pad, int64_t dil) {
  return o * stride - pad + i * dil;
}

// For col2im as a gather: the output position o whose tap i reads input position x, or -1.
FC_HD int64_t conv_reader(int64_t x, int64_t i, int64_t stride, int64_t pad, int64_t dil, int64_t out) {
  const int64_t num = x + pad - i * dil;
  if (num < 0 || num % stride != 0) return -1;
  const int64_t o = num / stride;
  return o < out ? o : -1;
}

// The output columns [lo, hi) whose kernel tap j lands inside the input row: 0 <= ow*sw - pw + j*dw < in_w.
FC_HD void conv_tap_columns(const Conv2dGeometry& g, int64_t j, int64_t* lo, int64_t* hi) {
  const int64_t off = j * g.dw - g.pw;
  const int64_t l = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
  const int64_t h = g.in_w - off <= 0 ? 0 : (g.in_w - off - 1) / g.sw + 1;
  *lo = l < g.out_w ? l : g.out_w;
  *hi = h < *lo ? *lo : (h < g.out_w ? h : g.out_w);
}

}  // namespace fastconv
