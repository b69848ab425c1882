// The depthwise convolution's drivers (see conv2d_depthwise.h) and its baseline-ISA primitives.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/conv2d.h"
#include "common/conv2d_args.h"
#include "cpu/conv2d_depthwise.h"
#include "cpu/gemm_kernels.h"
#include "cpu/isa.h"
#include "cpu/memory.h"

namespace fastconv::cpu {
namespace {

// The baseline-ISA build (16-byte vectors): the portable fallback.
constexpr int kVecBytes = 16;
#include "cpu/conv2d_depthwise.inc"

template <typename T>
const DepthwiseKernels<T>& kernels_for() {
  static const DepthwiseKernels<T> baseline = make_depthwise_kernels<T>();
  if constexpr (std::is_same_v<T, float>) {
    return for_active_isa(depthwise_kernels_f32_avx512, depthwise_kernels_f32_avx512_emulated,
                          depthwise_kernels_f32_avx2, baseline);
  } else {
    return for_active_isa(depthwise_kernels_f64_avx512, depthwise_kernels_f64_avx512_emulated,
                          depthwise_kernels_f64_avx2, baseline);
  }
}

// A zero-padded plane split by columns into sw phases: column u * sw + f of the padded plane is column u
// of phase f, so the taps of a row of outputs (sw apart) read contiguous runs. Each phase row is wide
// enough for the vector kernels to read whole vectors past a row of outputs from any tap.
struct Phases {
  int64_t rows, width, count;   // padded rows, columns per phase, phases
  int64_t elems() const { return rows * width * count; }
  // Element (padded row r, padded column col).
  int64_t at(int64_t r, int64_t col) const { return (col % count * rows + r) * width + col / count; }
};

inline int64_t round_up(int64_t n, int64_t to) {
  return (n + to - 1) / to * to;
}

// Phase columns of the farthest tap: tap j of output column u reads phase column u + j * dw / sw.
inline int64_t max_shift(const Conv2dGeometry& g) {
  return (g.kw - 1) * g.dw / g.sw;
}

Phases phases_of(const Conv2dGeometry& g, int64_t lanes) {
  const int64_t cols = g.in_w + 2 * g.pw;
  const int64_t width = std::max((cols + g.sw - 1) / g.sw, max_shift(g) + round_up(g.out_w, lanes));
  return {g.in_h + 2 * g.ph, width, g.sw};
}

// The first phase column of phase f that holds an image column (padded column u * sw + f >= pw).
inline int64_t first_inside(const Conv2dGeometry& g, int64_t f) {
  return f >= g.pw ? 0 : (g.pw - f + g.sw - 1) / g.sw;
}

// The plane `src` (in_h x in_w) into the phases. Only the image's own positions are written, the same
// ones for every plane: the padding and the slack keep what zero_phases put there.
template <typename T>
void split(const T* src, const Conv2dGeometry& g, const Phases& ph, T* buf) {
  if (ph.count == 2) {   // even image columns to one phase, odd to the other; padded rows are ph.width apart
    kernels_for<T>().split2(src, g.in_h, g.in_w, buf + ph.at(g.ph, g.pw), buf + ph.at(g.ph, g.pw + 1), ph.width);
    return;
  }
  for (int64_t ih = 0; ih < g.in_h; ++ih) {
    const T* row = src + ih * g.in_w;
    if (ph.count == 1) {
      std::copy(row, row + g.in_w, buf + ph.at(ih + g.ph, g.pw));
    } else {
      for (int64_t f = 0; f < ph.count; ++f) {   // image column iw = u * sw + f - pw
        T* dst = buf + ph.at(ih + g.ph, f);
        for (int64_t u = first_inside(g, f), iw = u * g.sw + f - g.pw; iw < g.in_w; ++u, iw += g.sw) dst[u] = row[iw];
      }
    }
  }
}

// A thread's phase buffer, zeroed once: split then writes the same image positions for every plane.
template <typename T>
T* zero_phases(const Phases& ph) {
  T* buf = scratch<T>(Scratch::conv_pad, ph.elems());
  std::fill(buf, buf + ph.elems(), T(0));
  return buf;
}

// The phase rows that the taps of every output row read from, rows[oh * taps + t] (tap t = (i, j) starts
// at output column 0): the same for every plane split into `buf`.
template <typename T>
std::vector<const T*> tap_rows(const T* buf, const Conv2dGeometry& g, const Phases& ph) {
  std::vector<const T*> rows;
  rows.reserve(g.out_h * g.kh * g.kw);
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j) rows.push_back(buf + ph.at(oh * g.sh + i * g.dh, j * g.dw));
    }
  }
  return rows;
}

