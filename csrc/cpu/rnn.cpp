// CPU glue and drivers of the LSTM and GRU layers (fastconv::lstm_layer, gru_layer and their
// backwards) on the GEMM engine. The structure of a layer, in the engine's vocabulary:
//
//   forward   one large GEMM for the input projection of every time step, x W_ih^T + bias, straight into
//             the gate buffer; W_hh^T packed once per call (the engine's prepacked B) in column slices,
//             one per thread; then per step two parallel regions: the recurrent GEMM h W_hh^T
//             accumulated into the gates, each thread on its slice of columns (so each streams only
//             its share of W_hh from the cache: a step is a thin GEMM, M = batch, and re-reading the
//             whole weight per thread cost more than the arithmetic), then the fused step kernel
//             (rnn_kernels.inc: nonlinearities, cell update, h) over blocks of rows.
//   backward  through time in the opposite order, per step the fused gate gradients over blocks of rows
//             and one column-sliced GEMM dgates W_hh for dh_prev; then the weight gradients as a few
//             large GEMMs over all tokens: dW_ih = dgates^T x, dW_hh = dgates^T h_prev.
//
// Packed sequences: step t runs on its batch_sizes[t] rows only (common/rnn_args.h), so a packed
// batch costs what its real tokens cost.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/rnn.h"
#include "common/rnn_args.h"
#include "cpu/gemm_kernels.h"
#include "cpu/isa.h"
#include "cpu/memory.h"
#include "cpu/rnn_kernels.h"

namespace fastconv::cpu {
namespace {

// The baseline-ISA build (16-byte vectors): the portable fallback.
constexpr int kVecBytes = 16;
#include "cpu/rnn_kernels.inc"

template <typename T>
const RnnKernels<T>& rnn_kernels() {
  static const RnnKernels<T> baseline = make_rnn_kernels<T>();
  if constexpr (std::is_same_v<T, float>) {
    return for_active_isa(rnn_kernels_f32_avx512, rnn_kernels_f32_avx2, baseline);
  } else {
    return for_active_isa(rnn_kernels_f64_avx512, rnn_kernels_f64_avx2, baseline);
  }
}

// C (m x n, row stride rs_c) = A B (+ C when accumulate); A and B given by strides, or B prepacked.
template <typename T>
void gemm_into(int64_t m, int64_t n, int64_t k, const T* a, int64_t rs_a, int64_t cs_a, const T* b, int64_t rs_b,
               int64_t cs_b, T* c, int64_t rs_c, bool accumulate, const T* b_packed = nullptr) {
  GemmArgs<T> g;
  g.m = m; g.n = n; g.k = k;
  g.alpha = T(1);
  g.beta = accumulate ? T(1) : T(0);
  g.a = a; g.rs_a = rs_a; g.cs_a = cs_a;
  g.b = b; g.rs_b = rs_b; g.cs_b = cs_b;
  g.c = c; g.rs_c = rs_c; g.cs_c = 1;
  g.b_packed = b_packed;
  gemm<T>(g);
}

// op(B) = b (k x n, strides rs_b, cs_b) packed once per call in column slices, one per thread (in
// per-thread scratch memory of the calling thread, slot `slot`), for the per-step GEMMs.
template <typename T>
struct SlicedB {
  int64_t k = 0, n = 0, width = 0;   // slice s: columns [s * width, min(n, (s + 1) * width))
  std::vector<const T*> packed;
};

template <typename T>
SlicedB<T> pack_sliced(const T* b, int64_t k, int64_t n, int64_t rs_b, int64_t cs_b, Scratch slot) {
  const int64_t nr = gemm_tile<T>().nr;
  const int64_t panels = (n + nr - 1) / nr;
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), panels));
  SlicedB<T> w;
  w.k = k;
  w.n = n;
  w.width = (panels + slices - 1) / slices * nr;
  T* dst = scratch<T>(slot, gemm_packed_b_elems<T>(k, n));   // whole panels: slices start 64-byte aligned
  for (int64_t j0 = 0; j0 < n; j0 += w.width) {
    GemmArgs<T> g{};
    g.k = k;
    g.n = std::min(w.width, n - j0);
    g.b = b + j0 * cs_b;
    g.rs_b = rs_b;
    g.cs_b = cs_b;
    gemm_pack_b<T>(g, dst);
    w.packed.push_back(dst);
    dst += gemm_packed_b_elems<T>(k, g.n);
  }
  return w;
}

