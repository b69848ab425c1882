// Element conversions used by the shared (host-and-device) kernels. torch builds CUDA code with
// __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__, so __half and __nv_bfloat16 convert
// only through their intrinsics; on the CPU, c10::Half and c10::BFloat16 convert with static_cast.
#pragma once

#include "common/macros.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace fastconv {

template <typename To, typename From>
struct Convert {
  FC_HD static To apply(From v) { return static_cast<To>(v); }
};

#if defined(__CUDACC__)
template <> struct Convert<float, __half> { FC_HD static float apply(__half v) { return __half2float(v); } };
template <> struct Convert<__half, float> { FC_HD static __half apply(float v) { return __float2half(v); } };
template <> struct Convert<float, __nv_bfloat16> {
  FC_HD static float apply(__nv_bfloat16 v) { return __bfloat162float(v); }
};
template <> struct Convert<__nv_bfloat16, float> {
  FC_HD static __nv_bfloat16 apply(float v) { return __float2bfloat16(v); }
};
#endif

// Call it qualified (::fastconv::convert): c10 has a convert<To, From> that ADL would also find.
template <typename To, typename From>
FC_HD To convert(From v) { return Convert<To, From>::apply(v); }

}  // namespace fastconv