// The weight as [c][t] (NCHW) or [t][c] (channels-last), from its strides.
template <typename T>
std::vector<T> weight_table(const T* w, const DirectWeightStrides& ws, const Conv2dShape& s, bool taps_major) {
  const int64_t C = s.in_channels, taps = s.g.kh * s.g.kw;
  std::vector<T> out(C * taps);
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t t = 0; t < taps; ++t) {
      out[taps_major ? t * C + c : c * taps + t] = w[c * ws.k + t / s.g.kw * ws.i + t % s.g.kw * ws.j];
    }
  }
  return out;
}

// The taps of output pixel (oh, ow) that read inside the image: `src` gets where each reads in x (an
// NHWC image of C channels starting at `image`), `tap` which tap it is; returns how many.
template <typename T>
int64_t taps_inside(const T* image, const Conv2dGeometry& g, int64_t C, int64_t oh, int64_t ow, const T** src,
                    int64_t* tap) {
  int64_t used = 0;
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t ih = conv_tap(oh, i, g.sh, g.ph, g.dh);
    if (ih < 0 || ih >= g.in_h) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t iw = conv_tap(ow, j, g.sw, g.pw, g.dw);
      if (iw < 0 || iw >= g.in_w) continue;
      src[used] = image + (ih * g.in_w + iw) * C;
      tap[used++] = i * g.kw + j;
    }
  }
  return used;
}

// The output columns [lo, hi) whose every tap reads inside the input row.
void inside_columns(const Conv2dGeometry& g, int64_t* lo, int64_t* hi) {
  int64_t lo0, hi0, lo1, hi1;
  conv_tap_columns(g, 0, &lo0, &hi0);
  conv_tap_columns(g, g.kw - 1, &lo1, &hi1);
  *lo = std::max(lo0, lo1);
  *hi = std::max(*lo, std::min(hi0, hi1));
}

// The taps of output row oh that read inside the image's height, for an NHWC image of C channels: where
// each reads, as offsets from the pixel its tap j = 0 reads (off), and which tap it is (tap). Returns
// how many.
int64_t row_taps(const Conv2dGeometry& g, int64_t C, int64_t oh, int64_t* off, int64_t* tap) {
  int64_t used = 0;
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t ih = conv_tap(oh, i, g.sh, g.ph, g.dh);
    if (ih < 0 || ih >= g.in_h) continue;
    for (int64_t j = 0; j < g.kw; ++j, ++used) {
      off[used] = (ih * g.in_w + j * g.dw) * C;
      tap[used] = i * g.kw + j;
    }
  }
  return used;
}

// NCHW planes of at most kSmallPlane pixels run the channels-last kernels on channels-last copies in
// scratch memory (bounded by a quarter of the workspace): a vector along a row of 4, 7 or 14 pixels
// is a quarter to half empty and each plane's setup is paid for a few vectors of work. MobileNet-v2's
// 3x3 layers at batch 16 (Zen 3, 2 threads, forward + backward): 960@4x4 4.5 -> 1.3 ms, 576@7x7
// 5.1 -> 2.4, 192@14x14 4.0 -> 3.1 (torch 1.4, 1.9, 2.2). With the copies transposed by blocks
// (transpose_images) the forward passes went from 0.5-0.7x torch to 1.1-1.3x at 4x4 and 7x7; at 28x28
// the NCHW kernels stay ahead (144 channels, stride 1: 0.9-1.3 ms against 1.7-2.3 through the copies).
// The backward passes take the copies up to 32x32, since the channels-last ones run by rows: forward +
// backward at 28x28, batch 16, three interleaved runs: 144 channels stride 2 3.5-3.7 -> 2.8-2.9 ms, 96
// channels stride 1 3.0-3.3 -> 2.4-2.7, 144 channels stride 1 4.4-4.5 -> 4.6-4.8 (torch 2.6-3.3,
// 2.2-3.0, 4.0-4.7).
constexpr int64_t kSmallPlane = 256, kSmallPlaneBackward = 1024;

