// CPU convolution by im2col + the GEMM engine (fastconv::conv2d, fastconv::conv2d_backward).
//
// Per image and group (M = output channels of the group, N = output positions, K = Cg*kh*kw):
//   forward      out_g = W_g @ cols(x_g) (+ bias, entering as the GEMM's beta term)
//   grad_input   cols  = W_g^T @ dY_g, then col2im adds each column entry back to its input tap
//   grad_weight  dW_g += dY_g @ cols(x_g)^T, accumulated over images
//   grad_bias    sum of dY over images and positions
// The column buffer holds at most kWorkspaceBytes: output positions are processed in chunks. 1x1,
// stride-1, unpadded convolutions skip the lowering (the input plane already is the column matrix).
// The forward pass lowers straight into the GEMM engine's packed-B layout (im2col_packed, from
// zero-padded copies of the planes), kForwardChunkBytes of columns at a time so they are still in L2
// when the GEMM reads them, with the weights packed once per call.
// Work is parallel over (image, group) items when there are enough of them, else inside the GEMM.
// Channels-last tensors are computed through NCHW copies. algorithm="direct" (and "auto" where it
// picks direct) runs conv2d_direct.cpp's kernels for the forward pass and grad_input instead, the
// Winograd algorithms conv2d_winograd.cpp's; grad_weight and grad_bias are always the ones here.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <string_view>

#include "common/conv2d_args.h"
#include "cpu/conv2d_direct_kernels.h"
#include "cpu/conv2d_winograd.h"
#include "cpu/gemm_kernels.h"
#include "cpu/memory.h"

namespace fastconv::cpu {
namespace {

constexpr const char* kForward = "conv2d";
constexpr const char* kBackward = "conv2d_backward";
constexpr size_t kWorkspaceBytes = size_t(64) << 20;
// Columns lowered per GEMM in the forward pass: about a third of a 1 MiB L2, so that they, the packed
// weights' K block and the output rows stay there. Measured on ResNet-18's 3x3 layers (2 threads):
// 256-768 KiB all beat whole images (64@56: 0.69x -> 0.80-0.88x torch); 384 KiB was the best.
constexpr int64_t kForwardChunkBytes = int64_t(384) << 10;

// cols[(c*kh + i)*kw + j][p - p0] for output positions p in [p0, p1) of one image/group (Cg planes).
// Row by row of output positions: a tap row outside the input is zeros; inside, the in-range columns
// [ow_lo, ow_hi) are a strided (for stride 1, contiguous) copy and the rest zeros. (The forward pass
// uses im2col_packed below; grad_weight and planes too large to pad use this.)
template <typename T>
void im2col(const T* x, int64_t cg, const Conv2dGeometry& g, int64_t p0, int64_t p1, T* cols) {
  const int64_t pc = p1 - p0;   // row stride of the column matrix
  for (int64_t c = 0; c < cg; ++c) {
    const T* plane = x + c * g.in_h * g.in_w;
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j) {
        T* row = cols + ((c * g.kh + i) * g.kw + j) * pc - p0;   // row[p] for p in [p0, p1)
        const int64_t off = j * g.dw - g.pw;
        int64_t ow_lo, ow_hi;
        conv_tap_columns(g, j, &ow_lo, &ow_hi);
        for (int64_t oh = p0 / g.out_w; oh * g.out_w < p1; ++oh) {
          const int64_t ih = conv_tap(oh, i, g.sh, g.ph, g.dh);
          const int64_t q0 = std::max(p0, oh * g.out_w), q1 = std::min(p1, (oh + 1) * g.out_w);
          T* r = row + oh * g.out_w;   // r[ow]
          const int64_t a0 = q0 - oh * g.out_w, a1 = q1 - oh * g.out_w;
          if (ih < 0 || ih >= g.in_h) {
            std::fill(r + a0, r + a1, T(0));
            continue;
          }
          const T* src = plane + ih * g.in_w + off;   // src[ow * sw]
          const int64_t lo = std::max(a0, ow_lo), hi = std::min(a1, ow_hi);
          for (int64_t ow = a0; ow < std::min(a1, lo); ++ow) r[ow] = T(0);
          if (g.sw == 1) {
            for (int64_t ow = lo; ow < hi; ++ow) r[ow] = src[ow];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) r[ow] = src[ow * g.sw];
          }
          for (int64_t ow = std::max(lo, hi); ow < a1; ++ow) r[ow] = T(0);
        }
      }
    }
  }
}

