// CUDA reductions: sum over dims (any strides) and the global sum of squares. Both accumulate in f32 and
// are deterministic: every partial sum has a fixed owner and partials are combined in a fixed order.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/reduce.h"

namespace natsl::kernels::cuda {
namespace {

constexpr int kMaxD = 8;
// A set of dims of x (row-major order) and their strides in x: maps a linear index to an element offset.
struct DimSet {
  int n = 0;
  int64_t size[kMaxD] = {};
  int64_t stride[kMaxD] = {};
  bool small = true;  // the product of the sizes is below 2^31: index arithmetic in 32 bits
  // i < the product of the sizes. One dim (the common case once jointly contiguous dims are merged) needs no
  // division, and 32-bit divisions are several times cheaper than 64-bit ones: a 64-bit division per dim per
  // element made the reductions integer-bound.
  __device__ __forceinline__ int64_t offset(int64_t i) const {
    if (n <= 1) return n == 1 ? i * stride[0] : 0;
    int64_t off = 0;
    if (small) {
      uint32_t r = uint32_t(i);
      for (int d = n - 1; d >= 0; --d) {
        off += int64_t(r % uint32_t(size[d])) * stride[d];
        r /= uint32_t(size[d]);
      }
      return off;
    }
    for (int d = n - 1; d >= 0; --d) {
      off += (i % size[d]) * stride[d];
      i /= size[d];
    }
    return off;
  }
};

// Appends dim (size, stride) to s, merging it with the previous one when they are jointly contiguous.
void push_dim(DimSet& s, int64_t size, int64_t stride) {
  if (size == 1) return;
  int64_t total = size;  // the product of the sizes so far (sizes >= 2 here), saturating at 2^31
  for (int d = 0; d < s.n && total < (int64_t(1) << 31); ++d) total *= s.size[d];
  if (total >= (int64_t(1) << 31)) s.small = false;
  if (s.n > 0 && s.stride[s.n - 1] == stride * size) {
    s.size[s.n - 1] *= size;
    s.stride[s.n - 1] = stride;
    return;
  }
  NATSL_CHECK(s.n < kMaxD, "sum_dims: too many dims");
  s.size[s.n] = size;
  s.stride[s.n] = stride;
  ++s.n;
}

// One thread per output, summing its share [p*R/P, (p+1)*R/P) of the reduced elements: used when the
// outputs are contiguous in x (neighbouring threads read neighbouring elements).
template <class T>
__global__ void sum_per_thread_kernel(const T* __restrict__ x, DimSet kept, DimSet red, int64_t K, int64_t R,
                                      int P, float* __restrict__ partial, T* __restrict__ out) {
  const int p = blockIdx.y;
  const int64_t r0 = R * p / P, r1 = R * (p + 1) / P;
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < K; o += int64_t(gridDim.x) * blockDim.x) {
    const T* base = x + kept.offset(o);
    float acc = 0.f;
    for (int64_t r = r0; r < r1; ++r) acc += to_f32(base[red.offset(r)]);
    if (P == 1) out[o] = from_f32<T>(acc);
    else partial[int64_t(p) * K + o] = acc;
  }
}

// One block per (output, split): threads stride over the reduced elements (contiguous in x).
template <class T>
__global__ void sum_per_block_kernel(const T* __restrict__ x, DimSet kept, DimSet red, int64_t K, int64_t R,
                                     int P, float* __restrict__ partial, T* __restrict__ out) {
  __shared__ float scratch[32];
  const int p = blockIdx.y;
  const int64_t r0 = R * p / P, r1 = R * (p + 1) / P;
  for (int64_t o = blockIdx.x; o < K; o += gridDim.x) {
    const T* base = x + kept.offset(o);
    float acc = 0.f;
    for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x) acc += to_f32(base[red.offset(r)]);
    acc = row_sum(acc, scratch);
    if (threadIdx.x == 0) {
      if (P == 1) out[o] = from_f32<T>(acc);
      else partial[int64_t(p) * K + o] = acc;
    }
  }
}