bool through_nhwc(const Conv2dShape& s, int64_t elem, int64_t small_plane = kSmallPlane) {
  const int64_t pixels = std::max(s.g.in_h * s.g.in_w, s.g.out_h * s.g.out_w);
  return s.g.in_h * s.g.in_w <= small_plane &&
         s.batch * s.in_channels * pixels * elem <= static_cast<int64_t>(kWorkspaceBytes) / 4;
}

// N x C x HW <-> N x HW x C, images in parallel, by the GEMM engine's block transposes (element by
// element, these copies took three times the depthwise kernel's own time at 384 channels of 7x7).
template <typename T>
void transpose_images(const T* src, int64_t N, int64_t rows, int64_t cols, T* dst) {
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      gemm_transpose(src + n * rows * cols, rows, cols, cols, dst + n * rows * cols, rows);
    }
  });
}

// run(a, b) on channels-last copies: a of `src` (N x C x src_pixels), b written back into `dst`
// (N x C x dst_pixels).
template <typename T, typename Run>
void on_nhwc_copies(const T* src, int64_t src_pixels, T* dst, int64_t dst_pixels, const Conv2dShape& s, const Run& run) {
  const int64_t C = s.in_channels;
  T* a = scratch<T>(Scratch::conv_pad, s.batch * src_pixels * C);
  T* b = scratch<T>(Scratch::conv_cols, s.batch * dst_pixels * C);
  transpose_images(src, s.batch, C, src_pixels, a);
  run(a, b);
  transpose_images(b, s.batch, dst_pixels, C, dst);
}

}  // namespace

bool depthwise_applies(const Conv2dShape& s, int64_t elem, bool nhwc) {
  if (s.groups != s.in_channels || s.out_channels != s.in_channels || s.in_channels == 0) return false;
  return nhwc || phases_of(s.g, 64 / elem).elems() * elem * 2 * at::get_num_threads() <=
                     static_cast<int64_t>(kWorkspaceBytes);
}

template <typename T>
void conv2d_depthwise_forward(const T* x, const T* w, const DirectWeightStrides& ws, const T* bias, T* out,
                              const Conv2dShape& s, bool nhwc) {
  const auto& g = s.g;
  const auto& k = kernels_for<T>();
  const int64_t C = s.in_channels, taps = g.kh * g.kw, OW = g.out_w;
  const int64_t HW = g.in_h * g.in_w, P = g.out_h * OW;
  if (!nhwc && through_nhwc(s, sizeof(T))) {
    on_nhwc_copies(x, HW, out, P, s, [&](const T* a, T* b) { conv2d_depthwise_forward(a, w, ws, bias, b, s, true); });
    return;
  }
  const std::vector<T> wt = weight_table(w, ws, s, nhwc);
  if (!nhwc) {   // planes in parallel, each split into the thread's phases and gathered into its output
    const Phases ph = phases_of(g, k.lanes);
    at::parallel_for(0, s.batch * C, 1, [&](int64_t p0, int64_t p1) {
      T* buf = zero_phases<T>(ph);
      const std::vector<const T*> rows = tap_rows(buf, g, ph);
      for (int64_t plane = p0; plane < p1; ++plane) {
        const int64_t c = plane % C;
        split(x + plane * g.in_h * g.in_w, g, ph, buf);
        k.gather(out + plane * P, OW, rows.data(), g.out_h, wt.data() + c * taps, taps, OW,
                 bias != nullptr ? bias[c] : T(0));
      }
    });
    return;
  }
  // Rows of output pixels. Columns [ow_lo, ow_hi) have every tap inside the image's width: the taps
  // of such a row inside its height read the same offsets from each pixel's origin (channels_row);
  // the columns at the edges list their taps pixel by pixel.
  int64_t ow_lo, ow_hi;
  inside_columns(g, &ow_lo, &ow_hi);
  at::parallel_for(0, s.batch * g.out_h, 1, [&](int64_t r0, int64_t r1) {
    std::vector<const T*> src(taps), wr(taps);
    std::vector<int64_t> tap(taps), off(taps);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.out_h, oh = r % g.out_h;
      const T* image = x + n * g.in_h * g.in_w * C;
      const auto edge = [&](int64_t ow) {
        const int64_t used = taps_inside(image, g, C, oh, ow, src.data(), tap.data());
        for (int64_t e = 0; e < used; ++e) wr[e] = wt.data() + tap[e] * C;
        k.channels(out + (r * OW + ow) * C, src.data(), wr.data(), used, C, bias);
      };
      for (int64_t ow = 0; ow < ow_lo; ++ow) edge(ow);
      if (ow_hi > ow_lo) {
        const int64_t used = row_taps(g, C, oh, off.data(), tap.data());
        for (int64_t e = 0; e < used; ++e) wr[e] = wt.data() + tap[e] * C;
        k.channels_row(out + (r * OW + ow_lo) * C, image + (ow_lo * g.sw - g.pw) * C, g.sw * C, off.data(), wr.data(),
                       used, C, bias, ow_hi - ow_lo);
      }
      for (int64_t ow = ow_hi; ow < OW; ++ow) edge(ow);
    }
  });
}

