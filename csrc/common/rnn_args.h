// Argument checks, shapes and gathers of the RNN layer ops (fastconv::lstm_layer, gru_layer and their
// backwards), shared by the CPU and CUDA glue (torch side; never included by .cu files).
//
// A layer runs over a packed sequence: `input` is (N, I), the rows of time step t are
// [offset[t], offset[t] + batch_sizes[t]), batch_sizes non-increasing (torch's PackedSequence
// layout; a padded (T, B, I) input is the same with batch_sizes = [B] * T). The running state has one
// row per sequence, B = batch_sizes[0] rows, and step t works on its first batch_sizes[t] rows only.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <utility>
#include <vector>

#include "common/checks.h"

namespace fastconv {

struct RnnLayerShape {
  int64_t N = 0, T = 0, B = 0, I = 0, H = 0, Hout = 0;   // Hout = proj_size when projecting, else H
  std::vector<int64_t> batch_sizes, offsets;              // per step: rows, first row
};

inline void check_same(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name) {
  FC_CHECK(t.scalar_type() == like.scalar_type(), op, "expected ", name, " of dtype ", like.scalar_type(),
           " (the input's), but got ", t.scalar_type());
  FC_CHECK(t.device() == like.device(), op, "expected ", name, " on ", like.device(), " (the input's device), but got ",
           t.device());
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef want, const char* op, const char* name) {
  FC_CHECK(t.sizes() == want, op, "expected ", name, " of shape ", want, ", but got ", t.sizes());
}

// gates: 4 (LSTM) or 3 (GRU). cx only for the LSTM; w_hr optional (the LSTM's projection).
inline RnnLayerShape check_rnn_layer(const char* op, int64_t gates, const at::Tensor& input,
                                     const at::Tensor& batch_sizes, const at::Tensor& hx,
                                     const std::optional<at::Tensor>& cx, const at::Tensor& w_ih,
                                     const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                     const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr) {
  FC_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
           "expected input to be float32 or float64, but got ", input.scalar_type());
  FC_CHECK(input.dim() == 2, op, "expected a 2-D input (the packed rows of all time steps, N x input_size), but got "
           "shape ", input.sizes());
  FC_CHECK(batch_sizes.dim() == 1 && batch_sizes.scalar_type() == at::kLong && batch_sizes.device().is_cpu(), op,
           "expected batch_sizes to be a 1-D int64 tensor on the CPU, but got ", batch_sizes.scalar_type(), " of shape ",
           batch_sizes.sizes(), " on ", batch_sizes.device());
  RnnLayerShape s;
  s.N = input.size(0);
  s.I = input.size(1);
  s.T = batch_sizes.size(0);
  const at::Tensor bs = batch_sizes.contiguous();
  const int64_t* p = bs.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t t = 0; t < s.T; ++t) {
    FC_CHECK(p[t] >= 0 && (t == 0 || p[t] <= p[t - 1]), op, "expected batch_sizes to be non-negative and "
             "non-increasing (sequences sorted by decreasing length), but got ", batch_sizes);
    s.offsets.push_back(total);
    s.batch_sizes.push_back(p[t]);
    total += p[t];
  }
  FC_CHECK(total == s.N, op, "batch_sizes sum to ", total, " rows, but the input has ", s.N);
  for (const auto* w : {&w_ih, &w_hh}) check_same(*w, input, op, w == &w_ih ? "weight_ih" : "weight_hh");
  FC_CHECK(w_ih.dim() == 2 && w_ih.size(0) % gates == 0 && w_ih.size(0) > 0, op, "expected weight_ih of shape (",
           gates, " * hidden_size, input_size), but got ", w_ih.sizes());
  s.H = w_ih.size(0) / gates;
  FC_CHECK(w_ih.size(1) == s.I, op, "input has ", s.I, " features but weight_ih expects ", w_ih.size(1),
           " (input_size)");
  s.Hout = s.H;
  if (w_hr.has_value() && w_hr->defined()) {
    check_same(*w_hr, input, op, "weight_hr");
    FC_CHECK(w_hr->dim() == 2 && w_hr->size(1) == s.H && w_hr->size(0) > 0, op,
             "expected weight_hr of shape (proj_size, ", s.H, "), but got ", w_hr->sizes());
    s.Hout = w_hr->size(0);
  }
  check_shape(w_hh, {gates * s.H, s.Hout}, op, "weight_hh");
  for (const auto* b : {&b_ih, &b_hh}) {
    if (b->has_value() && (*b)->defined()) {
      const char* name = b == &b_ih ? "bias_ih" : "bias_hh";
      check_same(**b, input, op, name);
      check_shape(**b, {gates * s.H}, op, name);
    }
  }
  check_same(hx, input, op, "hx");
  FC_CHECK(hx.dim() == 2 && hx.size(1) == s.Hout && (s.T == 0 || hx.size(0) == s.batch_sizes[0]), op,
           "expected hx of shape (", s.T > 0 ? s.batch_sizes[0] : hx.size(0), ", ", s.Hout,
           ") (batch_sizes[0] sequences), but got ", hx.sizes());
  s.B = hx.size(0);
  if (cx.has_value() && cx->defined()) {
    check_same(*cx, input, op, "cx");
    check_shape(*cx, {s.B, s.H}, op, "cx");
  }
  return s;
}

