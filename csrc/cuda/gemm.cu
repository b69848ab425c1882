// CUDA SGEMM/DGEMM: a shared-memory tiled kernel with register tiling, any M, N, K (edges handled in
// the kernel), any strides (so transposes are free), and a whole strided batch of GEMMs in one
// launch (common/gemm_batch.h: z over grid.z, the reduction batch summed inside the K loop).
//
// Block tile BM x BN = 64 x 64, the block tiles numbered along grid.x with M fastest
// (gemm_block_tile); K main loop in steps of BK = 16 staged through shared memory (A tile stored
// k-major, As[k][m], so a thread's TM consecutive rows are contiguous); full tiles of
// 16-byte-aligned row-major float operands are loaded as float4 (one per thread per operand); each of
// the 256 threads owns a TM x TN = 4 x 4 register tile; the epilogue applies alpha and beta.
// Out-of-range elements are loaded as zero, and stores are bounds-checked. Index arithmetic inside
// one operand is 32-bit (I = int32_t) when every operand's extent allows, 64-bit otherwise.
#include "cuda/gemm.h"

#include <algorithm>
#include <cstdint>

namespace fastconv::cuda {
namespace {

constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4;
constexpr int kThreads = (BM / TM) * (BN / TN);   // 256
constexpr int64_t kMaxGridZ = 65535;

// Whether an operand's rows can be read as aligned float4s in every GEMM of the batch: unit stride
// along the row, a row pitch, batch strides and base address that keep every 4-element group 16-byte
// aligned (float only).
template <typename T>
bool rows_vectorisable(const T* p, int64_t row_stride, int64_t elem_stride, const GemmBatchStrides& bs) {
  return sizeof(T) == 4 && elem_stride == 1 && row_stride % 4 == 0 && gemm_batch_strides_multiple_of(bs, 4) &&
         reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// The general staging, one element per step, zero outside the matrices: S[kk][x] = element (base + x,
// k0 + kk) of an extent x k operand, `ext_stride` apart along the extent and `k_stride` along K. A
// stages with (m, rs_a, cs_a), B with (n, cs_b, rs_b). Consecutive threads take consecutive x,
// coalesced when the extent is the unit-stride dimension.
template <typename T, typename I, int W>
__device__ void stage_tile(T (&S)[BK][W], const T* __restrict__ p, I extent, I k, I ext_stride, I k_stride, I base,
                           I k0, int tid) {
  for (int e = tid; e < W * BK; e += kThreads) {
    const I x = e % W, kk = e / W;
    const I gx = base + x, gk = k0 + kk;
    S[kk][x] = (gx < extent && gk < k) ? p[gx * ext_stride + gk * k_stride] : T(0);
  }
}

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
gemm_kernel(I m, I n, I k, T alpha, const T* __restrict__ a, I rs_a, I cs_a, const T* __restrict__ b, I rs_b, I cs_b,
            T beta, T* __restrict__ c, I rs_c, GemmBatch batch, bool vec_a, bool vec_b) {
  __shared__ __align__(16) T As[BK][BM];
  __shared__ __align__(16) T Bs[BK][BN];
  const int tid = threadIdx.x;
  const int tx = tid % (BN / TN), ty = tid / (BN / TN);   // this thread's 4x4 tile in the block tile
  int64_t row0_64, col0_64;
  gemm_block_tile(blockIdx.x, (m + BM - 1) / BM, BM, BN, &row0_64, &col0_64);
  const I row0 = static_cast<I>(row0_64), col0 = static_cast<I>(col0_64);
  for (int64_t z = blockIdx.z; z < batch.count; z += gridDim.z) {
    T acc[TM][TN] = {};
    for (int64_t r = 0; r < batch.reduce; ++r) {
      const T* az = a + gemm_batch_offset(batch, batch.a, z, r);
      const T* bz = b + gemm_batch_offset(batch, batch.b, z, r);
      for (I k0 = 0; k0 < k; k0 += BK) {
        // Stage the tiles: BM*BK/256 = 4 elements of A and 4 of B per thread.
        // Full tiles of row-major operands instead load one float4 per thread (BM*BK/4 = 256): A along
        // k, transposed into As on the way; B along n, straight into Bs.
        const bool full_k = k0 + BK <= k;
        if constexpr (sizeof(T) == 4) {
          if (vec_a && full_k && row0 + BM <= m) {
            const I mm = tid / (BK / 4), kk = tid % (BK / 4) * 4;
            const float4 v = *reinterpret_cast<const float4*>(az + (row0 + mm) * rs_a + k0 + kk);
            As[kk][mm] = v.x;
            As[kk + 1][mm] = v.y;
            As[kk + 2][mm] = v.z;
            As[kk + 3][mm] = v.w;
          } else {
            stage_tile<T, I, BM>(As, az, m, k, rs_a, cs_a, row0, k0, tid);
          }
          if (vec_b && full_k && col0 + BN <= n) {
            const I kk = tid / (BN / 4), nn = tid % (BN / 4) * 4;
            *reinterpret_cast<float4*>(&Bs[kk][nn]) = *reinterpret_cast<const float4*>(bz + (k0 + kk) * rs_b + col0 + nn);
          } else {
            stage_tile<T, I, BN>(Bs, bz, n, k, cs_b, rs_b, col0, k0, tid);
          }
        } else {
          stage_tile<T, I, BM>(As, az, m, k, rs_a, cs_a, row0, k0, tid);
          stage_tile<T, I, BN>(Bs, bz, n, k, cs_b, rs_b, col0, k0, tid);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
          T av[TM], bv[TN];
#pragma unroll
          for (int i = 0; i < TM; ++i) av[i] = As[kk][ty * TM + i];
#pragma unroll
          for (int j = 0; j < TN; ++j) bv[j] = Bs[kk][tx * TN + j];
#pragma unroll
          for (int i = 0; i < TM; ++i) {
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] += av[i] * bv[j];
          }
        }
        __syncthreads();
      }
    }
    // Epilogue: alpha * acc + beta * C, bounds-checked.
    T* cz = c + gemm_batch_offset(batch, batch.c, z, 0);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const I gi = row0 + ty * TM + i;
      if (gi >= m) continue;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const I gj = col0 + tx * TN + j;
        if (gj >= n) continue;
        T* dst = cz + gi * rs_c + gj;
        *dst = beta == T(0) ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *dst;
      }
    }
  }
}

