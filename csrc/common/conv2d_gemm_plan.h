// The CUDA im2col convolution as a sequence of batched launches (host side, shared by the CUDA glue
// and its CPU emulation in cpu/cuda_plan_emulation.cpp, so that the batching, offsets and chunking the
// GPU runs are tested on every machine).
//
// Each step is one launch over a whole batch of images and all groups: im2col of `images` images at
// once, then one batched GEMM (common/gemm_batch.h) with z = (image, group), then (grad_input) one
// col2im. The columns of a launch are cols[n][g][Cg*kh*kw][pc] (= [n][C*kh*kw][pc], what im2col_source
// writes). A launch takes as many whole images as the workspace holds; an image whose columns alone
// do not fit is split into chunks of output positions, one image per launch. A 1x1 stride-1 unpadded
// convolution needs no columns: its GEMMs read the input in place, all images in one launch.
//
// The Backend runs the steps (alpha is 1 throughout):
//   im2col(x, images, p0, pc, cols)          cols of `images` images from x (first image's plane 0)
//   col2im_add(cols, images, p0, pc, dx)     dx += the gather of cols
//   gemm(m, n, k, a, rs_a, cs_a, b, rs_b, cs_b, beta, c, rs_c, batch)
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "common/conv2d_args.h"
#include "common/gemm_batch.h"