// C (m x n, row stride rs_c) (+)= A op(B), one parallel region over the slices of op(B). With `fill`,
// each row of C is first set to fill[0, n) (a bias) and the product added to it.
template <typename T>
void sliced_gemm(int64_t m, const SlicedB<T>& w, const T* a, int64_t rs_a, T* c, int64_t rs_c, bool accumulate,
                 const T* fill = nullptr) {
  if (m == 0) return;
  at::parallel_for(0, static_cast<int64_t>(w.packed.size()), 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t j0 = s * w.width, n = std::min(w.width, w.n - j0);
      if (fill != nullptr) {
        for (int64_t r = 0; r < m; ++r) std::copy(fill + j0, fill + j0 + n, c + r * rs_c + j0);
      }
      gemm_into<T>(m, n, w.k, a, rs_a, 1, nullptr, 0, 0, c + j0, rs_c, accumulate || fill != nullptr,
                   w.packed[static_cast<size_t>(s)]);
    }
  });
}

// Splits a step's rows into one block per thread (fewer when there are few rows) and runs fn(r0, r1)
// on each in one parallel region.
template <typename F>
void for_row_blocks(int64_t rows, const F& fn) {
  if (rows == 0) return;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  const int64_t block = (rows + threads - 1) / threads;
  at::parallel_for(0, (rows + block - 1) / block, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) fn(blk * block, std::min(rows, (blk + 1) * block));
  });
}

// op(B) packed whole (for GEMMs that run inside a row block: the projection's).
template <typename T>
const T* pack_whole(const T* b, int64_t k, int64_t n, int64_t rs_b, int64_t cs_b, Scratch slot) {
  T* dst = scratch<T>(slot, gemm_packed_b_elems<T>(k, n));
  GemmArgs<T> g{};
  g.k = k; g.n = n; g.b = b; g.rs_b = rs_b; g.cs_b = cs_b;
  gemm_pack_b<T>(g, dst);
  return dst;
}

// x W_ih^T + the biases, into the first cols columns of out (row stride ld).
template <typename T>
void input_projection(const RnnLayerShape& s, const T* x, const T* w_ih, const at::Tensor& bias, int64_t cols,
                      T* out, int64_t ld) {
  if (bias.defined()) {
    const T* bp = bias.data_ptr<T>();
    at::parallel_for(0, s.N, 256, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) std::copy(bp, bp + cols, out + r * ld);
    });
  }
  gemm_into<T>(s.N, cols, s.I, x, s.I, 1, w_ih, 1, s.I, out, ld, bias.defined());
}

at::Tensor sum_bias(const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  const bool has_ih = b_ih.has_value() && b_ih->defined(), has_hh = b_hh.has_value() && b_hh->defined();
  if (has_ih && has_hh) return (*b_ih + *b_hh).contiguous();
  if (has_ih) return b_ih->contiguous();
  if (has_hh) return b_hh->contiguous();
  return at::Tensor();
}

// ---------------------------------------------------------------------------------------------------
// LSTM. Workspace per token: the activated gates i, f, g, o (4H), c' (H) and, with a projection,
// r = o tanh(c') (H), the projection's input. That is what the backward needs and cannot get cheaper:
// the gate pre-activations would need the nonlinearities again, and h_prev / c_prev are gathered from
// the outputs and c' of the step before.
// ---------------------------------------------------------------------------------------------------
constexpr const char* kLstm = "lstm_layer";
constexpr const char* kLstmBackward = "lstm_layer_backward";

