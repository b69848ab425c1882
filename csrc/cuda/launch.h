// Launch arithmetic shared by the CUDA kernels (torch-free).
#pragma once

#include <cstdint>

namespace fastconv::cuda {

// Blocks of `threads` for a grid-stride loop over n elements: enough to cover n, capped where the
// loop inside the kernel takes over the rest (and gridDim.x stays far from its limit).
inline int grid_stride_blocks(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(b < 65535 * 8 ? b : 65535 * 8);
}

}  // namespace fastconv::cuda