// Zero-padded copies of one image's cg planes, (in_h + 2 ph) x (in_w + 2 pw) each: every tap of every
// output position then lands inside the copy, so the forward pass's column rows are plain copies with
// no bounds logic (the copy is 1 / (kh kw) of the columns' size).
template <typename T>
void pad_planes(const T* x, int64_t cg, const Conv2dGeometry& g, T* dst) {
  const int64_t hp = g.in_h + 2 * g.ph, wp = g.in_w + 2 * g.pw;
  for (int64_t c = 0; c < cg; ++c) {
    const T* plane = x + c * g.in_h * g.in_w;
    T* d = dst + c * hp * wp;
    std::fill(d, d + g.ph * wp, T(0));
    for (int64_t ih = 0; ih < g.in_h; ++ih) {
      T* row = d + (ih + g.ph) * wp;
      std::fill(row, row + g.pw, T(0));
      std::copy(plane + ih * g.in_w, plane + (ih + 1) * g.in_w, row + g.pw);
      std::fill(row + g.pw + g.in_w, row + wp, T(0));
    }
    std::fill(d + (g.ph + g.in_h) * wp, d + hp * wp, T(0));
  }
}

// The forward pass's column matrix, written straight into the GEMM engine's packed-B layout, so the
// GEMM skips its own packing pass: rows (c, i, j) as im2col's, columns the output positions [p0, p1)
// of `images` images side by side, read from their padded planes (pad_planes, `image_stride` apart).
// Each output row of a column row is one run of a padded input row, dealt out to the NR-wide panels.
// Channels [c0, c1) only (the rows of different channels are independent: callers may split them
// across threads).
template <typename T>
void im2col_packed(const T* padded, int64_t image_stride, int64_t images, int64_t cg, const Conv2dGeometry& g,
                   int64_t p0, int64_t p1, const GemmPackedB& layout, T* dst, int64_t c0, int64_t c1) {
  const int64_t hp = g.in_h + 2 * g.ph, wp = g.in_w + 2 * g.pw;
  const int64_t kc = cg * g.kh * g.kw, nr = layout.nr;
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t r = (c * g.kh + i) * g.kw + j;
        // Column q goes to panel q / nr, lane q % nr: walked incrementally (panel, lane), as the
        // runs are short for small images and a division per run would cost more than the copy.
        T* panel = dst + layout.row_offset(r);
        const int64_t stride = layout.panel_stride(r, kc);
        int64_t lane = 0;
        for (int64_t b = 0; b < images; ++b) {
          const T* tap = padded + b * image_stride + c * hp * wp + i * g.dh * wp + j * g.dw;
          for (int64_t oh = p0 / g.out_w; oh * g.out_w < p1; ++oh) {
            const int64_t ow0 = std::max(p0, oh * g.out_w) - oh * g.out_w;
            int64_t len = std::min(p1, (oh + 1) * g.out_w) - oh * g.out_w - ow0;
            const T* src = tap + oh * g.sh * wp + ow0 * g.sw;
            while (len > 0) {   // split where the run crosses into the next panel
              const int64_t take = std::min(len, nr - lane);
              T* d = panel + lane;
              if (g.sw == 1) {
                std::copy(src, src + take, d);
              } else {
                for (int64_t t = 0; t < take; ++t) d[t] = src[t * g.sw];
              }
              src += take * g.sw;
              len -= take;
              lane += take;
              if (lane == nr) {
                lane = 0;
                panel += stride;
              }
            }
          }
        }
        if (lane != 0) std::fill(panel + lane, panel + nr, T(0));   // the last panel's unused lanes
      }
    }
  }
}

