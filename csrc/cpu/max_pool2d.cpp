// CPU glue and portable kernels for fastconv::max_pool2d_with_indices and its backward.
//
// Forward: float32 runs the vectorised kernels (max_pool2d_avx512.cpp / _avx2.cpp) chosen at run time;
// float64, float16, bfloat16 and CPUs without AVX2 run the portable scalar kernel below, which is
// also the reference the vectorised ones use for their edge columns. Both parallelise over output
// rows with at::parallel_for.
// Backward: grad_input starts at zero and each output's gradient is added at its saved index
// (a scatter). Threads own disjoint input planes (NCHW) or whole images (channels-last), so
// overlapping windows never race.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/pool2d_args.h"
#include "cpu/half_runs.h"
#include "cpu/isa.h"
#include "cpu/max_pool2d_kernels.h"
#include "cpu/memory.h"

namespace fastconv::cpu {
namespace {

constexpr const char* kForward = "max_pool2d_with_indices";
constexpr const char* kBackward = "max_pool2d_with_indices_backward";

// Outputs at least this large (output + indices) bypass the caches on the way out: they cannot stay
// cached anyway, and write-allocate would first read every line they overwrite.
constexpr size_t kStreamingBytes = size_t(32) << 20;

// Rows (or backward tasks) per parallel task: about 4K units of work each, a unit being one window tap
// in the forward and one grad_input element in the backward (the grain only decides whether a problem
// is worth a second thread: at::parallel_for splits a range into one run per thread). Against the 32K
// outputs per task (and one backward task per plane) this replaced, alternating in one process on the
// Zen 4, a 2x2 pool's forward + backward over 8x256x7x7 ran 275 -> 178 us and over 8x64x16x16 247 ->
// 174 us (both had run their forward on one thread); against 16K units, the forward over 32x6x8x8
// 25.6 -> 18.1 us (torch 19-21) and over 32x16x4x4 31 -> 20.5 us, larger ones unchanged.
int64_t task_grain(int64_t work_per_row) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, work_per_row)); }

template <typename T>
void forward_scalar(const T* in, T* out, int64_t* idx, const MaxPool2dShape& s, bool nhwc) {
  using acc_t = at::opmath_type<T>;
  const auto& g = s.g;
  const int64_t C = s.channels;
  if (!nhwc) {
    at::parallel_for(0, s.batch * C * g.out_h, task_grain(g.out_w * g.kh * g.kw), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t plane = r / g.out_h, oh = r % g.out_h;
        const T* in_plane = in + plane * g.in_h * g.in_w;
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          acc_t v;
          max_pool_window<T, acc_t>(in_plane, 1, g, oh, ow, &v, &idx[r * g.out_w + ow]);
          out[r * g.out_w + ow] = static_cast<T>(v);
        }
      }
    });
  } else {
    at::parallel_for(0, s.batch * g.out_h, task_grain(g.out_w * C * g.kh * g.kw), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / g.out_h, oh = r % g.out_h;
        const T* in_img = in + n * g.in_h * g.in_w * C;
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t o = (r * g.out_w + ow) * C;
          for (int64_t c = 0; c < C; ++c) {
            acc_t v;
            max_pool_window<T, acc_t>(in_img + c, C, g, oh, ow, &v, &idx[o + c]);
            out[o + c] = static_cast<T>(v);
          }
        }
      }
    });
  }
}

MaxPool2dRowsFn pick_f32_kernel(const MaxPool2dShape& s, bool nhwc) {
  // The vector kernels hold plane indices in int32 lanes.
  if (s.g.in_h * s.g.in_w > std::numeric_limits<int32_t>::max()) return nullptr;
  switch (active_isa()) {
    case Isa::amx:
    case Isa::avx512_bf16:
    case Isa::avx512: return nhwc ? max_pool2d_nhwc_f32_avx512 : max_pool2d_nchw_f32_avx512;
    case Isa::avx512_emulated:   // no emulated build (isa.h)
    case Isa::avx2: return nhwc ? max_pool2d_nhwc_f32_avx2 : max_pool2d_nchw_f32_avx2;
    default: return nullptr;
  }
}

