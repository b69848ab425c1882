// The direct convolution's tile kernel (conv2d_direct.inc) compiled for AVX2: 32-byte vectors.
#include <cstdint>

#include "cpu/conv2d_direct_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace fastconv::cpu {
namespace {

constexpr int kVecBytes = 32;
#include "cpu/conv2d_direct.inc"

}  // namespace

const DirectConvKernels<float> direct_kernels_f32_avx2 = make_direct_kernels<float>();
const DirectConvKernels<double> direct_kernels_f64_avx2 = make_direct_kernels<double>();

}  // namespace fastconv::cpu

#pragma GCC pop_options
