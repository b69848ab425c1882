// CPU glue and drivers of the LSTM and GRU layers (fastconv::lstm_layer, gru_layer and their
// backwards) on the GEMM engine. The structure of a layer, in the engine's vocabulary:
//
//   forward   W_ih^T and W_hh^T packed (the engine's prepacked B) in column slices, one per thread,
//             once per call or, in inference, kept in the weight cache; one large GEMM for the input projection of
//             every time step, x W_ih^T + bias, straight into the gate buffer; then per step two
//             parallel regions: the recurrent GEMM h W_hh^T
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
#include "common/weight_cache.h"
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
    return for_active_isa(rnn_kernels_f32_avx512, rnn_kernels_f32_avx512_emulated,
                          rnn_kernels_f32_avx2, baseline);
  } else {
    return for_active_isa(rnn_kernels_f64_avx512, rnn_kernels_f64_avx512_emulated,
                          rnn_kernels_f64_avx2, baseline);
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

// A weight's op(B) for the GEMM engine, W^T (forward: x W^T) or W (backward: dgates W), packed in column
// slices, one per thread: a step's GEMM is thin (M = the batch), so it runs as one parallel region over
// the slices and each thread streams only its share of the weight from the cache (re-reading the whole
// weight per thread cost more than the arithmetic). A weight that does not require grad (inference:
// an LSTMCell decoding token by token) keeps its packed form in the WeightCache (common/weight_cache.h)
// from its second call on, checked against a digest of its bytes on every call, which sees every
// write, through `.data` included: packing reads the weight and writes as much again, the digest only
// reads it. A trained weight, and one met for the first time (it may be a copy made for this call
// alone), is packed into scratch memory.
template <typename T>
struct SlicedB {
  at::Tensor storage;                 // the packed panels (a cache entry, or the calling thread's scratch memory)
  int64_t k = 0, n = 0, width = 0;    // slice s: columns [s * width, min(n, (s + 1) * width))
  std::vector<const T*> packed;       // slice s's panels (the engine's b_packed layout of its columns)
};

enum class RnnWeight { ih_t = 0, hh_t = 1, hh = 2, hr_t = 3, hr = 4 };   // *_t: op(B) = W^T

template <typename T>
SlicedB<T> packed_weight(const at::Tensor& weight, RnnWeight which, int64_t slices) {
  const bool transposed = which == RnnWeight::ih_t || which == RnnWeight::hh_t || which == RnnWeight::hr_t;
  const int64_t rows = weight.size(0), cols = weight.size(1);
  SlicedB<T> b;
  b.k = transposed ? cols : rows;
  b.n = transposed ? rows : cols;
  const int64_t nr = gemm_tile<T>().nr, panels = (b.n + nr - 1) / nr;
  slices = std::max<int64_t>(1, std::min(slices, panels));
  b.width = (panels + slices - 1) / slices * nr;
  const int64_t elems = gemm_packed_b_elems<T>(b.k, b.n);   // whole panels: every slice starts 64-byte aligned
  const auto pack = [&](T* dst) {
    const at::Tensor w = weight.contiguous();
    for (int64_t j0 = 0; j0 < b.n; j0 += b.width) {
      GemmArgs<T> g{};
      g.k = b.k;
      g.n = std::min(b.width, b.n - j0);
      g.b = w.data_ptr<T>() + j0 * (transposed ? cols : 1);
      g.rs_b = transposed ? 1 : cols;
      g.cs_b = transposed ? cols : 1;
      gemm_pack_b<T>(g, dst);
      dst += gemm_packed_b_elems<T>(b.k, g.n);
    }
  };
  WeightCache& cache = WeightCache::instance();
  const int64_t variant = WeightCache::for_isa(WeightCache::rnn_packed(int(which), slices), int(active_isa()));
  if (cache.may_keep(weight) && cache.seen_before(weight, variant)) {   // a weight for one call only is not kept
    b.storage = cache.get(weight, variant, [&] {
      at::Tensor t = at::empty({elems}, weight.options());
      pack(t.data_ptr<T>());
      return t;
    });
  } else {
    const Scratch slot = which == RnnWeight::ih_t ? Scratch::rnn_w_ih
                         : (which == RnnWeight::hh_t || which == RnnWeight::hh) ? Scratch::rnn_w_hh
                                                                                : Scratch::rnn_w_hr;
    b.storage = at::from_blob(scratch<T>(slot, elems), {elems}, weight.options());
    pack(b.storage.template data_ptr<T>());
  }
  const T* at = b.storage.template data_ptr<T>();
  for (int64_t j0 = 0; j0 < b.n; j0 += b.width) {
    b.packed.push_back(at);
    at += gemm_packed_b_elems<T>(b.k, std::min(b.width, b.n - j0));
  }
  return b;
}

// C rows [r0, r1), slice s's columns (+)= A op(B); with `fill`, those rows' columns are first set to
// fill[cols] (a bias) and the product added to it.
template <typename T>
void slice_gemm(const SlicedB<T>& w, int64_t s, int64_t r0, int64_t r1, const T* a, int64_t rs_a, T* c, int64_t rs_c,
                bool accumulate, const T* fill) {
  const int64_t j0 = s * w.width, n = std::min(w.width, w.n - j0);
  if (fill != nullptr) {
    for (int64_t r = r0; r < r1; ++r) std::copy(fill + j0, fill + j0 + n, c + r * rs_c + j0);
  }
  gemm_into<T>(r1 - r0, n, w.k, a + r0 * rs_a, rs_a, 1, nullptr, 0, 0, c + r0 * rs_c + j0, rs_c,
               accumulate || fill != nullptr, w.packed[static_cast<size_t>(s)]);
}

// C (m x n, row stride rs_c) (+)= A op(B): one parallel region over the slices of op(B) and, for tall
// A (the input projection of a whole sequence), blocks of kRowBlock rows.
constexpr int64_t kRowBlock = 240;
constexpr int64_t kSerialFlops = 1 << 18;
template <typename T>
void sliced_gemm(int64_t m, const SlicedB<T>& w, const T* a, int64_t rs_a, T* c, int64_t rs_c, bool accumulate,
                 const T* fill = nullptr) {
  if (m == 0) return;
  const int64_t slices = static_cast<int64_t>(w.packed.size()), row_blocks = (m + kRowBlock - 1) / kRowBlock;
  // Below kSerialFlops a fork and join of the threads costs more than it saves.
  const int64_t grain = 2 * m * w.n * w.k < kSerialFlops ? slices * row_blocks : 1;
  at::parallel_for(0, slices * row_blocks, grain, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t r0 = u / slices * kRowBlock;
      slice_gemm(w, u % slices, r0, std::min(m, r0 + kRowBlock), a, rs_a, c, rs_c, accumulate, fill);
    }
  });
}