// Half precision on the float32 vector kernels: a half value widens to float32 exactly and the
// maximum (NaN included) is one of the inputs, so widening each task's input (a plane, or a
// channels-last image) into a thread's buffer, pooling it in float32 and narrowing the result back
// gives torch's values and indices bit for bit.
template <typename T>
void forward_half_by_f32(MaxPool2dRowsFn fn, const T* in, T* out, int64_t* idx, const MaxPool2dShape& s, bool nhwc) {
  const int64_t cb = nhwc ? s.channels : 1, tasks = nhwc ? s.batch : s.batch * s.channels;
  const int64_t in_task = s.g.in_h * s.g.in_w * cb, out_task = s.g.out_h * s.g.out_w * cb;
  const HalfRunFns& cv = half_runs(std::is_same_v<T, at::Half> ? DType::f16 : DType::bf16);
  at::parallel_for(0, tasks, 1, [&](int64_t b, int64_t e) {
    // uninitialised: every element is written before it is read
    std::unique_ptr<float[]> x(new float[static_cast<size_t>(in_task)]), y(new float[static_cast<size_t>(out_task)]);
    for (int64_t t = b; t < e; ++t) {
      cv.widen(in + t * in_task, x.get(), in_task);
      const MaxPool2dProblem p{x.get(), y.get(), idx + t * out_task, s.g, cb, false};
      fn(p, 0, s.g.out_h);   // the task's output rows: one plane, or one image
      cv.narrow(y.get(), out + t * out_task, out_task);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices_cpu(const at::Tensor& self, at::IntArrayRef kernel_size,
                                                               at::IntArrayRef stride, at::IntArrayRef padding,
                                                               at::IntArrayRef dilation, bool ceil_mode) {
  const MaxPool2dShape s = max_pool2d_shape(self, kernel_size, stride, padding, dilation, ceil_mode, kForward);
  const auto sizes = max_pool2d_output_sizes(s);
  at::Tensor out = at::empty(sizes, self.options().memory_format(s.format));
  at::Tensor idx = at::empty(sizes, self.options().dtype(at::kLong).memory_format(s.format));
  if (out.numel() == 0) return {out, idx};
  advise_huge_pages(out);
  advise_huge_pages(idx);
  const at::Tensor in = self.contiguous(s.format);
  const bool nhwc = s.format == at::MemoryFormat::ChannelsLast;

  if (self.scalar_type() == at::kFloat) {
    if (MaxPool2dRowsFn fn = pick_f32_kernel(s, nhwc)) {
      const bool stream = nhwc && (out.nbytes() + idx.nbytes()) >= kStreamingBytes;
      const MaxPool2dProblem p{in.data_ptr<float>(), out.data_ptr<float>(), idx.data_ptr<int64_t>(), s.g,
                               s.channels, stream};
      const int64_t rows = nhwc ? s.batch * s.g.out_h : s.batch * s.channels * s.g.out_h;
      const int64_t taps_per_row = (nhwc ? s.g.out_w * s.channels : s.g.out_w) * s.g.kh * s.g.kw;
      at::parallel_for(0, rows, task_grain(taps_per_row), [&](int64_t b, int64_t e) { fn(p, b, e); });
      return {out, idx};
    }
  }
  if (self.scalar_type() == at::kHalf || self.scalar_type() == at::kBFloat16) {
    if (MaxPool2dRowsFn fn = pick_f32_kernel(s, nhwc)) {
      AT_DISPATCH_REDUCED_FLOATING_TYPES(self.scalar_type(), kForward, [&] {
        forward_half_by_f32<scalar_t>(fn, in.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), s,
                                      nhwc);
      });
      return {out, idx};
    }
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, self.scalar_type(), kForward, [&] {
    forward_scalar<scalar_t>(in.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), s, nhwc);
  });
  return {out, idx};
}

// One backward task: `cb` channels of one image whose pixels are `step` elements apart (NCHW: one
// plane, cb = step = 1; channels-last: a whole image, cb = step = C). Zero the task's slice of
// grad_input, then add every output's gradient at its saved index, walking grad_output and indices in
// memory order. float32/float64 accumulate in place; float16/bfloat16 through a float buffer, so
// overlapping windows sum in float as torch does. Offsets outside the plane (only possible for a
// window with no in-bounds tap, which torch reports the same way) are skipped.
template <typename T, typename acc_t>
void scatter_task(const T* go, const int64_t* idx, T* gi, acc_t* acc, int64_t plane_out, int64_t plane_in,
                  int64_t cb, int64_t step) {
  acc_t* sum = acc != nullptr ? acc : reinterpret_cast<acc_t*>(gi);
  for (int64_t i = 0; i < plane_in * step; ++i) sum[i] = acc_t(0);
  for (int64_t o = 0; o < plane_out; ++o) {
    for (int64_t c = 0; c < cb; ++c) {
      const int64_t i = idx[o * step + c];
      if (i >= 0 && i < plane_in) sum[i * step + c] += static_cast<acc_t>(go[o * step + c]);
    }
  }
  if (acc != nullptr) {
    for (int64_t i = 0; i < plane_in * step; ++i) gi[i] = static_cast<T>(acc[i]);
  }
}

template <typename T>
void backward_scalar(const T* go, const int64_t* idx, T* gi, const MaxPool2dShape& s, bool nhwc) {
  using acc_t = at::opmath_type<T>;
  constexpr bool in_place = std::is_same_v<acc_t, T>;
  const int64_t plane_in = s.g.in_h * s.g.in_w, plane_out = s.g.out_h * s.g.out_w;
  const int64_t step = nhwc ? s.channels : 1;
  const int64_t tasks = nhwc ? s.batch : s.batch * s.channels;
  at::parallel_for(0, tasks, task_grain(plane_in * step), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buffer(in_place ? 0 : plane_in * step);
    for (int64_t t = begin; t < end; ++t) {
      scatter_task<T, acc_t>(go + t * plane_out * step, idx + t * plane_out * step, gi + t * plane_in * step,
                             in_place ? nullptr : buffer.data(), plane_out, plane_in, step, step);
    }
  });
}

at::Tensor max_pool2d_with_indices_backward_cpu(const at::Tensor& grad_output, const at::Tensor& self,
                                                at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode,
                                                const at::Tensor& indices) {
  const MaxPool2dShape s = max_pool2d_shape(self, kernel_size, stride, padding, dilation, ceil_mode, kBackward);
  check_max_pool2d_backward(grad_output, self, indices, s, kBackward);
  at::Tensor gi = at::empty(self.sizes(), self.options().memory_format(s.format));
  if (gi.numel() == 0) return gi;
  advise_huge_pages(gi);
  const at::Tensor go = grad_output.contiguous(s.format);
  const at::Tensor idx = indices.contiguous(s.format);
  const bool nhwc = s.format == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, self.scalar_type(), kBackward, [&] {
    backward_scalar<scalar_t>(go.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), gi.data_ptr<scalar_t>(), s, nhwc);
  });
  return gi;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("max_pool2d_with_indices", &max_pool2d_with_indices_cpu);
  m.impl("max_pool2d_with_indices_backward", &max_pool2d_with_indices_backward_cpu);
}

}  // namespace fastconv::cpu