// The adjoint of im2col, with the same row-by-row structure: dx[tap of (c, i, j, p)] += cols entry.
template <typename T>
void col2im_add(const T* cols, int64_t cg, const Conv2dGeometry& g, int64_t p0, int64_t p1, T* dx) {
  const int64_t pc = p1 - p0;
  for (int64_t c = 0; c < cg; ++c) {
    T* plane = dx + c * g.in_h * g.in_w;
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j) {
        const T* row = cols + ((c * g.kh + i) * g.kw + j) * pc - p0;
        const int64_t off = j * g.dw - g.pw;
        int64_t ow_lo, ow_hi;
        conv_tap_columns(g, j, &ow_lo, &ow_hi);
        for (int64_t oh = p0 / g.out_w; oh * g.out_w < p1; ++oh) {
          const int64_t ih = conv_tap(oh, i, g.sh, g.ph, g.dh);
          if (ih < 0 || ih >= g.in_h) continue;
          const int64_t a0 = std::max(p0, oh * g.out_w) - oh * g.out_w, a1 = std::min(p1, (oh + 1) * g.out_w) - oh * g.out_w;
          const T* r = row + oh * g.out_w;
          T* dst = plane + ih * g.in_w + off;   // dst[ow * sw]
          const int64_t lo = std::max(a0, ow_lo), hi = std::min(a1, ow_hi);
          if (g.sw == 1) {
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow] += r[ow];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow * g.sw] += r[ow];
          }
        }
      }
    }
  }
}

template <typename T>
GemmArgs<T> gemm_args(int64_t m, int64_t n, int64_t k, const T* a, int64_t rs_a, int64_t cs_a, const T* b,
                      int64_t rs_b, int64_t cs_b, T* c, int64_t rs_c, T beta) {
  GemmArgs<T> g;
  g.m = m; g.n = n; g.k = k;
  g.alpha = T(1); g.beta = beta;
  g.a = a; g.rs_a = rs_a; g.cs_a = cs_a;
  g.b = b; g.rs_b = rs_b; g.cs_b = cs_b;
  g.c = c; g.rs_c = rs_c; g.cs_c = 1;
  return g;
}

// Runs run(begin, end) over [0, items): in parallel when there are at least as many items as threads
// (the GEMMs inside then run serially), else serially with the GEMMs parallel inside.
template <typename Run>
void over_items(int64_t items, const Run& run) {
  if (items >= at::get_num_threads()) {
    at::parallel_for(0, items, 1, run);
  } else {
    run(0, items);
  }
}

// body(n, grp, cols) for every (image, group), each worker with its own column buffer.
template <typename T, typename Body>
void for_each_item(const Conv2dShape& s, int64_t cols_elems, const Body& body) {
  over_items(s.batch * s.groups, [&](int64_t b, int64_t e) {
    T* cols = scratch<T>(Scratch::conv_cols, cols_elems);   // uninitialised: im2col fills it
    for (int64_t t = b; t < e; ++t) body(t / s.groups, t % s.groups, cols);
  });
}

// Images with few output positions make thin GEMMs that re-pack the weights for every image; up to
// kBatchedPositions positions of several images then share one GEMM (their columns side by side),
// and the product is scattered to the images afterwards.
constexpr int64_t kBatchedPositions = 512;
// Below this many column entries, splitting one bundle's lowering over threads costs more in waking
// them than it saves (LeNet-5's layers are far below; ResNet-18's 512@7x7 at batch 8 is 7x above).
constexpr int64_t kParallelLoweringElems = int64_t(256) << 10;

