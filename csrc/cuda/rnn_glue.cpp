// CUDA glue and drivers of the LSTM and GRU layers (fastconv::lstm_layer, gru_layer and their
// backwards): the same structure as the CPU's (csrc/cpu/rnn.cpp) on the current stream — the input
// projection of every step as one GEMM launch (gemm.cu), then per step the recurrent GEMM launch
// accumulating into the gates and the fused step kernel (rnn.cu); backward through time the same in
// reverse; weight gradients as GEMM launches over all tokens. W_hh is read through the GEMM's shared-
// memory tiles each step (not yet kept resident across steps). Never run on a GPU yet.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "common/rnn_args.h"
#include "cuda/gemm.h"
#include "cuda/rnn.h"

namespace fastconv::cuda {
namespace {

// C (m x n, row stride rs_c) = A op(B) (+ C when accumulate), A and B by strides.
template <typename T>
void mm(int64_t m, int64_t n, int64_t k, const T* a, int64_t rs_a, int64_t cs_a, const T* b, int64_t rs_b, int64_t cs_b,
        T* c, int64_t rs_c, bool accumulate, cudaStream_t stream) {
  if (m == 0 || n == 0) return;
  const DType dt = std::is_same_v<T, float> ? DType::f32 : DType::f64;
  C10_CUDA_CHECK(gemm(dt, m, n, k, 1.0, a, rs_a, cs_a, b, rs_b, cs_b, accumulate ? 1.0 : 0.0, c, rs_c, stream));
}

// dW = dA^T X over all n tokens (dA: n x rows, X: n x cols, row stride ld_x).
template <typename T>
at::Tensor weight_grad(const at::Tensor& da, const T* x, int64_t ld_x, int64_t cols, int64_t n, cudaStream_t stream) {
  const int64_t rows = da.size(1);
  if (n == 0) return at::zeros({rows, cols}, da.options());   // no tokens: no gradient
  at::Tensor dw = at::empty({rows, cols}, da.options());
  mm<T>(rows, cols, n, da.data_ptr<T>(), 1, rows, x, ld_x, 1, dw.data_ptr<T>(), cols, false, stream);
  return dw;
}

// x W_ih^T (+ bias broadcast) into the first cols columns of out (row stride ld).
template <typename T>
void input_projection(const RnnLayerShape& s, const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& bias,
                      int64_t cols, T* out, int64_t ld, cudaStream_t stream) {
  if (bias.defined()) C10_CUDA_CHECK(fill_rows<T>(out, ld, bias.data_ptr<T>(), s.N, cols, stream));
  mm<T>(s.N, cols, s.I, x.data_ptr<T>(), s.I, 1, w_ih.data_ptr<T>(), 1, s.I, out, ld, bias.defined(), stream);
}

constexpr const char* kLstm = "lstm_layer";
constexpr const char* kLstmBackward = "lstm_layer_backward";
constexpr const char* kGru = "gru_layer";
constexpr const char* kGruBackward = "gru_layer_backward";

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_cuda(
    const at::Tensor& input, const at::Tensor& batch_sizes, const at::Tensor& hx, const at::Tensor& cx,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr, bool reverse) {
  const RnnLayerShape s = check_rnn_layer(kLstm, 4, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const bool proj = w_hr.has_value() && w_hr->defined();
  const int64_t H = s.H, P = s.Hout, ldw = lstm_workspace_cols(s, proj);
  at::Tensor out = at::empty({s.N, P}, input.options());
  at::Tensor hy = hx.clone(at::MemoryFormat::Contiguous), cy = cx.clone(at::MemoryFormat::Contiguous);
  at::Tensor ws = at::empty({s.N, ldw}, input.options());
  if (s.N == 0) return {out, hy, cy, ws};
  const at::Tensor x = input.contiguous(), wih = w_ih.contiguous(), whh = w_hh.contiguous();
  const at::Tensor whr = proj ? w_hr->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kLstm, [&] {
    using T = scalar_t;
    T* wsp = ws.data_ptr<T>();
    input_projection<T>(s, x, wih, rnn_sum_bias(b_ih, b_hh), 4 * H, wsp, ldw, stream);
    T* hs = hy.data_ptr<T>();
    T* o = out.data_ptr<T>();
    for (int64_t q = 0; q < s.T; ++q) {
      const int64_t t = reverse ? s.T - 1 - q : q, off = s.offsets[t], bs = s.batch_sizes[t];
      T* gates = wsp + off * ldw;
      mm<T>(bs, 4 * H, P, hs, P, 1, whh.data_ptr<T>(), 1, P, gates, ldw, true, stream);   // gates += h W_hh^T
      const LstmForwardStep<T> st{H, gates, ldw, gates + 4 * H, ldw, cy.data_ptr<T>(), proj ? gates + 5 * H : o + off * P,
                                  proj ? ldw : P, proj ? nullptr : hs};
      C10_CUDA_CHECK(lstm_forward_step<T>(st, bs, stream));
      if (proj && bs > 0) {   // h = r W_hr^T: the output rows, and the next step's state
        mm<T>(bs, P, H, gates + 5 * H, ldw, 1, whr.data_ptr<T>(), 1, H, o + off * P, P, false, stream);
        C10_CUDA_CHECK(cudaMemcpyAsync(hs, o + off * P, bs * P * sizeof(T), cudaMemcpyDeviceToDevice, stream));
      }
    }
  });
  return {out, hy, cy, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& grad_cy, const at::Tensor& input,
    const at::Tensor& batch_sizes, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, const at::Tensor& output, const at::Tensor& workspace, bool reverse,
    std::array<bool, 3> output_mask) {
  const RnnLayerShape s = check_lstm_layer_backward(kLstmBackward, grad_output, grad_hy, grad_cy, input, batch_sizes,
                                                    hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, output, workspace);
  const bool proj = w_hr.has_value() && w_hr->defined();
  const int64_t H = s.H, P = s.Hout, ldw = lstm_workspace_cols(s, proj);
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  at::Tensor dh = grad_hy.clone(at::MemoryFormat::Contiguous), dc = grad_cy.clone(at::MemoryFormat::Contiguous);
  at::Tensor dgates = at::empty({s.N, 4 * H}, input.options());   // every row is one step's: all written
  at::Tensor dh_all = proj ? at::empty({s.N, P}, input.options()) : at::Tensor();
  at::Tensor gx, gw_ih, gw_hh, gb, gw_hr;
  const at::Tensor ws = workspace.contiguous(), go = grad_output.contiguous(), whh = w_hh.contiguous();
  const at::Tensor whr = proj ? w_hr->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kLstmBackward, [&] {
    using T = scalar_t;
    if (s.N > 0) {
      const at::Tensor c_prev = rnn_gather_prev(ws.narrow(1, 4 * H, H), cx, s, reverse).contiguous();
      at::Tensor dr = proj ? at::empty({s.B, H}, input.options()) : at::Tensor();
      T* dhs = dh.data_ptr<T>();
      for (int64_t q = 0; q < s.T; ++q) {
        const int64_t t = reverse ? q : s.T - 1 - q, off = s.offsets[t], bs = s.batch_sizes[t];
        if (bs == 0) continue;
        const T* gates = ws.data_ptr<T>() + off * ldw;
        if (proj) {   // dL/dh = dh_state + grad_output (kept for dW_hr); dL/dr = dL/dh W_hr
          at::Tensor dha = dh_all.narrow(0, off, bs);
          at::add_out(dha, dh.narrow(0, 0, bs), go.narrow(0, off, bs));
          mm<T>(bs, H, P, dha.data_ptr<T>(), P, 1, whr.data_ptr<T>(), H, 1, dr.data_ptr<T>(), H, false, stream);
        }
        const LstmBackwardStep<T> st{H, gates, ldw, gates + 4 * H, ldw, c_prev.data_ptr<T>() + off * H, H,
                                     proj ? dr.data_ptr<T>() : dhs, proj ? H : P,
                                     proj ? nullptr : go.data_ptr<T>() + off * P, P, dc.data_ptr<T>(),
                                     dgates.data_ptr<T>() + off * 4 * H, 4 * H};
        C10_CUDA_CHECK(lstm_backward_step<T>(st, bs, stream));
        mm<T>(bs, P, 4 * H, dgates.data_ptr<T>() + off * 4 * H, 4 * H, 1, whh.data_ptr<T>(), P, 1, dhs, P, false,
              stream);   // dh_prev = dgates W_hh
      }
    }
    if (output_mask[0]) {
      gx = at::empty({s.N, s.I}, input.options());
      const at::Tensor wih = w_ih.contiguous();
      mm<T>(s.N, s.I, 4 * H, dgates.data_ptr<T>(), 4 * H, 1, wih.data_ptr<T>(), s.I, 1, gx.data_ptr<T>(), s.I, false,
            stream);
    }
    if (output_mask[2]) {
      const at::Tensor x = input.contiguous();
      gw_ih = weight_grad<T>(dgates, x.data_ptr<T>(), s.I, s.I, s.N, stream);
      const at::Tensor h_prev = rnn_gather_prev(output, hx, s, reverse).contiguous();
      gw_hh = weight_grad<T>(dgates, h_prev.data_ptr<T>(), P, P, s.N, stream);
      gb = dgates.sum(0);
      if (proj) gw_hr = weight_grad<T>(dh_all, ws.data_ptr<T>() + 5 * H, ldw, H, s.N, stream);
    }
  });
  const at::Tensor none = at::empty({0}, input.options());
  return {output_mask[0] ? gx : none, output_mask[1] ? dh : none, output_mask[1] ? dc : none,
          output_mask[2] ? gw_ih : none, output_mask[2] ? gw_hh : none, output_mask[2] ? gb : none,
          output_mask[2] && proj ? gw_hr : none};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_cuda(
    const at::Tensor& input, const at::Tensor& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    bool reverse) {
  const RnnLayerShape s = check_rnn_layer(kGru, 3, input, batch_sizes, hx, std::nullopt, w_ih, w_hh, b_ih, b_hh,
                                          std::nullopt);
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int64_t H = s.H;
  at::Tensor out = at::empty({s.N, H}, input.options());
  at::Tensor hy = hx.clone(at::MemoryFormat::Contiguous);
  at::Tensor ws = at::empty({s.N, gru_workspace_cols(s)}, input.options());
  if (s.N == 0) return {out, hy, ws};
  const at::Tensor x = input.contiguous(), wih = w_ih.contiguous(), whh = w_hh.contiguous();
  const at::Tensor bih = b_ih.has_value() && b_ih->defined() ? b_ih->contiguous() : at::Tensor();
  const at::Tensor bhh = b_hh.has_value() && b_hh->defined() ? b_hh->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kGru, [&] {
    using T = scalar_t;
    at::Tensor ax = at::empty({s.N, 3 * H}, input.options());
    at::Tensor ah = at::empty({s.B, 3 * H}, input.options());
    input_projection<T>(s, x, wih, bih, 3 * H, ax.data_ptr<T>(), 3 * H, stream);
    T* hs = hy.data_ptr<T>();
    for (int64_t q = 0; q < s.T; ++q) {
      const int64_t t = reverse ? s.T - 1 - q : q, off = s.offsets[t], bs = s.batch_sizes[t];
      if (bhh.defined()) C10_CUDA_CHECK(fill_rows<T>(ah.data_ptr<T>(), 3 * H, bhh.data_ptr<T>(), bs, 3 * H, stream));
      mm<T>(bs, 3 * H, H, hs, H, 1, whh.data_ptr<T>(), 1, H, ah.data_ptr<T>(), 3 * H, bhh.defined(), stream);
      const GruForwardStep<T> st{H, ax.data_ptr<T>() + off * 3 * H, 3 * H, ah.data_ptr<T>(), hs,
                                 ws.data_ptr<T>() + off * 4 * H, 4 * H, out.data_ptr<T>() + off * H, H};
      C10_CUDA_CHECK(gru_forward_step<T>(st, bs, stream));
    }
  });
  return {out, hy, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input, const at::Tensor& batch_sizes,
    const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const at::Tensor& output, const at::Tensor& workspace, bool reverse,
    std::array<bool, 3> output_mask) {
  const RnnLayerShape s = check_gru_layer_backward(kGruBackward, grad_output, grad_hy, input, batch_sizes, hx, w_ih,
                                                   w_hh, b_ih, b_hh, output, workspace);
  const int64_t H = s.H;
  const c10::cuda::CUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  at::Tensor dh = grad_hy.clone(at::MemoryFormat::Contiguous);
  at::Tensor dax = at::empty({s.N, 3 * H}, input.options()), dah = at::empty({s.N, 3 * H}, input.options());
  at::Tensor gx, gw_ih, gw_hh, gb_ih, gb_hh;
  const at::Tensor ws = workspace.contiguous(), go = grad_output.contiguous(), whh = w_hh.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kGruBackward, [&] {
    using T = scalar_t;
    const at::Tensor h_prev = rnn_gather_prev(output, hx, s, reverse).contiguous();
    T* dhs = dh.data_ptr<T>();
    for (int64_t q = 0; q < s.T && s.N > 0; ++q) {
      const int64_t t = reverse ? q : s.T - 1 - q, off = s.offsets[t], bs = s.batch_sizes[t];
      T* dahp = dah.data_ptr<T>() + off * 3 * H;
      const GruBackwardStep<T> st{H, ws.data_ptr<T>() + off * 4 * H, 4 * H, h_prev.data_ptr<T>() + off * H, H, dhs,
                                  go.data_ptr<T>() + off * H, H, dax.data_ptr<T>() + off * 3 * H, 3 * H, dahp};
      C10_CUDA_CHECK(gru_backward_step<T>(st, bs, stream));
      mm<T>(bs, H, 3 * H, dahp, 3 * H, 1, whh.data_ptr<T>(), H, 1, dhs, H, true, stream);   // + dah W_hh
    }
    if (output_mask[0]) {
      gx = at::empty({s.N, s.I}, input.options());
      const at::Tensor wih = w_ih.contiguous();
      mm<T>(s.N, s.I, 3 * H, dax.data_ptr<T>(), 3 * H, 1, wih.data_ptr<T>(), s.I, 1, gx.data_ptr<T>(), s.I, false,
            stream);
    }
    if (output_mask[2]) {
      const at::Tensor x = input.contiguous();
      gw_ih = weight_grad<T>(dax, x.data_ptr<T>(), s.I, s.I, s.N, stream);
      gw_hh = weight_grad<T>(dah, h_prev.data_ptr<T>(), H, H, s.N, stream);
      gb_ih = dax.sum(0);
      gb_hh = dah.sum(0);
    }
  });
  const at::Tensor none = at::empty({0}, input.options());
  return {output_mask[0] ? gx : none, output_mask[1] ? dh : none, output_mask[2] ? gw_ih : none,
          output_mask[2] ? gw_hh : none, output_mask[2] ? gb_ih : none, output_mask[2] ? gb_hh : none};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("lstm_layer", &lstm_layer_cuda);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cuda);
  m.impl("gru_layer", &gru_layer_cuda);
  m.impl("gru_layer_backward", &gru_layer_backward_cuda);
}

}  // namespace fastconv::cuda
