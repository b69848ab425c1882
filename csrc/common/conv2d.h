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

// im2col over a batch of images, one element of the columns per call (the CUDA kernel's thread body
// and its CPU emulation): cols[n][(c*kh + i)*kw + j][p - p0] for n < images, c < channels (all of an
// image's channels: group g's rows are the g-th block of Cg*kh*kw), p in [p0, p0 + pc). Returns the
// offset of the input element that entry e reads, from the first image, or -1 for a padding tap.
// I is the index type: int32_t when the sizes allow (the caller checks), else int64_t.
template <typename I>
FC_HD I im2col_source(I e, const Conv2dGeometry& g, I p0, I pc) {
  const I kh = I(g.kh), kw = I(g.kw), in_h = I(g.in_h), in_w = I(g.in_w), out_w = I(g.out_w);
  const I p = p0 + e % pc, r = e / pc;   // consecutive e: consecutive positions
  const I j = r % kw, i = (r / kw) % kh, cn = r / (kw * kh);   // cn = n * channels + c
  const I ih = I(g.sh) * (p / out_w) - I(g.ph) + i * I(g.dh);
  const I iw = I(g.sw) * (p % out_w) - I(g.pw) + j * I(g.dw);
  return ih >= 0 && ih < in_h && iw >= 0 && iw < in_w ? (cn * in_h + ih) * in_w + iw : I(-1);
}

// Where im2col element e (im2col_source's numbering) lands when each column row is `pitch` long.
template <typename I>
FC_HD I im2col_pitched(I e, I pc, I pitch) {
  return e / pc * pitch + e % pc;
}

// col2im as a gather over a batch of images: the sum of the column entries (laid out as
// im2col_source writes them, positions [p0, p0 + pc)) that read input element e = (n*channels + c)*H*W
// + ih*W + iw. One thread per input element, so no two threads write one element.
template <typename T, typename I>
FC_HD T col2im_gather(const T* cols, I e, const Conv2dGeometry& g, I p0, I pc) {
  const I kh = I(g.kh), kw = I(g.kw), in_h = I(g.in_h), in_w = I(g.in_w);
  const I iw = e % in_w, ih = (e / in_w) % in_h, cn = e / (in_w * in_h);
  T sum = 0;
  for (I i = 0; i < kh; ++i) {
    const int64_t oh = conv_reader(ih, i, g.sh, g.ph, g.dh, g.out_h);
    if (oh < 0) continue;
    for (I j = 0; j < kw; ++j) {
      const int64_t ow = conv_reader(iw, j, g.sw, g.pw, g.dw, g.out_w);
      if (ow < 0) continue;
      const I p = I(oh * g.out_w + ow);
      if (p >= p0 && p < p0 + pc) sum += cols[((cn * kh + i) * kw + j) * pc + (p - p0)];
    }
  }
  return sum;
}

}  // namespace fastconv
