// CUDA glue for conv2d. im2col + the tiled GEMM: common/conv2d_gemm_plan.h's launch plan (a batch
// of images and all groups per launch) run by CudaLaunches on the current stream. direct: the
// kernels of conv2d_direct.cu for the forward pass and grad_input; Winograd: conv2d_winograd.cu's
// transforms around one batched launch of the alpha^2 GEMMs per chunk of tile rows; grad_weight is
// im2col's for all of them. float16/bfloat16 forward with im2col or auto, on compute capability 8.0
// and later: common/conv2d_tensor_cores.h on the mma.sync GEMM; the rest of half precision (direct,
// Winograd, every backward) runs in float32 inside, rounded once.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <string_view>

#include "common/conv2d_args.h"
#include "common/conv2d_gemm_plan.h"
#include "common/conv2d_tensor_cores.h"
#include "cuda/conv2d.h"
#include "cuda/conv2d_winograd.h"
#include "cuda/gemm.h"

namespace fastconv::cuda {
namespace {

constexpr const char* kForward = "conv2d";
constexpr const char* kBackward = "conv2d_backward";
constexpr size_t kWorkspaceBytes = size_t(64) << 20;

char* at_elem(const at::Tensor& t, int64_t offset) {
  return static_cast<char*>(t.data_ptr()) + offset * static_cast<int64_t>(t.element_size());
}


Conv2dDims dims_of(const Conv2dShape& s) { return Conv2dDims{s.batch, s.in_channels, s.out_channels, s.groups}; }

// The Backend of common/conv2d_gemm_plan.h on the GPU: each step one launch on `stream`.
struct CudaLaunches {
  DType dt;
  const Conv2dShape& s;
  cudaStream_t stream;

  void im2col(const void* x, int64_t images, int64_t p0, int64_t pc, void* cols) const {
    C10_CUDA_CHECK(conv2d_im2col(dt, x, images, s.in_channels, s.g, p0, pc, cols, stream));
  }
  void col2im_add(const void* cols, int64_t images, int64_t p0, int64_t pc, void* dx) const {
    C10_CUDA_CHECK(conv2d_col2im_add(dt, cols, images, s.in_channels, s.g, p0, pc, dx, stream));
  }
  void gemm(int64_t m, int64_t n, int64_t k, const void* a, int64_t rs_a, int64_t cs_a, const void* b, int64_t rs_b,
            int64_t cs_b, double beta, void* c, int64_t rs_c, const GemmBatch& batch) const {
    C10_CUDA_CHECK(gemm_batched(dt, m, n, k, 1.0, a, rs_a, cs_a, b, rs_b, cs_b, beta, c, rs_c, batch, stream));
  }
};

// The Backend of common/conv2d_tensor_cores.h: half-precision im2col, the mma.sync GEMM over a batch.
struct CudaTensorCoreLaunches {
  DType dt;
  const Conv2dShape& s;
  cudaStream_t stream;

