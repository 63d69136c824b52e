#pragma once
// Deterministic second stage of the weight-gradient reductions: out[j] = sum over g of partial[g, j].
// A block covers 32 columns with 8 row slices: slice s adds groups s, s + 8, ... in order, then the 8
// slice sums are added in slice order (a fixed order on every run; coalesced 128-byte row reads).
#include "kernels/cuda/common.cuh"

namespace natsl::kernels::cuda {

constexpr int kColumnSumSlices = 8;

template <class T>
__global__ void __launch_bounds__(32 * kColumnSumSlices)
    column_sum_kernel(const float* __restrict__ partial, int64_t groups, int64_t cols, T* __restrict__ out) {
  __shared__ float slice_sum[kColumnSumSlices][33];
  const int64_t j = int64_t(blockIdx.x) * 32 + threadIdx.x;
  float acc = 0.f;
  if (j < cols)
#pragma unroll 4
    for (int64_t g = threadIdx.y; g < groups; g += kColumnSumSlices) acc += partial[g * cols + j];
  slice_sum[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    float total = 0.f;
#pragma unroll
    for (int s = 0; s < kColumnSumSlices; ++s) total += slice_sum[s][threadIdx.x];
    out[j] = from_f32<T>(total);
  }
}

template <class T>
void column_sum(const float* partial, int64_t groups, int64_t cols, T* out, int device, cudaStream_t s) {
  (void)device;
  const int64_t blocks = (cols + 31) / 32;
  NATSL_CHECK(blocks <= 0x7fffffff, "column_sum: too many columns");
  column_sum_kernel<T><<<unsigned(blocks), dim3(32, kColumnSumSlices), 0, s>>>(partial, groups, cols, out);
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace natsl::kernels::cuda