template <typename T>
void forward_impl(const T* x, const T* w, const T* bias, T* out, const Conv2dShape& s) {
  const auto& g = s.g;
  const Conv2dGemmDims d =
      conv2d_gemm_dims(s, sizeof(T), kWorkspaceBytes / std::max<int64_t>(1, at::get_num_threads()));
  const int64_t cg = d.cg, kg = d.kg, kc = d.kc, P = d.P, HW = d.HW, chunk = d.chunk;
  const bool pointwise = d.pointwise;
  const int64_t padded_hw = (g.in_h + 2 * g.ph) * (g.in_w + 2 * g.pw);
  const int64_t per_gemm = std::min<int64_t>(s.batch, std::max<int64_t>(1, kBatchedPositions / P));
  if (per_gemm > 1 && !pointwise && kc * per_gemm * P * int64_t(sizeof(T)) <= int64_t(kWorkspaceBytes)) {
    const int64_t bundles = (s.batch + per_gemm - 1) / per_gemm, items = bundles * s.groups;
    const auto run = [&](int64_t b0, int64_t b1) {
      T* cols = scratch<T>(Scratch::conv_cols, gemm_packed_b_layout<T>(per_gemm * P, 0).elems(kc));
      T* padded = scratch<T>(Scratch::conv_pad, per_gemm * cg * padded_hw);
      T* prod = scratch<T>(Scratch::conv_prod, kg * per_gemm * P);
      for (int64_t t = b0; t < b1; ++t) {
        const int64_t bundle = t / s.groups, grp = t % s.groups;
        const int64_t n0 = bundle * per_gemm, nb = std::min(per_gemm, s.batch - n0), ld = nb * P;
        const GemmPackedB layout = gemm_packed_b_layout<T>(ld, 0);
        const auto lower = [&](int64_t c0, int64_t c1) {   // channels [c0, c1) of every image
          for (int64_t b = 0; b < nb; ++b) {
            pad_planes(x + ((n0 + b) * s.in_channels + grp * cg + c0) * HW, c1 - c0, g,
                       padded + (b * cg + c0) * padded_hw);
          }
          im2col_packed(padded, cg * padded_hw, nb, cg, g, 0, P, layout, cols, c0, c1);
        };
        if (at::in_parallel_region() || kc * ld < kParallelLoweringElems) {
          lower(0, cg);
        } else {   // one bundle at a time (few items): the lowering is split over the threads too
          at::parallel_for(0, cg, 1, lower);
        }
        GemmArgs<T> args = gemm_args<T>(kg, ld, kc, w + grp * kg * kc, kc, 1, nullptr, 0, 0, prod, ld, T(0));
        args.b_packed = cols;
        gemm(args);
        for (int64_t b = 0; b < nb; ++b) {
          for (int64_t k = 0; k < kg; ++k) {
            const T add = bias != nullptr ? bias[grp * kg + k] : T(0);
            const T* src = prod + k * ld + b * P;
            T* dst = out + ((n0 + b) * s.out_channels + grp * kg + k) * P;
            for (int64_t p = 0; p < P; ++p) dst[p] = src[p] + add;
          }
        }
      }
    };
    over_items(items, run);
    return;
  }
  // Lowered columns are produced and consumed a cache-sized chunk of positions (whole panels) at a
  // time, the weights packed once for all of them. Planes too large to copy padded (more than
  // kWorkspaceBytes per thread) take the plain im2col into a bounded column buffer instead.
  const bool packed = !pointwise && cg * padded_hw * int64_t(sizeof(T)) * at::get_num_threads() <=
                                        int64_t(kWorkspaceBytes);
  const int64_t nr = gemm_packed_b_layout<T>(1, 0).nr;
  const int64_t chunk_pos =
      packed ? std::min(chunk, std::max(nr, kForwardChunkBytes / (kc * int64_t(sizeof(T))) / nr * nr)) : chunk;
  const int64_t packed_a = gemm_packed_a_elems(kg, kc);
  T* wpacked = packed ? scratch<T>(Scratch::conv_wpack, packed_a * s.groups) : nullptr;   // read by all threads
  for (int64_t grp = 0; packed && grp < s.groups; ++grp) {
    gemm_pack_a(gemm_args<T>(kg, 0, kc, w + grp * kg * kc, kc, 1, nullptr, 0, 0, nullptr, 0, T(0)),
                wpacked + grp * packed_a);
  }
  const int64_t cols_elems =
      pointwise ? 0 : (packed ? gemm_packed_b_layout<T>(chunk_pos, 0).elems(kc) : kc * chunk_pos);
  for_each_item<T>(s, cols_elems, [&](int64_t n, int64_t grp, T* cols) {
    const T* xg = x + (n * s.in_channels + grp * cg) * HW;
    const T* wg = w + grp * kg * kc;
    T* og = out + (n * s.out_channels + grp * kg) * P;
    if (bias != nullptr) {
      for (int64_t k = 0; k < kg; ++k) std::fill(og + k * P, og + (k + 1) * P, bias[grp * kg + k]);
    }
    const T beta = bias != nullptr ? T(1) : T(0);
    T* padded = nullptr;
    if (packed) {
      padded = scratch<T>(Scratch::conv_pad, cg * padded_hw);
      pad_planes(xg, cg, g, padded);
    }
    for (int64_t p0 = 0; p0 < P; p0 += chunk_pos) {
      const int64_t p1 = std::min(P, p0 + chunk_pos);
      if (pointwise) {
        gemm(gemm_args<T>(kg, p1 - p0, kc, wg, kc, 1, xg + p0, HW, 1, og + p0, P, beta));
      } else if (packed) {   // the columns go straight into the GEMM's packed layout
        im2col_packed(padded, 0, 1, cg, g, p0, p1, gemm_packed_b_layout<T>(p1 - p0, 0), cols, 0, cg);
        GemmArgs<T> args = gemm_args<T>(kg, p1 - p0, kc, wg, kc, 1, nullptr, 0, 0, og + p0, P, beta);
        args.a_packed = wpacked + grp * packed_a;
        args.b_packed = cols;
        gemm(args);
      } else {
        im2col(xg, cg, g, p0, p1, cols);
        gemm(gemm_args<T>(kg, p1 - p0, kc, wg, kc, 1, cols, p1 - p0, 1, og + p0, P, beta));
      }
    }
  });
}

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      c10::string_view algorithm) {
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups,
                                     std::string_view(algorithm.data(), algorithm.size()), kForward);
  at::Tensor out = at::empty(conv2d_output_sizes(s), input.options());
  if (out.numel() == 0) return in_format(out, s.format);
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  if (const int m = winograd_tile(s.algorithm)) {   // the cache keys on the caller's weight tensor
    conv2d_winograd_forward(x, weight, b, out, s, m);
    return in_format(out, s.format);
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kForward, [&] {
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    if (s.algorithm == Conv2dAlgorithm::direct) {
      conv2d_direct_forward<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bp, out.data_ptr<scalar_t>(), s);
    } else {
      forward_impl<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bp, out.data_ptr<scalar_t>(), s);
    }
  });
  return in_format(out, s.format);
}

