// The depthwise convolution's primitives (conv2d_depthwise.inc) as the AVX-512 build compiles it (64-byte vectors, its tile
// shapes and layouts), here for AVX2: the avx512_emulated level (isa.h), which runs that code on
// CPUs without AVX-512.
#include <immintrin.h>

#include <cstdint>

#include "cpu/conv2d_depthwise.h"

#define FASTCONV_EMULATED_AVX512   // simd_vec.inc: kNativeVectors
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// 64-byte vectors passed by value go in memory without AVX-512 (the ABI note GCC gives); only these
// internal functions see them.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastconv::cpu {
namespace {

constexpr int kVecBytes = 64;
#include "cpu/conv2d_depthwise.inc"

}  // namespace

const DepthwiseKernels<float> depthwise_kernels_f32_avx512_emulated = make_depthwise_kernels<float>();
const DepthwiseKernels<double> depthwise_kernels_f64_avx512_emulated = make_depthwise_kernels<double>();

}  // namespace fastconv::cpu

#pragma GCC pop_options