// Sum over the rows of a [R, K] matrix with row stride ld (columns contiguous): the common "reduce every
// leading dim" case. Block (32, 8) covers 32 * VEC columns with 16-byte loads; row slice ty of split p adds
// rows r0 + ty, r0 + ty + 8, ... in order, then the 8 slice sums are added in slice order (deterministic).
template <class T, int VEC>
__global__ void __launch_bounds__(256) sum_rows_kernel(const T* __restrict__ x, int64_t K, int64_t R, int64_t ld,
                                                       int P, float* __restrict__ partial, T* __restrict__ out) {
  __shared__ float slice_sum[8][32 * VEC + 1];
  const int p = blockIdx.y;
  const int64_t r0 = R * p / P, r1 = R * (p + 1) / P;
  const int64_t c = (int64_t(blockIdx.x) * 32 + threadIdx.x) * VEC;
  float acc[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
  if (c < K) {
#pragma unroll 4
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
      float v[VEC];
      load_vec<T, VEC>(x + r * ld + c, v);
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += v[k];
    }
  }
#pragma unroll
  for (int k = 0; k < VEC; ++k) slice_sum[threadIdx.y][threadIdx.x * VEC + k] = acc[k];
  __syncthreads();
  // 256 threads finish the 32 * VEC columns of the block.
  for (int q = threadIdx.y * 32 + threadIdx.x; q < 32 * VEC; q += 256) {
    const int64_t col = int64_t(blockIdx.x) * 32 * VEC + q;
    if (col >= K) continue;
    float total = 0.f;
#pragma unroll
    for (int sl = 0; sl < 8; ++sl) total += slice_sum[sl][q];
    if (P == 1) out[col] = from_f32<T>(total);
    else partial[int64_t(p) * K + col] = total;
  }
}

// out[o] = sum over p of partial[p, o], in order.
template <class T>
__global__ void sum_partials_kernel(const float* __restrict__ partial, int64_t K, int P, T* __restrict__ out) {
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < K; o += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.f;
    for (int p = 0; p < P; ++p) acc += partial[int64_t(p) * K + o];
    out[o] = from_f32<T>(acc);
  }
}

template <class T, int VEC>
__global__ void sum_squares_partial_kernel(const T* __restrict__ x, int64_t n, float* __restrict__ partial) {
  __shared__ float scratch[32];
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  float acc = 0.f;
  const int64_t nvec = n / VEC;
  for (int64_t v = tid; v < nvec; v += stride) {
    float a[VEC];
    load_vec<T, VEC>(x + v * VEC, a);
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc += a[k] * a[k];
  }
  for (int64_t i = nvec * VEC + tid; i < n; i += stride) {
    float a = to_f32(x[i]);
    acc += a * a;
  }
  acc = row_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// One block adds the per-block partials in a fixed order (each thread a fixed strided subset, then a
// fixed tree).
__global__ void sum_vector_kernel(const float* __restrict__ partial, int n, float* __restrict__ out) {
  __shared__ float scratch[32];
  float acc = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
  acc = row_sum(acc, scratch);
  if (threadIdx.x == 0) out[0] = acc;
}

}  // namespace

