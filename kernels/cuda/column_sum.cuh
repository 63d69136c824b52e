#pragma once
// Deterministic second stage of the weight-gradient reductions: out[j] = sum over g of partial[g, j].
// A block covers 32 columns with SLICES row slices: slice s adds groups s, s + SLICES, ... in order, then the
// slice sums are added in slice order (a fixed order on every run; coalesced 128-byte row reads). SLICES
// (default 8) sets how many rows of partials are read at once: many groups want more slices, so that each
// thread's chain of dependent loads is short.
#include "kernels/cuda/common.cuh"

namespace natsl::kernels::cuda {

constexpr int kColumnSumSlices = 8;

template <class T, int SLICES>
__global__ void __launch_bounds__(32 * SLICES)
    column_sum_kernel(const float* __restrict__ partial, int64_t groups, int64_t cols, T* __restrict__ out) {
  __shared__ float slice_sum[SLICES][33];
  const int64_t j = int64_t(blockIdx.x) * 32 + threadIdx.x;
  float acc = 0.f;
  if (j < cols)
#pragma unroll 4
    for (int64_t g = threadIdx.y; g < groups; g += SLICES) acc += partial[g * cols + j];
  slice_sum[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    float total = 0.f;
#pragma unroll
    for (int s = 0; s < SLICES; ++s) total += slice_sum[s][threadIdx.x];
    out[j] = from_f32<T>(total);
  }
}

template <class T, int SLICES = kColumnSumSlices>
void column_sum(const float* partial, int64_t groups, int64_t cols, T* out, int device, cudaStream_t s) {
  (void)device;
  const int64_t blocks = (cols + 31) / 32;
  NATSL_CHECK(blocks <= 0x7fffffff, "column_sum: too many columns");
  column_sum_kernel<T, SLICES><<<unsigned(blocks), dim3(32, SLICES), 0, s>>>(partial, groups, cols, out);
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace natsl::kernels::cuda