// Splits a step's rows into one block per thread (fewer when there are few rows) and runs fn(r0, r1)
// on each in one parallel region.
template <typename F>
void for_row_blocks(int64_t rows, int64_t units_per_row, const F& fn) {
  if (rows == 0) return;
  const int64_t threads = rows * units_per_row < (1 << 12)
                              ? 1   // a few thousand units: one thread does them sooner than a fork and join
                              : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  const int64_t block = (rows + threads - 1) / threads;
  at::parallel_for(0, (rows + block - 1) / block, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) fn(blk * block, std::min(rows, (blk + 1) * block));
  });
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
  const int64_t threads = at::get_num_threads();
  const SlicedB<T> wih = packed_weight<T>(w_ih, RnnWeight::ih_t, threads);
  sliced_gemm<T>(s.N, wih, x.data_ptr<T>(), s.I, wsp, ldw, false, bias.defined() ? bias.data_ptr<T>() : nullptr);
  const SlicedB<T> whh = packed_weight<T>(w_hh, RnnWeight::hh_t, threads);
  const SlicedB<T> whr = proj ? packed_weight<T>(w_hr, RnnWeight::hr_t, 1) : SlicedB<T>();
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
    for_row_blocks(s.batch_sizes[t], H, [&](int64_t r0, int64_t r1) {
      kern.lstm_forward(st, r0, r1);
      if (proj) {   // h = r W_hr^T, the output row and the next step's state
        slice_gemm<T>(whr, 0, r0, r1, gates + 5 * H, ldw, o + off * P, P, false, nullptr);
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
  at::Tensor hy = hx.clone(at::MemoryFormat::Contiguous);   // the running states, final after the last step
  at::Tensor cy = cx.clone(at::MemoryFormat::Contiguous);
  at::Tensor ws = at::empty({s.N, lstm_workspace_cols(s, proj)}, input.options());
  advise_huge_pages(ws);   // written once through; first-touch faults of 4 KiB pages cost ~10% here
  if (s.N > 0) {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kLstm, [&] {
      lstm_forward<scalar_t>(s, reverse, input.contiguous(), w_ih, w_hh, rnn_sum_bias(b_ih, b_hh),
                             proj ? *w_hr : at::Tensor(), out, hy, cy, ws);
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
  const SlicedB<T> whh = packed_weight<T>(w_hh, RnnWeight::hh, at::get_num_threads());
  const SlicedB<T> whr = proj ? packed_weight<T>(w_hr, RnnWeight::hr, 1) : SlicedB<T>();
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
    for_row_blocks(s.batch_sizes[t], H, [&](int64_t r0, int64_t r1) {
      if (proj) {   // dL/dh = dh_state + grad_output, kept for dW_hr; dL/dr = dL/dh W_hr
        T* dha = dh_all.data_ptr<T>() + off * P;
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t j = 0; j < P; ++j) dha[r * P + j] = dhs[r * P + j] + go[(off + r) * P + j];
        }
        slice_gemm<T>(whr, 0, r0, r1, dha, P, dr.data_ptr<T>(), H, false, nullptr);
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
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, const at::Tensor& output, const at::Tensor& workspace, bool reverse,
    std::array<bool, 3> output_mask) {
  const RnnLayerShape s = check_lstm_layer_backward(kLstmBackward, grad_output, grad_hy, grad_cy, input, batch_sizes,
                                                    hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, output, workspace);
  const bool proj = w_hr.has_value() && w_hr->defined();
  at::Tensor dh = grad_hy.clone(at::MemoryFormat::Contiguous), dc = grad_cy.clone(at::MemoryFormat::Contiguous);   // end as grad_hx, grad_cx
  at::Tensor dgates = at::empty({s.N, 4 * s.H}, input.options());
  advise_huge_pages(dgates);
  at::Tensor dh_all = proj ? at::empty({s.N, s.Hout}, input.options()) : at::Tensor();
  at::Tensor gx, gw_ih, gw_hh, gb, gw_hr;
  const at::Tensor ws = workspace.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kLstmBackward, [&] {
    using T = scalar_t;
    if (s.N > 0) {
      const at::Tensor c_prev = rnn_gather_prev(ws.narrow(1, 4 * s.H, s.H), cx, s, reverse).contiguous();
      lstm_backward<T>(s, reverse, grad_output.contiguous(), w_hh, proj ? *w_hr : at::Tensor(), ws, c_prev, dgates,
                       dh_all, dh, dc);
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
  const int64_t threads = at::get_num_threads();
  const SlicedB<T> wih = packed_weight<T>(w_ih, RnnWeight::ih_t, threads);
  sliced_gemm<T>(s.N, wih, x.data_ptr<T>(), s.I, ax.data_ptr<T>(), 3 * H, false,
                 b_ih.defined() ? b_ih.data_ptr<T>() : nullptr);
  const SlicedB<T> whh = packed_weight<T>(w_hh, RnnWeight::hh_t, threads);
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
    for_row_blocks(s.batch_sizes[t], H, [&](int64_t r0, int64_t r1) { kern.gru_forward(st, r0, r1); });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_cpu(
    const at::Tensor& input, const at::Tensor& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    bool reverse) {
  const RnnLayerShape s = check_rnn_layer(kGru, 3, input, batch_sizes, hx, std::nullopt, w_ih, w_hh, b_ih, b_hh,
                                          std::nullopt);
  at::Tensor out = at::empty({s.N, s.H}, input.options());
  at::Tensor hy = hx.clone(at::MemoryFormat::Contiguous);
  at::Tensor ws = at::empty({s.N, gru_workspace_cols(s)}, input.options());
  advise_huge_pages(ws);
  if (s.N > 0) {
    const auto bias = [](const std::optional<at::Tensor>& b) {
      return b.has_value() && b->defined() ? b->contiguous() : at::Tensor();
    };
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kGru, [&] {
      gru_forward<scalar_t>(s, reverse, input.contiguous(), w_ih, w_hh, bias(b_ih),
                            bias(b_hh), out, hy, ws);
    });
  }
  return {out, hy, ws};
}

template <typename T>
void gru_backward(const RnnLayerShape& s, bool reverse, const at::Tensor& gout, const at::Tensor& w_hh,
                  const at::Tensor& ws, const at::Tensor& h_prev, at::Tensor& dax, at::Tensor& dah, at::Tensor& dh) {
  const int64_t H = s.H;
  const SlicedB<T> whh = packed_weight<T>(w_hh, RnnWeight::hh, at::get_num_threads());
  const auto& kern = rnn_kernels<T>();
  T* dhs = dh.data_ptr<T>();
  for (int64_t q = 0; q < s.T; ++q) {
    const int64_t t = reverse ? q : s.T - 1 - q, off = s.offsets[t];
    T* dahp = dah.data_ptr<T>() + off * 3 * H;
    GruBackwardStep<T> st{H, ws.data_ptr<T>() + off * 4 * H, 4 * H, h_prev.data_ptr<T>() + off * H, H, dhs,
                          gout.data_ptr<T>() + off * H, H, dax.data_ptr<T>() + off * 3 * H, 3 * H, dahp};
    for_row_blocks(s.batch_sizes[t], H, [&](int64_t r0, int64_t r1) { kern.gru_backward(st, r0, r1); });
    sliced_gemm<T>(s.batch_sizes[t], whh, dahp, 3 * H, dhs, H, true);   // dh_prev = dh z + dah W_hh
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input, const at::Tensor& batch_sizes,
    const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const at::Tensor& output, const at::Tensor& workspace, bool reverse,
    std::array<bool, 3> output_mask) {
  const RnnLayerShape s = check_gru_layer_backward(kGruBackward, grad_output, grad_hy, input, batch_sizes, hx, w_ih,
                                                   w_hh, b_ih, b_hh, output, workspace);
  at::Tensor dh = grad_hy.clone(at::MemoryFormat::Contiguous);
  at::Tensor dax = at::empty({s.N, 3 * s.H}, input.options()), dah = at::empty({s.N, 3 * s.H}, input.options());
  advise_huge_pages(dax);
  advise_huge_pages(dah);
  at::Tensor gx, gw_ih, gw_hh, gb_ih, gb_hh;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kGruBackward, [&] {
    using T = scalar_t;
    const at::Tensor h_prev = rnn_gather_prev(output, hx, s, reverse).contiguous();
    if (s.N > 0) {
      gru_backward<T>(s, reverse, grad_output.contiguous(), w_hh, workspace.contiguous(), h_prev, dax,
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
