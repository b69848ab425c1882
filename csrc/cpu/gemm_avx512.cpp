// The GEMM engine (gemm_kernels.inc) compiled for AVX-512: 64-byte vectors.
#include <algorithm>
#include <cstdint>

#include "cpu/gemm_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

namespace fastconv::cpu {
namespace {

constexpr int kVecBytes = 64;
#include "cpu/gemm_kernels.inc"

}  // namespace

const GemmKernels<float> gemm_kernels_f32_avx512 = make_gemm_kernels<float>();
const GemmKernels<double> gemm_kernels_f64_avx512 = make_gemm_kernels<double>();

}  // namespace fastconv::cpu

#pragma GCC pop_options
