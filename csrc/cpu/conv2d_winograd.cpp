// Winograd convolution F(m x m, 3 x 3) on the CPU (algorithm="winograd", "winograd_2x2",
// "winograd_4x4"): Lavin & Gray's algorithm on fastconv's GEMM engine. See common/winograd.h for the
// math and cpu/conv2d_winograd_kernels.h for the layouts.
//
// Per chunk of tile rows (so the transformed buffers stay within kChunkBytes):
//   1. input transform   V[e][c][t] = B^T d B, parallel over (channel, run of tile rows), one tile
//                        per lane (narrow images put several rows of tiles in one vector);
//   2. alpha^2 GEMMs     M[e] (K x T) = U[e] (K x C) . V[e] (C x T), parallel over e, U[e] prepacked;
//   3. output transform  Y = A^T M A + bias, parallel over output channels, written
//                        straight into the NCHW output, partial tiles clipped.
// The filter transform U = G g G^T comes from the WeightCache (computed once per weight's
// contents, common/weight_cache.h). grad_input is the same pipeline on grad_output with the flipped, transposed filters.
#include "cpu/conv2d_winograd.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/checks.h"
#include "common/winograd.h"
#include "common/weight_cache.h"
#include "cpu/conv2d_winograd_kernels.h"
#include "cpu/gemm_kernels.h"
#include "cpu/isa.h"
#include "cpu/memory.h"

