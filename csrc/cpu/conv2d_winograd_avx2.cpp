// The Winograd transforms (conv2d_winograd.inc) compiled for AVX2: 32-byte vectors.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>

#include "common/winograd.h"
#include "cpu/conv2d_winograd_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
// GCC 12's unmasked gather intrinsics (their _mm256_undefined_* sources) trip -Wmaybe-uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace fastconv::cpu {
namespace {

constexpr int kVecBytes = 32;
#include "cpu/conv2d_winograd.inc"

}  // namespace

const WinogradKernels<float> winograd_kernels_f32_avx2 = make_winograd_kernels<float>();
const WinogradKernels<double> winograd_kernels_f64_avx2 = make_winograd_kernels<double>();

}  // namespace fastconv::cpu

#pragma GCC pop_options
