// The batch-norm kernels of batch_norm_kernels.inc compiled for AVX-512 (vectorised by the compiler),
// chosen at run time when the CPU has it (see isa.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/batch_norm.h"
#include "cpu/batch_norm_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

namespace fastconv::cpu {
namespace {

#include "cpu/batch_norm_kernels.inc"

}  // namespace

const BnKernels<float> bn_kernels_f32_avx512 = make_bn_kernels<float>();
const BnKernels<double> bn_kernels_f64_avx512 = make_bn_kernels<double>();

}  // namespace fastconv::cpu

#pragma GCC pop_options