  void im2col(const uint16_t* x, int64_t images, int64_t p0, int64_t pc, int64_t pitch, uint16_t* cols) const {
    C10_CUDA_CHECK(conv2d_im2col_half(x, images, s.in_channels, s.g, p0, pc, pitch, cols, stream));
  }
  void gemm(const MmaGemmParams& p, const GemmBatch& batch) const {
    C10_CUDA_CHECK(gemm_mma_batched(dt, dt, p, batch, stream));
  }
};

// The column workspace of a plan (undefined when it needs none).
at::Tensor plan_workspace(const Conv2dShape& s, const Conv2dGemmDims& d, const Conv2dBatching& b,
                          const at::TensorOptions& options) {
  const int64_t elems = conv2d_batching_workspace(s, d, b);
  return elems > 0 ? at::empty({elems}, options) : at::Tensor();
}

void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// The transformed filters U[e][kout][cin] of `weight` (flipped and transposed for grad_input), made on
// `stream` for this call: CUDA weights are not cached (common/weight_cache.h says why).
at::Tensor winograd_filters(const at::Tensor& weight, int m, bool transposed, const Conv2dShape& s,
                            cudaStream_t stream) {
  const at::Tensor w = weight.contiguous();
  const int64_t kout = transposed ? s.in_channels : s.out_channels, cin = transposed ? s.out_channels : s.in_channels;
  at::Tensor u = at::empty({(m + 2) * (m + 2), kout, cin}, w.options());
  const DType dt = to_dtype(w.scalar_type());
  if (transposed) {   // g'[c][k][i][j] = w[k][c][2 - i][2 - j]
    C10_CUDA_CHECK(winograd_filter_transform(dt, m, at_elem(w, 8), 9, s.in_channels * 9, -3, -1, kout, cin,
                                             u.data_ptr(), stream));
  } else {
    C10_CUDA_CHECK(winograd_filter_transform(dt, m, w.data_ptr(), s.in_channels * 9, 9, 3, 1, kout, cin,
                                             u.data_ptr(), stream));
  }
  return u;
}

// The Winograd pipeline of cpu/conv2d_winograd.cpp on the GPU: per chunk of tile rows, the input
// transform, alpha^2 GEMMs and the output transform.
void winograd_run(int m, const at::Tensor& x, const at::Tensor& u, const void* bias, at::Tensor& out,
                  const WinogradDims& d, cudaStream_t stream) {
  const DType dt = to_dtype(x.scalar_type());
  const int64_t E = (m + 2) * (m + 2), elem = x.element_size();
  const int64_t tiles_h = (d.out_h + m - 1) / m, tiles_w = (d.out_w + m - 1) / m, rows = d.batch * tiles_h;
  const int64_t per_row = E * (d.in_ch + d.out_ch) * tiles_w * elem;
  const int64_t fit = std::clamp<int64_t>(static_cast<int64_t>(kWorkspaceBytes) / per_row, 1, rows);
  const int64_t chunks = (rows + fit - 1) / fit, rows_per_chunk = (rows + chunks - 1) / chunks;
  at::Tensor v = at::empty({E * d.in_ch * rows_per_chunk * tiles_w}, x.options());
  at::Tensor mt = at::empty({E * d.out_ch * rows_per_chunk * tiles_w}, x.options());
  for (int64_t r0 = 0; r0 < rows; r0 += rows_per_chunk) {
    const int64_t nrows = std::min(rows_per_chunk, rows - r0), tc = nrows * tiles_w;
    C10_CUDA_CHECK(winograd_input_transform(dt, m, x.data_ptr(), d, r0, nrows, v.data_ptr(), stream));
    GemmBatch batch;   // M[e] = U[e] V[e] for every e, one launch
    batch.count = E;
    batch.a = {d.out_ch * d.in_ch, 0, 0};
    batch.b = {d.in_ch * tc, 0, 0};
    batch.c = {d.out_ch * tc, 0, 0};
    C10_CUDA_CHECK(gemm_batched(dt, d.out_ch, tc, d.in_ch, 1.0, u.data_ptr(), d.in_ch, 1, v.data_ptr(), tc, 1, 0.0,
                                mt.data_ptr(), tc, batch, stream));
    C10_CUDA_CHECK(winograd_output_transform(dt, m, mt.data_ptr(), bias, d, r0, nrows, out.data_ptr(), stream));
  }
}

at::Tensor conv2d_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       c10::string_view algorithm) {
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups,
                                     std::string_view(algorithm.data(), algorithm.size()), kForward);
  if (is_half(input.scalar_type()) && (s.algorithm == Conv2dAlgorithm::im2col || s.chosen)) {
    const c10::cuda::CUDAGuard guard(input.device());
    if (at::cuda::getCurrentDeviceProperties()->major >= 8) {   // im2col on the tensor cores
      CudaTensorCoreLaunches be{to_dtype(input.scalar_type()), s, c10::cuda::getCurrentCUDAStream().stream()};
      return conv2d_tensor_cores(be, input, weight, bias, s, kWorkspaceBytes);
    }
  }
  if (is_half(input.scalar_type())) {   // direct, Winograd, and before compute capability 8.0: float32
    const std::optional<at::Tensor> b32 =
        bias.has_value() && bias->defined() ? std::optional<at::Tensor>(half_as_float(*bias)) : std::nullopt;
    return conv2d_cuda(half_as_float(input), half_as_float(weight), b32, stride, padding, dilation, groups, algorithm)
        .to(input.scalar_type());
  }
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty(conv2d_output_sizes(s), input.options());
  if (out.numel() == 0) return in_format(out, s.format);
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const DType dt = to_dtype(input.scalar_type());
  const Conv2dGemmDims d = conv2d_gemm_dims(s, input.element_size(), kWorkspaceBytes);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  if (const int m = winograd_tile(s.algorithm)) {
    const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
    const at::Tensor u = winograd_filters(weight, m, false, s, stream);
    const WinogradDims wd{s.batch, s.in_channels, s.out_channels, s.g.in_h, s.g.in_w, s.g.out_h, s.g.out_w,
                          s.g.ph, s.g.pw};
    winograd_run(m, x, u, has_bias ? b.data_ptr() : nullptr, out, wd, stream);
    return in_format(out, s.format);
  }
  if (s.algorithm == Conv2dAlgorithm::direct) {
    const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
    C10_CUDA_CHECK(conv2d_direct_forward(dt, x.data_ptr(), w.data_ptr(), has_bias ? b.data_ptr() : nullptr,
                                         out.data_ptr(), dims_of(s), s.g, stream));
    return in_format(out, s.format);
  }
  if (has_bias) conv2d_prefill_bias(out, *bias, s);   // the GEMM's beta term
  const Conv2dBatching batching = conv2d_batching(s, d, input.element_size(), kWorkspaceBytes);
  const at::Tensor cols = plan_workspace(s, d, batching, input.options());
  CudaLaunches be{dt, s, stream};
  conv2d_plan_forward(be, s, d, batching, input.element_size(), x.data_ptr(), w.data_ptr(), out.data_ptr(), has_bias,
                      ptr_or_null(cols));
  return in_format(out, s.format);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view algorithm,
    std::array<bool, 3> output_mask) {
  const Conv2dShape s = check_conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups,
                                              std::string_view(algorithm.data(), algorithm.size()), kBackward);
  if (s.in_channels == 0) return conv2d_backward_no_channels(input, weight, s, output_mask);
  if (is_half(input.scalar_type())) {
    auto [dx, dw, db] = conv2d_backward_cuda(half_as_float(grad_output), half_as_float(input),
                                             half_as_float(weight), stride, padding, dilation, groups, algorithm,
                                             output_mask);
    const auto dt = input.scalar_type();
    return {dx.to(dt), dw.to(dt), db.to(dt)};
  }
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor dy = grad_output.contiguous(), x = input.contiguous(), w = weight.contiguous();
  const DType dt = to_dtype(input.scalar_type());
  const Conv2dGemmDims d = conv2d_gemm_dims(s, input.element_size(), kWorkspaceBytes);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  at::Tensor dx = at::empty({0}, input.options()), dw = at::empty({0}, input.options()),
             db = at::empty({0}, input.options());
  const Conv2dBatching batching = conv2d_batching(s, d, input.element_size(), kWorkspaceBytes);
  const bool im2col_grad_input = output_mask[0] && winograd_tile(s.algorithm) == 0 && s.algorithm != Conv2dAlgorithm::direct;
  const at::Tensor cols = im2col_grad_input || output_mask[1] ? plan_workspace(s, d, batching, input.options()) : at::Tensor();
  CudaLaunches be{dt, s, stream};
  if (output_mask[0] && winograd_tile(s.algorithm) != 0) {
    const int m = winograd_tile(s.algorithm);
    dx = at::empty(input.sizes(), input.options());
    const at::Tensor u = winograd_filters(weight, m, true, s, stream);
    const WinogradDims wd{s.batch, s.out_channels, s.in_channels, s.g.out_h, s.g.out_w, s.g.in_h, s.g.in_w,
                          2 - s.g.ph, 2 - s.g.pw};
    if (dx.numel() > 0) winograd_run(m, dy, u, nullptr, dx, wd, stream);
    dx = in_format(dx, s.format);
  } else if (output_mask[0] && s.algorithm == Conv2dAlgorithm::direct) {
    dx = at::empty(input.sizes(), input.options());
    C10_CUDA_CHECK(conv2d_direct_grad_input(dt, dy.data_ptr(), w.data_ptr(), dx.data_ptr(), dims_of(s), s.g, stream));
    dx = in_format(dx, s.format);
  } else if (output_mask[0]) {
    dx = d.pointwise ? at::empty(input.sizes(), input.options()) : at::zeros(input.sizes(), input.options());
    conv2d_plan_grad_input(be, s, d, batching, input.element_size(), dy.data_ptr(), w.data_ptr(), dx.data_ptr(),
                           ptr_or_null(cols));
    dx = in_format(dx, s.format);   // torch: the convolution's memory format
  }
  if (output_mask[1]) {
    dw = at::zeros(weight.sizes(), weight.options());
    conv2d_plan_grad_weight(be, s, d, batching, input.element_size(), dy.data_ptr(), x.data_ptr(), dw.data_ptr(),
                            ptr_or_null(cols));
    dw = in_format(dw, s.format);
  }
  if (output_mask[2]) {
    db = at::empty({s.out_channels}, input.options());
    C10_CUDA_CHECK(conv2d_grad_bias(dt, dy.data_ptr(), s.batch, s.out_channels, d.P, db.data_ptr(), stream));
  }
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("conv2d", &conv2d_cuda);
  m.impl("conv2d_backward", &conv2d_backward_cuda);
}

}  // namespace fastconv::cuda
