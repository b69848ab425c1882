// Launchers of the CUDA LSTM and GRU step kernels (torch-free; shared by the glue and rnn.cu): the
// fused pointwise part of one time step over its first `rows` rows, one thread per (row, unit), the
// math of common/rnn.h and the step structs the CPU kernels take. Instantiated for float and double;
// each returns cudaGetLastError() of its launch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/rnn.h"

namespace fastconv::cuda {

template <typename T>
cudaError_t lstm_forward_step(const LstmForwardStep<T>& s, int64_t rows, cudaStream_t stream);
template <typename T>
cudaError_t lstm_backward_step(const LstmBackwardStep<T>& s, int64_t rows, cudaStream_t stream);
template <typename T>
cudaError_t gru_forward_step(const GruForwardStep<T>& s, int64_t rows, cudaStream_t stream);
template <typename T>
cudaError_t gru_backward_step(const GruBackwardStep<T>& s, int64_t rows, cudaStream_t stream);

// c[r * ld + j] = v[j] for r < rows, j < n: a bias broadcast into the rows a GEMM then accumulates into.
template <typename T>
cudaError_t fill_rows(T* c, int64_t ld, const T* v, int64_t rows, int64_t n, cudaStream_t stream);

}  // namespace fastconv::cuda
