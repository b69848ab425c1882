// The LSTM and GRU step kernels of rnn_kernels.inc compiled for AVX512, chosen at run time when the
// CPU has it (see isa.h).
#include <cstdint>
#include <type_traits>

#include "common/rnn.h"
#include "cpu/rnn_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")

namespace fastconv::cpu {
namespace {

constexpr int kVecBytes = 64;
#include "cpu/rnn_kernels.inc"

}  // namespace

const RnnKernels<float> rnn_kernels_f32_avx512 = make_rnn_kernels<float>();
const RnnKernels<double> rnn_kernels_f64_avx512 = make_rnn_kernels<double>();

}  // namespace fastconv::cpu

#pragma GCC pop_options