template <typename T>
void lstm_forward(const RnnLayerShape& s, bool reverse, const at::Tensor& x, const at::Tensor& w_ih,
                  const at::Tensor& w_hh, const at::Tensor& bias, const at::Tensor& w_hr, at::Tensor& out,
                  at::Tensor& hy, at::Tensor& cy, at::Tensor& ws) {
  const int64_t H = s.H, P = s.Hout, ldw = ws.size(1);
  const bool proj = w_hr.defined();
  T* wsp = ws.data_ptr<T>();
  input_projection<T>(s, x.data_ptr<T>(), w_ih.data_ptr<T>(), bias, 4 * H, wsp, ldw);
  const SlicedB<T> whh = pack_sliced<T>(w_hh.data_ptr<T>(), P, 4 * H, 1, P, Scratch::rnn_w);
  const T* whr = proj ? pack_whole<T>(w_hr.data_ptr<T>(), H, P, 1, H, Scratch::rnn_w2) : nullptr;
  const auto& kern = rnn_kernels<T>();
  T* hs = hy.data_ptr<T>();
  T* cs = cy.data_ptr<T>();
  T* o = out.data_ptr<T>();
  for (int64_t q = 0; q < s.T; ++q) {
    const int64_t t = reverse ? s.T - 1 - q : q, off = s.offsets[t];
    T* gates = wsp + off * ldw;
    LstmForwardStep<T> st{H, gates, ldw, gates + 4 * H, ldw, cs, proj ? gates + 5 * H : o + off * P,
                          proj ? ldw : P, proj ? nullptr : hs};
    sliced_gemm<T>(s.batch_sizes[t], whh, hs, P, gates, ldw, true);   // gates += h W_hh^T
    for_row_blocks(s.batch_sizes[t], [&](int64_t r0, int64_t r1) {
      kern.lstm_forward(st, r0, r1);
      if (proj) {   // h = r W_hr^T, the output row and the next step's state
        gemm_into<T>(r1 - r0, P, H, gates + 5 * H + r0 * ldw, ldw, 1, nullptr, 0, 0, o + (off + r0) * P, P, false,
                     whr);
        std::copy(o + (off + r0) * P, o + (off + r1) * P, hs + r0 * P);
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_cpu(
    const at::Tensor& input, const at::Tensor& batch_sizes, const at::Tensor& hx, const at::Tensor& cx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr, bool reverse) {
  const RnnLayerShape s = check_rnn_layer(kLstm, 4, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
  const bool proj = w_hr.has_value() && w_hr->defined();
  at::Tensor out = at::empty({s.N, s.Hout}, input.options());
  at::Tensor hy = hx.contiguous().clone();   // the running states, final after the last step
  at::Tensor cy = cx.contiguous().clone();
  at::Tensor ws = at::empty({s.N, (proj ? 6 : 5) * s.H}, input.options());
  advise_huge_pages(ws);   // written once through; first-touch faults of 4 KiB pages cost ~10% here
  if (s.N > 0) {
    const at::Tensor whr = proj ? w_hr->contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kLstm, [&] {
      lstm_forward<scalar_t>(s, reverse, input.contiguous(), w_ih.contiguous(), w_hh.contiguous(),
                             sum_bias(b_ih, b_hh), whr, out, hy, cy, ws);
    });
  }
  return {out, hy, cy, ws};
}

template <typename T>
void lstm_backward(const RnnLayerShape& s, bool reverse, const at::Tensor& gout, const at::Tensor& w_hh,
                   const at::Tensor& w_hr, const at::Tensor& ws, const at::Tensor& c_prev, at::Tensor& dgates,
                   at::Tensor& dh_all, at::Tensor& dh, at::Tensor& dc) {
  const int64_t H = s.H, P = s.Hout, ldw = ws.size(1);
  const bool proj = w_hr.defined();
  const SlicedB<T> whh = pack_sliced<T>(w_hh.data_ptr<T>(), 4 * H, P, P, 1, Scratch::rnn_w);
  const T* whr = proj ? pack_whole<T>(w_hr.data_ptr<T>(), P, H, H, 1, Scratch::rnn_w2) : nullptr;
  at::Tensor dr = proj ? at::empty({s.B, H}, gout.options()) : at::Tensor();   // dL/dr per row, projecting
  const auto& kern = rnn_kernels<T>();
  const T* wsp = ws.data_ptr<T>();
  const T* go = gout.data_ptr<T>();
  T* dg = dgates.data_ptr<T>();
  T* dhs = dh.data_ptr<T>();
  for (int64_t q = 0; q < s.T; ++q) {
    const int64_t t = reverse ? q : s.T - 1 - q, off = s.offsets[t];
    const T* gates = wsp + off * ldw;
    LstmBackwardStep<T> st{H, gates, ldw, gates + 4 * H, ldw, c_prev.data_ptr<T>() + off * H, H,
                           proj ? dr.data_ptr<T>() : dhs, proj ? H : P, proj ? nullptr : go + off * P, P,
                           dc.data_ptr<T>(), dg + off * 4 * H, 4 * H};
    for_row_blocks(s.batch_sizes[t], [&](int64_t r0, int64_t r1) {
      if (proj) {   // dL/dh = dh_state + grad_output, kept for dW_hr; dL/dr = dL/dh W_hr
        T* dha = dh_all.data_ptr<T>() + off * P;
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t j = 0; j < P; ++j) dha[r * P + j] = dhs[r * P + j] + go[(off + r) * P + j];
        }
        gemm_into<T>(r1 - r0, H, P, dha + r0 * P, P, 1, nullptr, 0, 0, dr.data_ptr<T>() + r0 * H, H, false, whr);
      }
      kern.lstm_backward(st, r0, r1);
    });
    sliced_gemm<T>(s.batch_sizes[t], whh, dg + off * 4 * H, 4 * H, dhs, P, false);   // dh_prev = dgates W_hh
  }
}

// The weight gradients of a layer as large GEMMs over all N tokens: dW = dA^T X (dA: N x rows, X: N x cols).
template <typename T>
at::Tensor weight_grad(const at::Tensor& da, const T* xp, int64_t ld_x, int64_t cols, int64_t n) {
  const int64_t rows = da.size(1);
  at::Tensor dw = at::empty({rows, cols}, da.options());
  gemm_into<T>(rows, cols, n, da.data_ptr<T>(), 1, rows, xp, ld_x, 1, dw.data_ptr<T>(), cols, false);
  return dw;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_cy, const at::Tensor& input,
    const at::Tensor& batch_sizes, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr, const at::Tensor& output,
    const at::Tensor& workspace, bool reverse, std::array<bool, 3> output_mask) {
  const RnnLayerShape s = check_rnn_layer(kLstmBackward, 4, input, batch_sizes, hx, cx, w_ih, w_hh, std::nullopt,
                                          std::nullopt, w_hr);
  const bool proj = w_hr.has_value() && w_hr->defined();
  check_shape(grad_output, {s.N, s.Hout}, kLstmBackward, "grad_output");
  check_shape(grad_hy, {s.B, s.Hout}, kLstmBackward, "grad_hy");
  check_shape(grad_cy, {s.B, s.H}, kLstmBackward, "grad_cy");
  check_shape(output, {s.N, s.Hout}, kLstmBackward, "output");
  check_shape(workspace, {s.N, (proj ? 6 : 5) * s.H}, kLstmBackward, "workspace");
  at::Tensor dh = grad_hy.contiguous().clone(), dc = grad_cy.contiguous().clone();   // end as grad_hx, grad_cx
  at::Tensor dgates = at::empty({s.N, 4 * s.H}, input.options());
  advise_huge_pages(dgates);
  at::Tensor dh_all = proj ? at::empty({s.N, s.Hout}, input.options()) : at::Tensor();
  at::Tensor gx, gw_ih, gw_hh, gb, gw_hr;
  const at::Tensor ws = workspace.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kLstmBackward, [&] {
    using T = scalar_t;
    const at::Tensor whh = w_hh.contiguous(), whr = proj ? w_hr->contiguous() : at::Tensor();
    if (s.N > 0) {
      const at::Tensor c_prev = rnn_gather_prev(ws.narrow(1, 4 * s.H, s.H), cx, s, reverse).contiguous();
      lstm_backward<T>(s, reverse, grad_output.contiguous(), whh, whr, ws, c_prev, dgates, dh_all, dh, dc);
    }
    if (output_mask[0]) {   // dx = dgates W_ih
      gx = at::empty({s.N, s.I}, input.options());
      const at::Tensor wih = w_ih.contiguous();
      gemm_into<T>(s.N, s.I, 4 * s.H, dgates.data_ptr<T>(), 4 * s.H, 1, wih.data_ptr<T>(), s.I, 1, gx.data_ptr<T>(),
                   s.I, false);
    }
    if (output_mask[2]) {
      const at::Tensor x = input.contiguous();
      gw_ih = weight_grad<T>(dgates, x.data_ptr<T>(), s.I, s.I, s.N);
      const at::Tensor h_prev = rnn_gather_prev(output, hx, s, reverse).contiguous();
      gw_hh = weight_grad<T>(dgates, h_prev.data_ptr<T>(), s.Hout, s.Hout, s.N);
      gb = dgates.sum(0);
      if (proj) gw_hr = weight_grad<T>(dh_all, ws.data_ptr<T>() + 5 * s.H, 6 * s.H, s.H, s.N);
    }
  });
  const at::Tensor none = at::empty({0}, input.options());
  return {output_mask[0] ? gx : none, output_mask[1] ? dh : none, output_mask[1] ? dc : none,
          output_mask[2] ? gw_ih : none, output_mask[2] ? gw_hh : none, output_mask[2] ? gb : none,
          output_mask[2] && proj ? gw_hr : none};
}

// ---------------------------------------------------------------------------------------------------
// GRU. Workspace per token: r, z, n and ah_n = (h W_hh^T + b_hh)_n (4H): n's gradient reaches r through
// ah_n, and the rest of the backward needs only the activated gates and h_prev.
// ---------------------------------------------------------------------------------------------------
constexpr const char* kGru = "gru_layer";
constexpr const char* kGruBackward = "gru_layer_backward";

template <typename T>
void gru_forward(const RnnLayerShape& s, bool reverse, const at::Tensor& x, const at::Tensor& w_ih,
                 const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh, at::Tensor& out,
                 at::Tensor& hy, at::Tensor& ws) {
  const int64_t H = s.H;
  at::Tensor ax = at::empty({s.N, 3 * H}, x.options());
  input_projection<T>(s, x.data_ptr<T>(), w_ih.data_ptr<T>(), b_ih, 3 * H, ax.data_ptr<T>(), 3 * H);
  const SlicedB<T> whh = pack_sliced<T>(w_hh.data_ptr<T>(), H, 3 * H, 1, H, Scratch::rnn_w);
  at::Tensor ah = at::empty({s.B, 3 * H}, x.options());
  const auto& kern = rnn_kernels<T>();
  T* hs = hy.data_ptr<T>();
  T* ahp = ah.data_ptr<T>();
  const T* bhh = b_hh.defined() ? b_hh.data_ptr<T>() : nullptr;
  for (int64_t q = 0; q < s.T; ++q) {
    const int64_t t = reverse ? s.T - 1 - q : q, off = s.offsets[t];
    GruForwardStep<T> st{H, ax.data_ptr<T>() + off * 3 * H, 3 * H, ahp, hs, ws.data_ptr<T>() + off * 4 * H, 4 * H,
                         out.data_ptr<T>() + off * H, H};
    sliced_gemm<T>(s.batch_sizes[t], whh, hs, H, ahp, 3 * H, false, bhh);   // ah = h W_hh^T + b_hh
    for_row_blocks(s.batch_sizes[t], [&](int64_t r0, int64_t r1) { kern.gru_forward(st, r0, r1); });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_cpu(
    const at::Tensor& input, const at::Tensor& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    bool reverse) {
  const RnnLayerShape s = check_rnn_layer(kGru, 3, input, batch_sizes, hx, std::nullopt, w_ih, w_hh, b_ih, b_hh,
                                          std::nullopt);
  at::Tensor out = at::empty({s.N, s.H}, input.options());
  at::Tensor hy = hx.contiguous().clone();
  at::Tensor ws = at::empty({s.N, 4 * s.H}, input.options());
  advise_huge_pages(ws);
  if (s.N > 0) {
    const auto bias = [](const std::optional<at::Tensor>& b) {
      return b.has_value() && b->defined() ? b->contiguous() : at::Tensor();
    };
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kGru, [&] {
      gru_forward<scalar_t>(s, reverse, input.contiguous(), w_ih.contiguous(), w_hh.contiguous(), bias(b_ih),
                            bias(b_hh), out, hy, ws);
    });
  }
  return {out, hy, ws};
}

template <typename T>
void gru_backward(const RnnLayerShape& s, bool reverse, const at::Tensor& gout, const at::Tensor& w_hh,
                  const at::Tensor& ws, const at::Tensor& h_prev, at::Tensor& dax, at::Tensor& dah, at::Tensor& dh) {
  const int64_t H = s.H;
  const SlicedB<T> whh = pack_sliced<T>(w_hh.data_ptr<T>(), 3 * H, H, H, 1, Scratch::rnn_w);
  const auto& kern = rnn_kernels<T>();
  T* dhs = dh.data_ptr<T>();
  for (int64_t q = 0; q < s.T; ++q) {
    const int64_t t = reverse ? q : s.T - 1 - q, off = s.offsets[t];
    T* dahp = dah.data_ptr<T>() + off * 3 * H;
    GruBackwardStep<T> st{H, ws.data_ptr<T>() + off * 4 * H, 4 * H, h_prev.data_ptr<T>() + off * H, H, dhs,
                          gout.data_ptr<T>() + off * H, H, dax.data_ptr<T>() + off * 3 * H, 3 * H, dahp};
    for_row_blocks(s.batch_sizes[t], [&](int64_t r0, int64_t r1) { kern.gru_backward(st, r0, r1); });
    sliced_gemm<T>(s.batch_sizes[t], whh, dahp, 3 * H, dhs, H, true);   // dh_prev = dh z + dah W_hh
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input, const at::Tensor& batch_sizes,
    const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
    const at::Tensor& workspace, bool reverse, std::array<bool, 3> output_mask) {
  const RnnLayerShape s = check_rnn_layer(kGruBackward, 3, input, batch_sizes, hx, std::nullopt, w_ih, w_hh,
                                          std::nullopt, std::nullopt, std::nullopt);
  check_shape(grad_output, {s.N, s.H}, kGruBackward, "grad_output");
  check_shape(grad_hy, {s.B, s.H}, kGruBackward, "grad_hy");
  check_shape(output, {s.N, s.H}, kGruBackward, "output");
  check_shape(workspace, {s.N, 4 * s.H}, kGruBackward, "workspace");
  at::Tensor dh = grad_hy.contiguous().clone();
  at::Tensor dax = at::empty({s.N, 3 * s.H}, input.options()), dah = at::empty({s.N, 3 * s.H}, input.options());
  advise_huge_pages(dax);
  advise_huge_pages(dah);
  at::Tensor gx, gw_ih, gw_hh, gb_ih, gb_hh;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kGruBackward, [&] {
    using T = scalar_t;
    const at::Tensor h_prev = rnn_gather_prev(output, hx, s, reverse).contiguous();
    if (s.N > 0) {
      gru_backward<T>(s, reverse, grad_output.contiguous(), w_hh.contiguous(), workspace.contiguous(), h_prev, dax,
                      dah, dh);
    }
    if (output_mask[0]) {
      gx = at::empty({s.N, s.I}, input.options());
      const at::Tensor wih = w_ih.contiguous();
      gemm_into<T>(s.N, s.I, 3 * s.H, dax.data_ptr<T>(), 3 * s.H, 1, wih.data_ptr<T>(), s.I, 1, gx.data_ptr<T>(), s.I,
                   false);
    }
    if (output_mask[2]) {
      const at::Tensor x = input.contiguous();
      gw_ih = weight_grad<T>(dax, x.data_ptr<T>(), s.I, s.I, s.N);
      gw_hh = weight_grad<T>(dah, h_prev.data_ptr<T>(), s.H, s.H, s.N);
      gb_ih = dax.sum(0);
      gb_hh = dah.sum(0);
    }
  });
  const at::Tensor none = at::empty({0}, input.options());
  return {output_mask[0] ? gx : none, output_mask[1] ? dh : none, output_mask[2] ? gw_ih : none,
          output_mask[2] ? gw_hh : none, output_mask[2] ? gb_ih : none, output_mask[2] ? gb_hh : none};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("lstm_layer", &lstm_layer_cpu);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cpu);
  m.impl("gru_layer", &gru_layer_cpu);
  m.impl("gru_layer_backward", &gru_layer_backward_cpu);
}

}  // namespace fastconv::cpu