template <typename T>
void grad_input_impl(const T* dy, const T* w, T* dx, const Conv2dShape& s) {
  const auto& g = s.g;
  const Conv2dGemmDims d =
      conv2d_gemm_dims(s, sizeof(T), kWorkspaceBytes / std::max<int64_t>(1, at::get_num_threads()));
  const int64_t cg = d.cg, kg = d.kg, kc = d.kc, P = d.P, HW = d.HW, chunk = d.chunk;
  const bool pointwise = d.pointwise;
  for_each_item<T>(s, pointwise ? 0 : kc * chunk, [&](int64_t n, int64_t grp, T* cols) {
    const T* dyg = dy + (n * s.out_channels + grp * kg) * P;
    const T* wg = w + grp * kg * kc;
    T* dxg = dx + (n * s.in_channels + grp * cg) * HW;
    if (pointwise) {   // dx_g = W_g^T @ dY_g directly
      gemm(gemm_args<T>(kc, P, kg, wg, 1, kc, dyg, P, 1, dxg, HW, T(0)));
      return;
    }
    std::fill(dxg, dxg + cg * HW, T(0));
    for (int64_t p0 = 0; p0 < P; p0 += chunk) {
      const int64_t p1 = std::min(P, p0 + chunk), pc = p1 - p0;
      gemm(gemm_args<T>(kc, pc, kg, wg, 1, kc, dyg + p0, P, 1, cols, pc, T(0)));
      col2im_add(cols, cg, g, p0, p1, dxg);
    }
  });
}

