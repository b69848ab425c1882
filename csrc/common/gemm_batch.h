// A strided batch of GEMMs with a summed reduction batch, as the CUDA GEMM kernel runs it in one
// launch (host-and-device, torch-free):
//
//   C_z = alpha * sum over r < reduce of op(A_{z,r}) op(B_{z,r}) + beta * C_z,   z < count,
//
// where operand X_{z,r} starts (x an element pointer) at
//   x + (z / inner) * X.outer + (z % inner) * X.inner + r * X.red.
// Two batch levels cover convolution: z = (image, group) with inner = groups; the reduction batch
// sums a weight gradient over the images of a launch. C has no reduction stride (every r adds into
// the same C_z). One GEMM is count = inner = reduce = 1.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace fastconv {

struct GemmBatchStrides {
  int64_t outer = 0, inner = 0, red = 0;
};

struct GemmBatch {
  int64_t count = 1, inner = 1, reduce = 1;
  GemmBatchStrides a, b, c;
};

// The element offset of operand `x` of GEMM z, reduction step r.
FC_HD int64_t gemm_batch_offset(const GemmBatch& batch, const GemmBatchStrides& x, int64_t z, int64_t r) {
  return (z / batch.inner) * x.outer + (z % batch.inner) * x.inner + r * x.red;
}

// Whether every offset of the batch is a multiple of `q` elements (vectorised loads stay aligned).
FC_HD bool gemm_batch_strides_multiple_of(const GemmBatchStrides& x, int64_t q) {
  return x.outer % q == 0 && x.inner % q == 0 && x.red % q == 0;
}

// The CUDA kernel's block tiles over an m x n output: blockIdx.x numbers them with M fastest (M on
// grid.x, so neither dimension meets the 65535 limit of grid.y); tile b covers rows
// [(b % m_tiles) * bm, ...) and columns [(b / m_tiles) * bn, ...).
FC_HD void gemm_block_tile(int64_t block, int64_t m_tiles, int64_t bm, int64_t bn, int64_t* row0, int64_t* col0) {
  *row0 = (block % m_tiles) * bm;
  *col0 = (block / m_tiles) * bn;
}

}  // namespace fastconv