// The largest element offset an operand's indexing reaches inside one GEMM of the batch, plus the
// tile overhang (indices are formed before the bounds test), so that I = int32_t is safe below 2^31.
int64_t operand_span(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  return (rows + BM) * rs + (cols + BN) * cs;
}

template <typename T, typename I>
cudaError_t launch_typed(int64_t m, int64_t n, int64_t k, double alpha, const T* a, int64_t rs_a, int64_t cs_a,
                         const T* b, int64_t rs_b, int64_t cs_b, double beta, T* c, int64_t rs_c, const GemmBatch& batch,
                         cudaStream_t stream) {
  const int64_t tiles = (m + BM - 1) / BM * ((n + BN - 1) / BN);
  if (tiles > INT32_MAX) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(tiles), 1, static_cast<unsigned>(batch.count < kMaxGridZ ? batch.count : kMaxGridZ));
  gemm_kernel<T, I><<<grid, kThreads, 0, stream>>>(
      I(m), I(n), I(k), static_cast<T>(alpha), a, I(rs_a), I(cs_a), b, I(rs_b), I(cs_b), static_cast<T>(beta), c, I(rs_c),
      batch, rows_vectorisable(a, rs_a, cs_a, batch.a), rows_vectorisable(b, rs_b, cs_b, batch.b));
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch(int64_t m, int64_t n, int64_t k, double alpha, const void* a, int64_t rs_a, int64_t cs_a,
                   const void* b, int64_t rs_b, int64_t cs_b, double beta, void* c, int64_t rs_c, const GemmBatch& batch,
                   cudaStream_t stream) {
  const int64_t span = std::max({operand_span(m, k, rs_a, cs_a), operand_span(n, k, cs_b, rs_b),
                                 operand_span(m, n, rs_c, 1)});
  const T* at = static_cast<const T*>(a);
  const T* bt = static_cast<const T*>(b);
  T* ct = static_cast<T*>(c);
  if (span < INT32_MAX) {
    return launch_typed<T, int32_t>(m, n, k, alpha, at, rs_a, cs_a, bt, rs_b, cs_b, beta, ct, rs_c, batch, stream);
  }
  return launch_typed<T, int64_t>(m, n, k, alpha, at, rs_a, cs_a, bt, rs_b, cs_b, beta, ct, rs_c, batch, stream);
}

}  // namespace

cudaError_t gemm_batched(DType dtype, int64_t m, int64_t n, int64_t k, double alpha, const void* a, int64_t rs_a,
                         int64_t cs_a, const void* b, int64_t rs_b, int64_t cs_b, double beta, void* c, int64_t rs_c,
                         GemmBatch batch, cudaStream_t stream) {
  if (m == 0 || n == 0 || batch.count == 0) return cudaSuccess;   // no block to launch
  if (alpha == 0.0 || batch.reduce == 0) {   // BLAS: A and B are not read; C = beta * C
    k = 0;
    batch.reduce = 1;
  }
  if (dtype == DType::f64) {
    return launch<double>(m, n, k, alpha, a, rs_a, cs_a, b, rs_b, cs_b, beta, c, rs_c, batch, stream);
  }
  if (dtype == DType::f32) {
    return launch<float>(m, n, k, alpha, a, rs_a, cs_a, b, rs_b, cs_b, beta, c, rs_c, batch, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t gemm(DType dtype, int64_t m, int64_t n, int64_t k, double alpha, const void* a, int64_t rs_a,
                 int64_t cs_a, const void* b, int64_t rs_b, int64_t cs_b, double beta, void* c, int64_t rs_c,
                 cudaStream_t stream) {
  return gemm_batched(dtype, m, n, k, alpha, a, rs_a, cs_a, b, rs_b, cs_b, beta, c, rs_c, GemmBatch{}, stream);
}

}  // namespace fastconv::cuda
