#pragma once
// Deterministic second stage of the weight-gradient reductions: out[j] = sum over g of partial[g, j],
// added in order g = 0, 1, ... (a thread per column; neighbouring threads read neighbouring columns).
#include "kernels/cuda/common.cuh"

namespace natsl::kernels::cuda {

template <class T>
__global__ void column_sum_kernel(const float* __restrict__ partial, int64_t groups, int64_t cols,
                                  T* __restrict__ out) {
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < cols; j += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.f;
    for (int64_t g = 0; g < groups; ++g) acc += partial[g * cols + j];
    out[j] = from_f32<T>(acc);
  }
}

template <class T>
void column_sum(const float* partial, int64_t groups, int64_t cols, T* out, int device, cudaStream_t s) {
  column_sum_kernel<T><<<grid_for(device, cols, 256), 256, 0, s>>>(partial, groups, cols, out);
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace natsl::kernels::cuda