void sum_dims(const Tensor& x, const std::vector<int64_t>& dims, const Tensor& out) {
  const int64_t K = out.numel();
  if (K == 0) return;
  const Device d = x.device();
  cudaStream_t s = activate(d.index);
  NATSL_CHECK(out.dtype() == x.dtype(), "sum_dims: dtypes ", dtype_name(x.dtype()), " -> ", dtype_name(out.dtype()));
  DimSet kept, red;
  std::vector<bool> is_red(size_t(x.dim()), false);
  for (int64_t k : dims) is_red[size_t(k)] = true;
  for (int64_t k = 0; k < x.dim(); ++k)
    push_dim(is_red[size_t(k)] ? red : kept, x.shape()[size_t(k)], x.strides()[size_t(k)]);
  int64_t R = 1;
  for (int i = 0; i < red.n; ++i) R *= red.size[i];
  NATSL_CUDA_DISPATCH_FLOAT(x.dtype(), "sum_dims", T, [&] {
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    if (R == 0) {
      out.zero_();
      return;
    }
    // x as a [R, K] matrix with contiguous columns (every leading dim reduced): the column-tile kernel.
    if (kept.n == 1 && kept.stride[0] == 1 && red.n == 1 && kept.size[0] == K) {
      const int64_t ld = red.stride[0];
      constexpr int V = kVec<T>;
      const bool vec = K % V == 0 && ld % V == 0 && aligned16(xp);
      const int64_t col_blocks = (K + 32 * (vec ? V : 1) - 1) / (32 * (vec ? V : 1));
      const int64_t want = int64_t(sm_count(d.index)) * 8;  // 8 blocks of 256 per SM
      int P = int(std::clamp<int64_t>((want + col_blocks - 1) / col_blocks, 1, std::max<int64_t>(1, R / 64)));
      P = std::min(P, 65535);
      if (col_blocks <= 0x7fffffff) {
        Tensor partial = P > 1 ? scratch_f32(int64_t(P) * K, d) : Tensor();
        float* pp = P > 1 ? partial.data<float>() : nullptr;
        const dim3 grid{unsigned(col_blocks), unsigned(P)}, block{32, 8};
        if (vec) sum_rows_kernel<T, V><<<grid, block, 0, s>>>(xp, K, R, ld, P, pp, op);
        else sum_rows_kernel<T, 1><<<grid, block, 0, s>>>(xp, K, R, ld, P, pp, op);
        NATSL_CUDA_CHECK_LAUNCH();
        if (P > 1) {
          sum_partials_kernel<T><<<grid_for(d.index, K, 256), 256, 0, s>>>(pp, K, P, op);
          NATSL_CUDA_CHECK_LAUNCH();
        }
        return;
      }
    }
    // Reduced elements contiguous in x (innermost reduced stride 1, and it beats the kept one): a block per
    // output. Otherwise a thread per output.
    const bool per_block = red.n > 0 && red.stride[red.n - 1] == 1 && K < int64_t(sm_count(d.index)) * 256;
    const int64_t target = int64_t(sm_count(d.index)) * (per_block ? 8 : 2048);
    int P = int(std::clamp<int64_t>((target + K - 1) / K, 1, std::max<int64_t>(1, R / 1024)));
    P = std::min(P, 65535);
    Tensor partial = P > 1 ? scratch_f32(int64_t(P) * K, d) : Tensor();
    float* pp = P > 1 ? partial.data<float>() : nullptr;
    if (per_block) {
      dim3 grid(unsigned(std::min<int64_t>(K, 65535)), unsigned(P));
      sum_per_block_kernel<T><<<grid, 256, 0, s>>>(xp, kept, red, K, R, P, pp, op);
    } else {
      dim3 grid(unsigned(std::min<int64_t>((K + 255) / 256, 65535)), unsigned(P));
      sum_per_thread_kernel<T><<<grid, 256, 0, s>>>(xp, kept, red, K, R, P, pp, op);
    }
    NATSL_CUDA_CHECK_LAUNCH();
    if (P > 1) {
      sum_partials_kernel<T><<<grid_for(d.index, K, 256), 256, 0, s>>>(pp, K, P, op);
      NATSL_CUDA_CHECK_LAUNCH();
    }
  });
}

void sum_squares(const Tensor& x, const Tensor& out) {
  const Device d = x.device();
  cudaStream_t s = activate(d.index);
  NATSL_CHECK(out.dtype() == DType::f32, "sum_squares: out must be f32 on the GPU, got ", dtype_name(out.dtype()));
  const int64_t n = x.numel();
  NATSL_CUDA_DISPATCH_FLOAT(x.dtype(), "sum_squares", T, [&] {
    const T* xp = static_cast<const T*>(x.data_ptr());
    constexpr int kThreads = 512;
    const int grid = grid_for(d.index, std::max<int64_t>(n, 1), int64_t(kThreads) * kVec<T> * 4, 2);
    Tensor partial = scratch_f32(grid, d);
    if (aligned16(xp))
      sum_squares_partial_kernel<T, kVec<T>><<<grid, kThreads, 0, s>>>(xp, n, partial.data<float>());
    else
      sum_squares_partial_kernel<T, 1><<<grid, kThreads, 0, s>>>(xp, n, partial.data<float>());
    NATSL_CUDA_CHECK_LAUNCH();
    sum_vector_kernel<<<1, 1024, 0, s>>>(partial.data<float>(), grid, out.data<float>());
    NATSL_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace natsl::kernels::cuda