// Columns of the per-token workspace the forward returns for the backward (csrc/cpu/rnn.cpp says what
// they hold): LSTM the four activated gates and c' (and r = o tanh c' with a projection), GRU r, z, n
// and the recurrent part of n's pre-activation.
inline int64_t lstm_workspace_cols(const RnnLayerShape& s, bool proj) { return (proj ? 6 : 5) * s.H; }
inline int64_t gru_workspace_cols(const RnnLayerShape& s) { return 4 * s.H; }

// The layer's shapes (check_rnn_layer) and the backward's own tensors: the gradients of the outputs
// and what the forward returned.
inline RnnLayerShape check_lstm_layer_backward(const char* op, const at::Tensor& grad_output,
                                               const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                                               const at::Tensor& input, const at::Tensor& batch_sizes,
                                               const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
                                               const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                               const std::optional<at::Tensor>& b_hh,
                                               const std::optional<at::Tensor>& w_hr, const at::Tensor& output,
                                               const at::Tensor& workspace) {
  const RnnLayerShape s = check_rnn_layer(op, 4, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
  const bool proj = w_hr.has_value() && w_hr->defined();
  const std::pair<const at::Tensor*, std::vector<int64_t>> expect[] = {
      {&grad_output, {s.N, s.Hout}}, {&grad_hy, {s.B, s.Hout}}, {&grad_cy, {s.B, s.H}}, {&output, {s.N, s.Hout}},
      {&workspace, {s.N, lstm_workspace_cols(s, proj)}}};
  const char* names[] = {"grad_output", "grad_hy", "grad_cy", "output", "workspace"};
  for (size_t i = 0; i < 5; ++i) {
    check_same(*expect[i].first, input, op, names[i]);
    check_shape(*expect[i].first, expect[i].second, op, names[i]);
  }
  return s;
}

inline RnnLayerShape check_gru_layer_backward(const char* op, const at::Tensor& grad_output, const at::Tensor& grad_hy,
                                              const at::Tensor& input, const at::Tensor& batch_sizes,
                                              const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                              const std::optional<at::Tensor>& b_ih,
                                              const std::optional<at::Tensor>& b_hh, const at::Tensor& output,
                                              const at::Tensor& workspace) {
  const RnnLayerShape s = check_rnn_layer(op, 3, input, batch_sizes, hx, std::nullopt, w_ih, w_hh, b_ih, b_hh,
                                          std::nullopt);
  const std::pair<const at::Tensor*, std::vector<int64_t>> expect[] = {
      {&grad_output, {s.N, s.H}}, {&grad_hy, {s.B, s.H}}, {&output, {s.N, s.H}},
      {&workspace, {s.N, gru_workspace_cols(s)}}};
  const char* names[] = {"grad_output", "grad_hy", "output", "workspace"};
  for (size_t i = 0; i < 4; ++i) {
    check_same(*expect[i].first, input, op, names[i]);
    check_shape(*expect[i].first, expect[i].second, op, names[i]);
  }
  return s;
}

// b_ih + b_hh (the LSTM adds both to every gate), either alone, or undefined without biases.
inline at::Tensor rnn_sum_bias(const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  const bool has_ih = b_ih.has_value() && b_ih->defined(), has_hh = b_hh.has_value() && b_hh->defined();
  if (has_ih && has_hh) return (*b_ih + *b_hh).contiguous();
  if (has_ih) return b_ih->contiguous();
  if (has_hh) return b_hh->contiguous();
  return at::Tensor();
}

// Row r of the result is the state that token r's step started from: the same sequence's row in the
// step before (t - 1, or t + 1 when running in reverse) where that step had the sequence, else the
// sequence's initial state. seq is (N, D) (the outputs or cell values of every token), init (B, D).
inline at::Tensor rnn_gather_prev(const at::Tensor& seq, const at::Tensor& init, const RnnLayerShape& s, bool reverse) {
  std::vector<int64_t> idx(static_cast<size_t>(s.N));
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t tp = reverse ? t + 1 : t - 1;
    const bool has_prev = tp >= 0 && tp < s.T;
    for (int64_t b = 0; b < s.batch_sizes[t]; ++b) {
      idx[s.offsets[t] + b] = has_prev && b < s.batch_sizes[tp] ? s.offsets[tp] + b : s.N + b;
    }
  }
  const at::Tensor index = at::tensor(idx, at::TensorOptions().dtype(at::kLong)).to(seq.device());
  return at::cat({seq, init}).index_select(0, index);
}

}  // namespace fastconv
