// The depthwise convolution's primitives (conv2d_depthwise.inc) compiled for AVX2: 32-byte vectors.
#include <immintrin.h>

#include <cstdint>

#include "cpu/conv2d_depthwise.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace fastconv::cpu {
namespace {

constexpr int kVecBytes = 32;
#include "cpu/conv2d_depthwise.inc"

}  // namespace

const DepthwiseKernels<float> depthwise_kernels_f32_avx2 = make_depthwise_kernels<float>();
const DepthwiseKernels<double> depthwise_kernels_f64_avx2 = make_depthwise_kernels<double>();

}  // namespace fastconv::cpu

#pragma GCC pop_options
