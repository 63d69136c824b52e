#pragma once
// Deterministic second stage of the weight-gradient reductions: out[j] = sum over g of partial[g, j], or with
// `accumulate` out[j] += that sum (the sum rounded to out's type, then added in f32 and rounded once: the bits of the
// plain sum followed by a separate add, e.g. AccumulateGrad's into a parameter's f32 .grad; kernels/nn.h,
// weight_grad_writes). A block covers 32 columns with SLICES row slices: slice s adds groups s, s + SLICES, ... in order, then the
// slice sums are added in slice order (a fixed order on every run; coalesced 128-byte row reads). SLICES
// (default 8) sets how many rows of partials are read at once: many groups want more slices, so that each
// thread's chain of dependent loads is short.
#include "kernels/cuda/common.cuh"

namespace natsl::kernels::cuda {

constexpr int kColumnSumSlices = 8;

// First stage, in a row kernel: this thread's share of its (block, row slot)'s f32 partial row of a weight
// gradient (`row`: partial + slot * D, null when that gradient is not wanted). REG (the thread takes one vector of
// VEC columns, j = threadIdx.x * VEC, of every row: D <= blockDim.x * VEC): the sums stay in registers and finish()
// writes them once, every column of the row (zeros for a slot that saw no row). Otherwise add() adds into the row in
// memory, which must be zeroed before. Either way each entry sums the slot's rows in row order.
template <int VEC, bool REG>
struct PartialRow {
  float* row;
  float acc[VEC];
  __device__ __forceinline__ explicit PartialRow(float* r) : row(r) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
  }
  __device__ __forceinline__ void add(int64_t j, int k, float v) {
    if (!row) return;
    if (REG) acc[k] += v;
    else row[j + k] += v;
  }
  __device__ __forceinline__ void finish(int64_t D) const {
    const int64_t j = int64_t(threadIdx.x) * VEC;
    if (REG && row && j < D)
#pragma unroll
      for (int k = 0; k < VEC; ++k) row[j + k] = acc[k];
  }
};

// Whether a row kernel launched with grid g (one vector of W columns per thread and row) keeps its partial sums
// in registers (PartialRow's REG): every row of D columns fits the block's threads.
inline bool partial_rows_in_registers(const RowGrid& g, int64_t D, int W) { return D <= int64_t(g.block.x) * W; }

// `parts` weight gradients' partial rows for a row kernel with grid g ([parts][slots][D] f32; slots = grid.x *
// block.y), zeroed unless the kernel keeps its sums in registers (registers: every entry is then written).
inline Tensor partial_rows(int64_t parts, const RowGrid& g, int64_t D, bool registers, Device d, cudaStream_t s) {
  const int64_t n = parts * int64_t(g.grid.x) * g.block.y * D;
  Tensor t = scratch_f32(n, d);
  if (!registers && n > 0) NATSL_CUDA_CHECK(cudaMemsetAsync(t.data_ptr(), 0, size_t(n) * sizeof(float), s));
  return t;
}

template <class T, int SLICES>
__global__ void __launch_bounds__(32 * SLICES)
    column_sum_kernel(const float* __restrict__ partial, int64_t groups, int64_t cols, T* __restrict__ out,
                      bool accumulate) {
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
    out[j] = accumulate ? from_f32<T>(to_f32(out[j]) + to_f32(from_f32<T>(total))) : from_f32<T>(total);
  }
}

template <class T, int SLICES = kColumnSumSlices>
void column_sum(const float* partial, int64_t groups, int64_t cols, T* out, int device, cudaStream_t s,
                bool accumulate = false) {
  (void)device;
  const int64_t blocks = (cols + 31) / 32;
  NATSL_CHECK(blocks <= 0x7fffffff, "column_sum: too many columns");
  column_sum_kernel<T, SLICES><<<unsigned(blocks), dim3(32, SLICES), 0, s>>>(partial, groups, cols, out, accumulate);
  NATSL_CUDA_CHECK_LAUNCH();
}

// The same into a weight gradient `dw` of `cols` entries, f32 or bf16 whatever the data's dtype (a bf16 kernel's
// f32 .grad sink: the f32 sums written without a bf16 rounding).
template <int SLICES = kColumnSumSlices>
void column_sum(const float* partial, int64_t groups, int64_t cols, const Tensor& dw, cudaStream_t s,
                bool accumulate) {
  NATSL_CHECK(dw.numel() == cols && dw.is_contiguous(), "column_sum: dw ", dw.str(), " for ", cols, " sums");
  NATSL_CUDA_DISPATCH_FLOAT(dw.dtype(), "column_sum", W, [&] {
    column_sum<W, SLICES>(partial, groups, cols, static_cast<W*>(dw.data_ptr()), dw.device().index, s, accumulate);
  });
}

}  // namespace natsl::kernels::cuda