template <typename T>
void conv2d_depthwise_grad_input(const T* dy, const T* w, const DirectWeightStrides& ws, T* dx, const Conv2dShape& s,
                                 bool nhwc) {
  const auto& g = s.g;
  const auto& k = kernels_for<T>();
  const int64_t C = s.in_channels, taps = g.kh * g.kw, OW = g.out_w;
  const int64_t HW = g.in_h * g.in_w, P = g.out_h * OW;
  if (!nhwc && through_nhwc(s, sizeof(T), kSmallPlaneBackward)) {
    on_nhwc_copies(dy, P, dx, HW, s, [&](const T* a, T* b) { conv2d_depthwise_grad_input(a, w, ws, b, s, true); });
    return;
  }
  const std::vector<T> wt = weight_table(w, ws, s, nhwc);
  if (!nhwc) {   // planes in parallel, each input row gathered phase by phase from a zero-padded dy
    // dx's padded row r, phase f, column u = sum over taps (i, j) with j * dw = f (mod sw) whose output
    // row oh = (r - i * dh) / sh exists of w[i][j] * dy[oh][u - j * dw / sw] (zero outside the row).
    const int64_t shift = max_shift(g);
    const int64_t width = (g.in_w + 2 * g.pw + g.sw - 1) / g.sw, ld = round_up(width, k.lanes);
    const int64_t dy_ld = shift + std::max(OW, ld);   // dy rows with `shift` zeros before and zeros after
    // The taps of each (input row, phase), the same for every plane: list l = ih * sw + f holds entries
    // [first[l], first[l + 1]) of (where in dyp the tap reads, which tap).
    std::vector<int64_t> first(g.in_h * g.sw + 1, 0), offset, tap;
    for (int64_t ih = 0; ih < g.in_h; ++ih) {
      for (int64_t f = 0; f < g.sw; ++f) {
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t oh = conv_reader(ih, i, g.sh, g.ph, g.dh, g.out_h);
          for (int64_t j = 0; oh >= 0 && j < g.kw; ++j) {
            if (j * g.dw % g.sw != f) continue;
            offset.push_back(oh * dy_ld + shift - j * g.dw / g.sw);
            tap.push_back(i * g.kw + j);
          }
        }
        first[ih * g.sw + f + 1] = static_cast<int64_t>(offset.size());
      }
    }
    at::parallel_for(0, s.batch * C, 1, [&](int64_t p0, int64_t p1) {
      T* dyp = scratch<T>(Scratch::conv_pad, g.out_h * dy_ld);
      T* res = scratch<T>(Scratch::conv_cols, g.sw * ld);
      std::vector<const T*> src(taps);
      std::vector<T> wsel(taps);
      std::fill(dyp, dyp + g.out_h * dy_ld, T(0));
      for (int64_t plane = p0; plane < p1; ++plane) {
        const T* wc = wt.data() + plane % C * taps;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const T* row = dy + (plane * g.out_h + oh) * OW;
          std::copy(row, row + OW, dyp + oh * dy_ld + shift);
        }
        T* dx_plane = dx + plane * g.in_h * g.in_w;
        for (int64_t ih = 0; ih < g.in_h; ++ih) {
          for (int64_t f = 0; f < g.sw; ++f) {
            const int64_t e0 = first[ih * g.sw + f], used = first[ih * g.sw + f + 1] - e0;
            for (int64_t e = 0; e < used; ++e) {
              src[e] = dyp + offset[e0 + e];
              wsel[e] = wc[tap[e0 + e]];
            }
            k.gather(res + f * ld, ld, src.data(), 1, wsel.data(), used, width, T(0));
          }
          T* dst = dx_plane + ih * g.in_w;   // image column iw = u * sw + f - pw of phase f
          for (int64_t f = 0; f < g.sw; ++f) {
            const T* phase = res + f * ld;
            for (int64_t u = first_inside(g, f), iw = u * g.sw + f - g.pw; iw < g.in_w; ++u, iw += g.sw) dst[iw] = phase[u];
          }
        }
      }
    });
    return;
  }
  // Rows of input pixels, each gathering from the output pixels whose taps read it. With a horizontal
  // stride of 1, columns [iw_lo, iw_hi) are read by every tap j of the rows they are read from: there
  // the taps of a row read the same offsets from each pixel's origin (channels_row, as the forward
  // pass); the other columns (and every column at larger strides) list their taps pixel by pixel.
  const int64_t iw_lo = g.sw != 1 ? g.in_w : std::clamp<int64_t>((g.kw - 1) * g.dw - g.pw, 0, g.in_w);
  const int64_t iw_hi = g.sw != 1 ? g.in_w : std::clamp<int64_t>(OW - g.pw, iw_lo, g.in_w);
  at::parallel_for(0, s.batch * g.in_h, 1, [&](int64_t r0, int64_t r1) {
    std::vector<const T*> src(taps), wr(taps);
    std::vector<int64_t> off(taps);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.in_h, ih = r % g.in_h;
      const T* image = dy + n * g.out_h * OW * C;
      const auto edge = [&](int64_t iw) {
        int64_t used = 0;
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t oh = conv_reader(ih, i, g.sh, g.ph, g.dh, g.out_h);
          if (oh < 0) continue;
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t ow = conv_reader(iw, j, g.sw, g.pw, g.dw, OW);
            if (ow < 0) continue;
            src[used] = image + (oh * OW + ow) * C;
            wr[used++] = wt.data() + (i * g.kw + j) * C;
          }
        }
        k.channels(dx + (r * g.in_w + iw) * C, src.data(), wr.data(), used, C, nullptr);
      };
      for (int64_t iw = 0; iw < iw_lo; ++iw) edge(iw);
      if (iw_hi > iw_lo) {   // offsets from the output column that tap j = 0 of input column iw_lo reads
        // A row's taps from the last j down, so that their offsets rise by dw * C: at dilation 1 they
        // are then runs that channels_row shares loads along (144@28x28, channels-last, batch 16, Zen
        // 4: 0.76 -> 0.54 ms; 32@56x56 0.56 -> 0.49).
        int64_t used = 0;
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t oh = conv_reader(ih, i, g.sh, g.ph, g.dh, g.out_h);
          if (oh < 0) continue;
          for (int64_t j = g.kw - 1; j >= 0; --j, ++used) {
            off[used] = (oh * OW - j * g.dw) * C;
            wr[used] = wt.data() + (i * g.kw + j) * C;
          }
        }
        k.channels_row(dx + (r * g.in_w + iw_lo) * C, image + (iw_lo + g.pw) * C, C, off.data(), wr.data(), used, C,
                       nullptr, iw_hi - iw_lo);
      }
      for (int64_t iw = iw_hi; iw < g.in_w; ++iw) edge(iw);
    }
  });
}