template <typename T>
void grad_weight_impl(const T* dy, const T* x, T* dw, const Conv2dShape& s) {
  const auto& g = s.g;
  const Conv2dGemmDims d = conv2d_gemm_dims(s, sizeof(T), kWorkspaceBytes);
  const int64_t cg = d.cg, kg = d.kg, kc = d.kc, P = d.P, HW = d.HW, chunk = d.chunk;
  const bool pointwise = d.pointwise;
  T* cols = scratch<T>(Scratch::conv_cols, pointwise ? 1 : kc * chunk);
  // dW accumulates over images, so images run in order; the GEMMs are parallel inside.
  for (int64_t grp = 0; grp < s.groups; ++grp) {
    T* dwg = dw + grp * kg * kc;
    bool first = true;
    for (int64_t n = 0; n < s.batch; ++n) {
      const T* dyg = dy + (n * s.out_channels + grp * kg) * P;
      const T* xg = x + (n * s.in_channels + grp * cg) * HW;
      for (int64_t p0 = 0; p0 < P; p0 += chunk) {
        const int64_t p1 = std::min(P, p0 + chunk), pc = p1 - p0;
        const T beta = first ? T(0) : T(1);
        if (pointwise) {
          gemm(gemm_args<T>(kg, kc, pc, dyg + p0, P, 1, xg + p0, 1, HW, dwg, kc, beta));
        } else {
          im2col(xg, cg, g, p0, p1, cols);
          gemm(gemm_args<T>(kg, kc, pc, dyg + p0, P, 1, cols, 1, pc, dwg, kc, beta));
        }
        first = false;
      }
    }
    if (first) std::fill(dwg, dwg + kg * kc, T(0));   // empty batch
  }
}

template <typename T>
void grad_bias_impl(const T* dy, T* db, const Conv2dShape& s) {
  const int64_t P = s.g.out_h * s.g.out_w;
  at::parallel_for(0, s.out_channels, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      double sum = 0;
      for (int64_t n = 0; n < s.batch; ++n) {
        const T* row = dy + (n * s.out_channels + k) * P;
        for (int64_t p = 0; p < P; ++p) sum += row[p];
      }
      db[k] = static_cast<T>(sum);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view algorithm,
    std::array<bool, 3> output_mask) {
  const Conv2dShape s = check_conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups,
                                              std::string_view(algorithm.data(), algorithm.size()), kBackward);
  const at::Tensor dy = grad_output.contiguous(), x = input.contiguous(), w = weight.contiguous();
  // Outputs not asked for are returned empty (0 elements).
  at::Tensor dx = at::empty({0}, input.options()), dw = at::empty({0}, input.options()),
             db = at::empty({0}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kBackward, [&] {
    if (output_mask[0]) {
      dx = at::empty(input.sizes(), input.options());
      if (dx.numel() > 0 && winograd_tile(s.algorithm) != 0) {
        conv2d_winograd_grad_input(dy, weight, dx, s, winograd_tile(s.algorithm));
      } else if (dx.numel() > 0 && s.algorithm == Conv2dAlgorithm::direct) {
        conv2d_direct_grad_input<scalar_t>(dy.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), s);
      } else if (dx.numel() > 0) {
        grad_input_impl<scalar_t>(dy.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), s);
      }
      dx = in_format(dx, s.format);   // torch: the convolution's memory format
    }
    if (output_mask[1]) {
      dw = at::empty(weight.sizes(), weight.options());
      grad_weight_impl<scalar_t>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), s);
      dw = in_format(dw, s.format);
    }
    if (output_mask[2]) {
      db = at::empty({s.out_channels}, input.options());
      grad_bias_impl<scalar_t>(dy.data_ptr<scalar_t>(), db.data_ptr<scalar_t>(), s);
    }
  });
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv2d_backward", &conv2d_backward_cpu);
}

}  // namespace fastconv::cpu