namespace fastconv {

struct Conv2dBatching {
  int64_t images;   // images per launch
  int64_t chunk;    // output positions per launch (< P only when images == 1)
};

// How many images and positions one launch takes with `workspace_bytes` for the columns.
inline Conv2dBatching conv2d_batching(const Conv2dShape& s, const Conv2dGemmDims& d, size_t elem,
                                      size_t workspace_bytes) {
  const int64_t batch = std::max<int64_t>(s.batch, 1);
  if (d.pointwise) return {batch, d.P};
  const int64_t rows = std::max<int64_t>(1, s.groups * d.kc);   // column rows of one image
  const int64_t fit = std::max<int64_t>(1, static_cast<int64_t>(workspace_bytes / elem) / rows);
  if (fit < d.P) return {1, fit};
  return {std::min(batch, fit / std::max<int64_t>(d.P, 1)), d.P};
}

// The elements of the column workspace a plan needs (0 for pointwise).
inline int64_t conv2d_batching_workspace(const Conv2dShape& s, const Conv2dGemmDims& d, const Conv2dBatching& b) {
  return d.pointwise ? 0 : b.images * s.groups * d.kc * b.chunk;
}

namespace detail {
inline char* elem_at(const void* p, int64_t offset, size_t elem) {
  return static_cast<char*>(const_cast<void*>(p)) + offset * static_cast<int64_t>(elem);
}

// Calls step(n0, nb, p0, pc) for each launch: images [n0, n0 + nb), positions [p0, p0 + pc).
template <class Step>
void for_each_launch(const Conv2dShape& s, const Conv2dGemmDims& d, const Conv2dBatching& b, Step step) {
  for (int64_t n0 = 0; n0 < s.batch; n0 += b.images) {
    const int64_t nb = std::min(b.images, s.batch - n0);
    for (int64_t p0 = 0; p0 < d.P; p0 += b.chunk) step(n0, nb, p0, std::min(b.chunk, d.P - p0));
  }
}
}  // namespace detail

// out = conv(x, w) (+ out's prior contents when accumulate: the bias, prefilled by the caller).
template <class Backend>
void conv2d_plan_forward(Backend& be, const Conv2dShape& s, const Conv2dGemmDims& d, const Conv2dBatching& b,
                         size_t elem, const void* x, const void* w, void* out, bool accumulate, void* cols) {
  const int64_t C = s.in_channels, K = s.out_channels, G = s.groups;
  detail::for_each_launch(s, d, b, [&](int64_t n0, int64_t nb, int64_t p0, int64_t pc) {
    GemmBatch batch;
    batch.count = nb * G;
    batch.inner = G;
    batch.a = {0, d.kg * d.kc, 0};
    batch.c = {K * d.P, d.kg * d.P, 0};
    const void* bp;
    int64_t rs_b;
    if (d.pointwise) {
      bp = detail::elem_at(x, n0 * C * d.HW + p0, elem);
      rs_b = d.HW;
      batch.b = {C * d.HW, d.cg * d.HW, 0};
    } else {
      be.im2col(detail::elem_at(x, n0 * C * d.HW, elem), nb, p0, pc, cols);
      bp = cols;
      rs_b = pc;
      batch.b = {G * d.kc * pc, d.kc * pc, 0};
    }
    be.gemm(d.kg, pc, d.kc, w, d.kc, 1, bp, rs_b, 1, accumulate ? 1.0 : 0.0,
            detail::elem_at(out, n0 * K * d.P + p0, elem), d.P, batch);
  });
}

// dx = conv_transpose(dy, w): dx must be zero-filled unless the convolution is pointwise (whose GEMM
// writes it whole).
template <class Backend>
void conv2d_plan_grad_input(Backend& be, const Conv2dShape& s, const Conv2dGemmDims& d, const Conv2dBatching& b,
                            size_t elem, const void* dy, const void* w, void* dx, void* cols) {
  const int64_t C = s.in_channels, K = s.out_channels, G = s.groups;
  detail::for_each_launch(s, d, b, [&](int64_t n0, int64_t nb, int64_t p0, int64_t pc) {
    GemmBatch batch;   // cols_g = W_g^T dY_g
    batch.count = nb * G;
    batch.inner = G;
    batch.a = {0, d.kg * d.kc, 0};
    batch.b = {K * d.P, d.kg * d.P, 0};
    const void* dyp = detail::elem_at(dy, n0 * K * d.P + p0, elem);
    if (d.pointwise) {
      batch.c = {C * d.HW, d.cg * d.HW, 0};
      be.gemm(d.kc, pc, d.kg, w, 1, d.kc, dyp, d.P, 1, 0.0, detail::elem_at(dx, n0 * C * d.HW + p0, elem), d.HW,
              batch);
      return;
    }
    batch.c = {G * d.kc * pc, d.kc * pc, 0};
    be.gemm(d.kc, pc, d.kg, w, 1, d.kc, dyp, d.P, 1, 0.0, cols, pc, batch);
    be.col2im_add(cols, nb, p0, pc, detail::elem_at(dx, n0 * C * d.HW, elem));
  });
}

// dw += sum over images of dY_g cols_g^T: one launch per chunk, z = group, the images of the chunk
// summed as the GEMM's reduction batch. dw must be zero-filled.
template <class Backend>
void conv2d_plan_grad_weight(Backend& be, const Conv2dShape& s, const Conv2dGemmDims& d, const Conv2dBatching& b,
                             size_t elem, const void* dy, const void* x, void* dw, void* cols) {
  const int64_t C = s.in_channels, K = s.out_channels, G = s.groups;
  detail::for_each_launch(s, d, b, [&](int64_t n0, int64_t nb, int64_t p0, int64_t pc) {
    GemmBatch batch;
    batch.count = G;
    batch.reduce = nb;
    batch.a = {d.kg * d.P, 0, K * d.P};
    batch.c = {d.kg * d.kc, 0, 0};
    const void* bp;
    int64_t cs_b;
    if (d.pointwise) {   // op(B)(p, c) = x[c][p]
      bp = detail::elem_at(x, n0 * C * d.HW + p0, elem);
      cs_b = d.HW;
      batch.b = {d.cg * d.HW, 0, C * d.HW};
    } else {
      be.im2col(detail::elem_at(x, n0 * C * d.HW, elem), nb, p0, pc, cols);
      bp = cols;
      cs_b = pc;
      batch.b = {d.kc * pc, 0, G * d.kc * pc};
    }
    be.gemm(d.kg, d.kc, pc, detail::elem_at(dy, n0 * K * d.P + p0, elem), d.P, 1, bp, 1, cs_b, 1.0, dw, d.kc,
            batch);
  });
}

}  // namespace fastconv
