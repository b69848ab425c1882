// Max-pooling geometry and the per-window reduction, shared by the CPU and CUDA kernels.
//
// Conventions follow ATen's pooling (aten/src/ATen/native/Pool.h and the CPU/CUDA max-pool kernels),
// so that outputs and indices are bit-identical to torch's:
//   * output size  O = floor((I + 2p - d(k-1) - 1 + (ceil_mode ? s-1 : 0)) / s) + 1, and in ceil mode the
//     last window must start inside the input or the left padding: if (O-1)s >= I + p then O -= 1;
//   * a window's taps are start + j*d (j = 0..k-1), start = o*s - p; taps outside [0, I) are skipped;
//   * the running maximum starts at -inf with the index of the first in-bounds tap; a tap replaces it
//     when it is strictly greater or when it is NaN. Ties therefore keep the first tap in row-major
//     order, and a window with NaN reports NaN with the index of its last NaN;
//   * indices are flat offsets into one input plane: ih * W + iw.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/convert.h"
#include "common/macros.h"

namespace fastconv {

// Floor division that rounds towards -inf, for possibly negative numerators (ATen's div_rtn).
FC_HD int64_t div_floor(int64_t a, int64_t b) {
  int64_t q = a / b, r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? q - 1 : q;
}

FC_HD int64_t pool_output_size(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dil,
                               bool ceil_mode) {
  int64_t out = div_floor(in + 2 * pad - dil * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0), stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

// The first in-bounds tap of a window starting at `start` (torch: `while (start < 0) start += d`).
FC_HD int64_t first_tap(int64_t start, int64_t dil) {
  return start >= 0 ? start : start + ((-start + dil - 1) / dil) * dil;
}

// One past the last position a window starting at `start` can touch, clipped to the input.
FC_HD int64_t window_end(int64_t start, int64_t k, int64_t dil, int64_t in) {
  int64_t e = start + (k - 1) * dil + 1;
  return e < in ? e : in;
}

struct Pool2dGeometry {
  int64_t in_h, in_w, out_h, out_w;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

template <typename T>
FC_HD bool is_nan(T v) { return v != v; }

// Max over the window of output (oh, ow). Element (ih, iw) of the plane is at plane[(ih*W + iw) * step]
// (step = 1 for NCHW, C for channels-last). Acc is the comparison type (float for half types).
template <typename T, typename Acc>
FC_HD void max_pool_window(const T* plane, int64_t step, const Pool2dGeometry& g, int64_t oh, int64_t ow,
                           Acc* max_out, int64_t* index_out) {
  const int64_t h_start = oh * g.sh - g.ph, w_start = ow * g.sw - g.pw;
  const int64_t h0 = first_tap(h_start, g.dh), h1 = window_end(h_start, g.kh, g.dh, g.in_h);
  const int64_t w0 = first_tap(w_start, g.dw), w1 = window_end(w_start, g.kw, g.dw, g.in_w);
  Acc best = -Acc(INFINITY);
  int64_t best_index = h0 * g.in_w + w0;
  for (int64_t ih = h0; ih < h1; ih += g.dh) {
    for (int64_t iw = w0; iw < w1; iw += g.dw) {
      const int64_t index = ih * g.in_w + iw;
      const Acc v = ::fastconv::convert<Acc>(plane[index * step]);
      if (v > best || is_nan(v)) {
        best = v;
        best_index = index;
      }
    }
  }
  *max_out = best;
  *index_out = best_index;
}

// The outputs whose windows can contain input position i along one axis: [first, last) (ATen's
// max_pool backward ranges). Used by backward kernels that gather instead of scatter.
FC_HD int64_t covering_first(int64_t i, int64_t k, int64_t pad, int64_t stride, int64_t dil) {
  const int64_t span = (k - 1) * dil + 1;
  return (i + pad < span) ? 0 : (i + pad - span) / stride + 1;
}
FC_HD int64_t covering_last(int64_t i, int64_t pad, int64_t stride, int64_t out) {
  const int64_t e = (i + pad) / stride + 1;
  return e < out ? e : out;
}

}  // namespace fastconv