namespace fastconv::cpu {
namespace {

// The baseline-ISA build (16-byte vectors): the portable fallback.
constexpr int kVecBytes = 16;
#include "cpu/conv2d_winograd.inc"

template <typename T>
const WinogradKernels<T>& kernels_for() {
  static const WinogradKernels<T> baseline = make_winograd_kernels<T>();
  if constexpr (std::is_same_v<T, float>) {
    return for_active_isa(winograd_kernels_f32_avx512, winograd_kernels_f32_avx2, baseline);
  } else {
    return for_active_isa(winograd_kernels_f64_avx512, winograd_kernels_f64_avx2, baseline);
  }
}

// V and M of one chunk of tile rows. Measured on the ResNet-18 layers: 4 MiB splits conv5_x (7x7,
// 512 channels) so that its 37 MB of transformed filters stream from memory twice; 16 MiB was
// slower on conv2_x (larger per-GEMM slices); 8 MiB suits all four.
constexpr int64_t kChunkBytes = int64_t(8) << 20;
constexpr int64_t kRowsPerItem = 8;   // tile rows per input-transform work item (narrow rows share lanes)

// The GEMMs' K block: chains of at most 64 float additions per partial sum. With the engine's
// default 256, F(4x4)'s error on ResNet's 256- and 512-channel layers was 11x direct convolution's
// (the output transform amplifies the accumulation error); with 64 it is about 5x, at a few per cent
// of speed.
constexpr int64_t kKBlock = 64;

// out[n][k][oh][ow] = bias[k] + sum over c, i, j < 3 of in[n][c][oh + i - ph][ow + j - pw] * g[k][c][i][j]
// (pixels outside the input read zero; ph, pw may be negative).
struct WinogradProblem {
  int64_t batch, in_ch, out_ch, in_h, in_w, out_h, out_w, ph, pw;
};

template <typename T>
void run(int m, const T* x, const T* u, const T* bias, T* out, const WinogradProblem& p) {
  const auto& kern = kernels_for<T>();
  const int which = m == 4 ? 1 : 0;
  const int64_t E = (m + 2) * (m + 2);
  const int64_t tiles_h = (p.out_h + m - 1) / m, tiles_w = (p.out_w + m - 1) / m, rows = p.batch * tiles_h;
  const int64_t per_row = E * (p.in_ch + p.out_ch) * tiles_w * static_cast<int64_t>(sizeof(T));
  const int64_t fit = std::clamp<int64_t>(kChunkBytes / per_row, 1, rows), chunks = (rows + fit - 1) / fit;
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;   // equal chunks: no thin last GEMM
  T* v = scratch<T>(Scratch::winograd_v, E * p.in_ch * rows_per_chunk * tiles_w);
  T* mt = scratch<T>(Scratch::winograd_m, E * p.out_ch * rows_per_chunk * tiles_w);
  std::vector<WinogradTile> out_tiles(rows_per_chunk * tiles_w);
  std::vector<int64_t> row_image(rows_per_chunk), row_ih0(rows_per_chunk);
  const int64_t in_plane = p.in_h * p.in_w, out_plane = p.out_h * p.out_w;
  for (int64_t r0 = 0; r0 < rows; r0 += rows_per_chunk) {
    const int64_t nrows = std::min(rows_per_chunk, rows - r0), tc = nrows * tiles_w;
    for (int64_t t = 0; t < tc; ++t) {
      const int64_t row = r0 + t / tiles_w, n = row / tiles_h, th = row % tiles_h, tw = t % tiles_w;
      out_tiles[t] = WinogradTile{n * p.out_ch * out_plane, th * m - p.ph, tw * m - p.pw};
    }
    for (int64_t rr = 0; rr < nrows; ++rr) {
      row_image[rr] = (r0 + rr) / tiles_h;
      row_ih0[rr] = (r0 + rr) % tiles_h * m - p.ph;
    }
    const int64_t blocks = (nrows + kRowsPerItem - 1) / kRowsPerItem;
    at::parallel_for(0, p.in_ch * blocks, 1, [&](int64_t b, int64_t e) {
      for (int64_t item = b; item < e; ++item) {
        const int64_t c = item / blocks, rr = item % blocks * kRowsPerItem, nr = std::min(kRowsPerItem, nrows - rr);
        kern.input[which](x + c * in_plane, p.in_ch * in_plane, p.in_h, p.in_w, row_image.data() + rr,
                          row_ih0.data() + rr, nr, -p.pw, tiles_w, v + c * tc + rr * tiles_w, p.in_ch * tc);
      }
    });
    at::parallel_for(0, E, 1, [&](int64_t b, int64_t e_end) {
      for (int64_t e = b; e < e_end; ++e) {
        GemmArgs<T> g;
        g.m = p.out_ch; g.n = tc; g.k = p.in_ch;
        g.alpha = T(1); g.beta = T(0);
        g.a = nullptr; g.rs_a = p.in_ch; g.cs_a = 1;
        g.a_packed = u + e * gemm_packed_a_elems(p.out_ch, p.in_ch);
        g.k_block = kKBlock;
        g.b = v + e * p.in_ch * tc; g.rs_b = tc; g.cs_b = 1;
        g.c = mt + e * p.out_ch * tc; g.rs_c = tc; g.cs_c = 1;
        gemm(g);
      }
    });
    at::parallel_for(0, p.out_ch, 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        kern.output[which](mt + k * tc, p.out_ch * tc, out_tiles.data(), tc, p.ph, p.pw, out + k * out_plane,
                           p.out_h, p.out_w, bias != nullptr ? bias[k] : T(0));
      }
    });
  }
}

// U[e] (kout x cin) for the filters w viewed through the strides (see WinogradKernels::filter), each
// in the GEMM engine's packed-A form, which the alpha^2 GEMMs then read without packing. A transform
// the cache keeps gets its own tensor; one used once (a trained weight's, every step) is built in
// scratch memory, so each step does not fault in fresh pages for it.
template <typename T>
at::Tensor transform_filters(int m, const T* w, int64_t s_out, int64_t s_in, int64_t s_i, int64_t s_j, int64_t kout,
                             int64_t cin, bool keep) {
  const auto& kern = kernels_for<T>();
  const int64_t E = (m + 2) * (m + 2), packed = gemm_packed_a_elems(kout, cin);
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor out = keep ? at::empty({E, packed}, opts)
                        : at::from_blob(scratch<T>(Scratch::winograd_u, E * packed), {E, packed}, opts);
  T* up = scratch<T>(Scratch::winograd_v, E * kout * cin);   // not in use between calls to run()
  at::parallel_for(0, kout, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) kern.filter[m == 4 ? 1 : 0](w, s_out, s_in, s_i, s_j, k, cin, kout, up);
  });
  at::parallel_for(0, E, 1, [&](int64_t b, int64_t e_end) {
    for (int64_t e = b; e < e_end; ++e) {
      GemmArgs<T> g;
      g.m = kout; g.k = cin;
      g.k_block = kKBlock;
      g.a = up + e * kout * cin; g.rs_a = cin; g.cs_a = 1;
      gemm_pack_a(g, out.data_ptr<T>() + e * packed);
    }
  });
  return out;
}

}  // namespace

