// Portable qualifiers for math shared by the CPU (g++) and CUDA (nvcc) kernels.
// This header is torch-free: .cu files include it, and nvcc never sees a torch header.
#pragma once

#if defined(__CUDACC__)
#define FC_HD __host__ __device__ __forceinline__
#define FC_UNROLL _Pragma("unroll")   // fully unroll a loop of constant trip count (register arrays)
#else
#define FC_HD inline
#define FC_UNROLL
#endif
