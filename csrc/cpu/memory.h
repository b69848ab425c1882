// Memory helpers for the CPU glue.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace fastconv::cpu {

// Large outputs are freshly mapped pages, and first-touch faults at 4 KiB a page can cost more than
// the kernel that writes them (about 20 ms for the 77 MB of a ResNet stem max-pool's output and
// indices on our 2-vCPU machine). This asks Linux to back the whole 2 MiB-aligned part of a new,
// not yet written tensor with transparent huge pages (where THP is in `madvise` mode), which is
// what torch itself does under THP_MEM_ALLOC_ENABLE=1. A hint only: no effect on other systems,
// on small tensors, or where the kernel declines. FASTCONV_HUGE_PAGES=0 turns it off.
void advise_huge_pages(const at::Tensor& fresh);

// Whether every element of a floating-point tensor (float, double, float16, bfloat16) is finite (no NaN,
// no infinity): a parallel scan of its bit patterns (of a contiguous copy, for a tensor with gaps). Winograd's transforms mix a tile's values, so one NaN or infinity would spread
// to outputs whose window does not hold it (infinity minus infinity is NaN), where torch's
// convolution keeps it to the outputs it reaches: its callers check the activations with this (the
// filter transform checks the weight as it reads it) and run im2col's kernels instead.
bool all_finite(const at::Tensor& t);

// Per-thread scratch memory that outlives a call. The kernels' temporary buffers (packed GEMM panels,
// im2col columns, Winograd tiles) would otherwise be fresh mappings on every call above glibc's mmap
// threshold, faulted in page by page: for a Winograd layer's 36 GEMMs that costs more than the
// arithmetic. Each slot keeps the largest buffer asked of it on each thread (freed at thread exit).
enum class Scratch {
  gemm_b, gemm_a, gemm_c,                          // the GEMM engine's packed panels, a swapped product
  conv_cols, conv_prod, conv_pad, conv_wpack,      // im2col: columns, products, padded planes, packed weights
  conv_dw,                                         // grad_weight: the threads' partial sums
  winograd_v, winograd_m, winograd_u, winograd_vp, // Winograd: transformed inputs, products, filters, packed inputs
  rnn_w_ih, rnn_w_hh, rnn_w_hr,                    // RNN layers: packed weights
  count
};

// The most the convolutions' working copies (im2col's columns and padded planes, the bfloat16 direct
// kernel's NHWC input) take in all: scratch buffers keep their largest size, so an unbounded copy of a
// large batch would stay allocated for the life of the thread.
constexpr size_t kWorkspaceBytes = size_t(64) << 20;

// `bytes` of 64-byte aligned memory for `slot` on the calling thread, uninitialised, valid until the
// same thread asks for the same slot again. A function holding a slot must not call one that uses it.
void* scratch_bytes(Scratch slot, size_t bytes);

template <typename T>
T* scratch(Scratch slot, int64_t elems) {
  return static_cast<T*>(scratch_bytes(slot, static_cast<size_t>(elems > 0 ? elems : 1) * sizeof(T)));
}

// A sum over `count` work units split into `parts` (>= 2) runs, one per thread: sum(u0, u1, acc) writes
// the sum of units [u0, u1) into acc (overwriting it), the first run straight into dst and the others
// into partial buffers (Scratch::conv_dw of the calling thread), which are then added to dst. Used by
// the convolutions' grad_weight, whose GEMMs then each run on one thread without a fork per K block.
template <typename T, typename Sum>
void sum_in_parts(int64_t parts, int64_t count, int64_t elems, T* dst, const Sum& sum) {
  T* partial = scratch<T>(Scratch::conv_dw, (parts - 1) * elems);   // written and read by the workers
  at::parallel_for(0, parts, 1, [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) sum(count * q / parts, count * (q + 1) / parts, q == 0 ? dst : partial + (q - 1) * elems);
  });
  at::parallel_for(0, elems, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t q = 1; q < parts; ++q) {
      const T* src = partial + (q - 1) * elems;
      for (int64_t i = b; i < e; ++i) dst[i] += src[i];
    }
  });
}

}  // namespace fastconv::cpu