// Half precision (float16, bfloat16) runs in float32 in both directions: the values widened (exactly),
// the transforms and GEMMs in float32, the result rounded once to nearest even. Its error is float32
// Winograd's (README's accuracy table), far below the half-precision rounding of the output. The
// cache keys on the caller's weight, whatever its dtype: its float32 transform is what is kept.

void conv2d_winograd_forward(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias_in,
                             at::Tensor& out_in, const Conv2dShape& s, int m) {
  const auto& g = s.g;
  const at::Tensor x = half_as_float(x_in), bias = half_as_float(bias_in);
  at::Tensor out = x.scalar_type() == out_in.scalar_type() ? out_in : at::empty(out_in.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d", [&] {
    const int64_t variant = WeightCache::for_isa(WeightCache::winograd(m, false), int(active_isa()));
    const at::Tensor u = WeightCache::instance().get(weight, variant, [&] {
      const at::Tensor w = half_as_float(weight.contiguous());   // g[k][c][i][j]
      return transform_filters<scalar_t>(m, w.data_ptr<scalar_t>(), s.in_channels * 9, 9, 3, 1, s.out_channels,
                                         s.in_channels, WeightCache::cacheable(weight));
    });
    const WinogradProblem p{s.batch, s.in_channels, s.out_channels, g.in_h, g.in_w, g.out_h, g.out_w, g.ph, g.pw};
    run<scalar_t>(m, x.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
                  bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), p);
  });
  if (!out.is_same(out_in)) out_in.copy_(out);   // rounded to nearest even
}

void conv2d_winograd_grad_input(const at::Tensor& dy_in, const at::Tensor& weight, at::Tensor& dx_in,
                                const Conv2dShape& s, int m) {
  const auto& g = s.g;
  const at::Tensor dy = half_as_float(dy_in);
  at::Tensor dx = dy.scalar_type() == dx_in.scalar_type() ? dx_in : at::empty(dx_in.sizes(), dy.options());
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "conv2d_backward", [&] {
    // dx[c][ih][iw] = sum over k, i, j of dy[k][ih + i - (2 - ph)][iw + j - (2 - pw)] * w[k][c][2 - i][2 - j]:
    // filters g'[c][k][i][j] = w[k][c][2 - i][2 - j], read in place (start at w[0][0][2][2], step back).
    const int64_t variant = WeightCache::for_isa(WeightCache::winograd(m, true), int(active_isa()));
    const at::Tensor u = WeightCache::instance().get(weight, variant, [&] {
      const at::Tensor w = half_as_float(weight.contiguous());
      return transform_filters<scalar_t>(m, w.data_ptr<scalar_t>() + 8, 9, s.in_channels * 9, -3, -1,
                                         s.in_channels, s.out_channels, WeightCache::cacheable(weight));
    });
    const WinogradProblem p{s.batch, s.out_channels, s.in_channels, g.out_h, g.out_w, g.in_h, g.in_w, 2 - g.ph,
                            2 - g.pw};
    run<scalar_t>(m, dy.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), nullptr, dx.data_ptr<scalar_t>(), p);
  });
  if (!dx.is_same(dx_in)) dx_in.copy_(dx);   // rounded to nearest even
}

}  // namespace fastconv::cpu