template <typename T>
void conv2d_depthwise_grad_weight(const T* dy, const T* x, T* dw, const Conv2dShape& s, bool nhwc) {
  const auto& g = s.g;
  const auto& k = kernels_for<T>();
  const int64_t C = s.in_channels, taps = g.kh * g.kw, OW = g.out_w;
  if (!nhwc && through_nhwc(s, sizeof(T), kSmallPlaneBackward)) {
    const int64_t HW = g.in_h * g.in_w, P = g.out_h * OW;
    T* xt = scratch<T>(Scratch::conv_pad, s.batch * HW * C);
    T* dyt = scratch<T>(Scratch::conv_cols, s.batch * P * C);
    transpose_images(x, s.batch, C, HW, xt);
    transpose_images(dy, s.batch, C, P, dyt);
    conv2d_depthwise_grad_weight(dyt, xt, dw, s, true);
    return;
  }
  if (!nhwc) {   // channels in parallel, each summing its planes' products lane by lane
    const Phases ph = phases_of(g, k.lanes);
    const int64_t ld = round_up(OW, k.lanes);
    constexpr int64_t kLanes = kDepthwiseMaxLanes<T>;
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      T* buf = zero_phases<T>(ph);
      T* dyp = scratch<T>(Scratch::conv_cols, g.out_h * ld);   // dy's rows, with whole vectors' slack
      const std::vector<const T*> rows = tap_rows(buf, g, ph);
      std::vector<T> acc(taps * kLanes);
      for (int64_t c = c0; c < c1; ++c) {
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t n = 0; n < s.batch; ++n) {
          const int64_t plane = n * C + c;
          split(x + plane * g.in_h * g.in_w, g, ph, buf);
          for (int64_t oh = 0; oh < g.out_h; ++oh) {
            const T* row = dy + (plane * g.out_h + oh) * OW;
            std::copy(row, row + OW, dyp + oh * ld);
          }
          for (int64_t oh = 0; oh < g.out_h; ++oh) k.dots(dyp + oh * ld, rows.data() + oh * taps, taps, OW, acc.data());
        }
        for (int64_t t = 0; t < taps; ++t) {
          double sum = 0;
          for (int64_t l = 0; l < kLanes; ++l) sum += acc[t * kLanes + l];
          dw[c * taps + t] = static_cast<T>(sum);
        }
      }
    });
    return;
  }
  // Channels-last: rows of output pixels shared out to the threads, each summing into acc[t][c].
  const int64_t rows = s.batch * g.out_h, elems = taps * C;
  // The columns with every tap inside the image sum a row at a time (channels_acc_row, as the forward
  // pass's channels_row), the others pixel by pixel.
  int64_t ow_lo, ow_hi;
  inside_columns(g, &ow_lo, &ow_hi);
  const auto sum_rows = [&](int64_t r0, int64_t r1, T* acc) {
    std::fill(acc, acc + elems, T(0));
    std::vector<const T*> src(taps);
    std::vector<T*> dst(taps);
    std::vector<int64_t> tap(taps), off(taps);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.out_h, oh = r % g.out_h;
      const T* image = x + n * g.in_h * g.in_w * C;
      const auto edge = [&](int64_t ow) {
        const int64_t used = taps_inside(image, g, C, oh, ow, src.data(), tap.data());
        for (int64_t e = 0; e < used; ++e) dst[e] = acc + tap[e] * C;
        k.channels_acc(dst.data(), dy + (r * OW + ow) * C, src.data(), used, C);
      };
      for (int64_t ow = 0; ow < ow_lo; ++ow) edge(ow);
      if (ow_hi > ow_lo) {
        const int64_t used = row_taps(g, C, oh, off.data(), tap.data());
        for (int64_t e = 0; e < used; ++e) dst[e] = acc + tap[e] * C;
        k.channels_acc_row(dst.data(), dy + (r * OW + ow_lo) * C, image + (ow_lo * g.sw - g.pw) * C, g.sw * C,
                           off.data(), used, C, ow_hi - ow_lo);
      }
      for (int64_t ow = ow_hi; ow < OW; ++ow) edge(ow);
    }
  };
  std::vector<T> acc(elems);
  const int64_t parts = std::min<int64_t>(at::get_num_threads(), rows);
  if (parts <= 1) {
    sum_rows(0, rows, acc.data());
  } else {
    sum_in_parts(parts, rows, elems, acc.data(), sum_rows);
  }
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t t = 0; t < taps; ++t) dw[c * taps + t] = acc[t * C + c];
  }
}

template void conv2d_depthwise_forward<float>(const float*, const float*, const DirectWeightStrides&, const float*,
                                              float*, const Conv2dShape&, bool);
template void conv2d_depthwise_forward<double>(const double*, const double*, const DirectWeightStrides&, const double*,
                                               double*, const Conv2dShape&, bool);
template void conv2d_depthwise_grad_input<float>(const float*, const float*, const DirectWeightStrides&, float*,
                                                 const Conv2dShape&, bool);
template void conv2d_depthwise_grad_input<double>(const double*, const double*, const DirectWeightStrides&, double*,
                                                  const Conv2dShape&, bool);
template void conv2d_depthwise_grad_weight<float>(const float*, const float*, float*, const Conv2dShape&, bool);
template void conv2d_depthwise_grad_weight<double>(const double*, const double*, double*, const Conv2dShape&, bool);

}  // namespace fastconv::cpu
