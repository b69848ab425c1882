// The LSTM and GRU step kernels (rnn_kernels.inc) as the AVX-512 build compiles it (64-byte vectors, its tile
// shapes and layouts), here for AVX2: the avx512_emulated level (isa.h), which runs that code on
// CPUs without AVX-512.
#include <cstdint>
#include <type_traits>

#include "common/rnn.h"
#include "cpu/rnn_kernels.h"

#define FASTCONV_EMULATED_AVX512   // simd_vec.inc: kNativeVectors
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// 64-byte vectors passed by value go in memory without AVX-512 (the ABI note GCC gives); only these
// internal functions see them.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastconv::cpu {
namespace {

constexpr int kVecBytes = 64;
#include "cpu/rnn_kernels.inc"

}  // namespace

const RnnKernels<float> rnn_kernels_f32_avx512_emulated = make_rnn_kernels<float>();
const RnnKernels<double> rnn_kernels_f64_avx512_emulated = make_rnn_kernels<double>();

}  // namespace fastconv::cpu

#pragma GCC pop_options
