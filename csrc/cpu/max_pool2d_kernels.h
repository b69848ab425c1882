// Entry points of the vectorised float32 max-pool kernels (torch-free: raw pointers and geometry).
//
// A kernel processes output rows [begin, end):
//   NCHW          row r = plane * out_h + oh, plane = n * C + c; vectorised along the output width.
//   channels-last row r = n * out_h + oh;                          vectorised along the channels.
// Indices are flat offsets ih * in_w + iw into one input plane, written as int64. The caller
// guarantees in_h * in_w < 2^31 (the kernels keep indices in 32-bit lanes).
#pragma once

#include <cstdint>

#include "common/pool2d.h"

namespace fastconv::cpu {

struct MaxPool2dProblem {
  const float* input;
  float* output;
  int64_t* indices;
  Pool2dGeometry g;
  int64_t channels;
  // Write output and indices with non-temporal stores (channels-last kernels): set for outputs much
  // larger than the caches, where write-allocate reads would only evict the input.
  bool stream_stores;
};

using MaxPool2dRowsFn = void (*)(const MaxPool2dProblem&, int64_t begin, int64_t end);

void max_pool2d_nchw_f32_avx512(const MaxPool2dProblem& p, int64_t begin, int64_t end);
void max_pool2d_nhwc_f32_avx512(const MaxPool2dProblem& p, int64_t begin, int64_t end);
void max_pool2d_nchw_f32_avx2(const MaxPool2dProblem& p, int64_t begin, int64_t end);
void max_pool2d_nhwc_f32_avx2(const MaxPool2dProblem& p, int64_t begin, int64_t end);

}  // namespace fastconv::cpu
