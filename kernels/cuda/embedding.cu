// CUDA embedding lookup and its (deterministic) backward.
//
// Backward: dweight[v] += sum of dout rows i with ids[i] = v. The token positions are sorted by id with a
// stable radix sort (CUB), so the rows of one id form a run in ascending position order; the first warp of
// each run owns that dweight row: it adds the run's rows in order and updates dweight once. No atomics,
// the same bits on every run. Columns are split across blockIdx.y so a frequent id still spreads over
// many warps.
#include <cub/device/device_radix_sort.cuh>

#include <cstdio>

#include "kernels/cuda/common.cuh"
#include "kernels/nn.h"

namespace natsl::kernels::cuda {
namespace {

template <class I>
__device__ __forceinline__ int64_t checked_id(const I* ids, int64_t i, int64_t V) {
  const int64_t id = int64_t(ids[i]);
  if (id < 0 || id >= V) {
    printf("natsl embedding: id %lld at position %lld is outside the vocabulary [0, %lld)\n", (long long)id,
           (long long)i, (long long)V);
    __trap();
  }
  return id;
}

template <class T, class I, int VEC>
__global__ void __launch_bounds__(1024) embedding_fwd_kernel(const T* __restrict__ weight, const I* __restrict__ ids,
                                                             T* __restrict__ out, int64_t rows, int64_t D, int64_t V) {
  NATSL_FOR_EACH_ROW(r, rows) {
    if (r >= rows) continue;
    const T* src = weight + checked_id(ids, r, V) * D;
    T* dst = out + r * D;
    for (int64_t j = int64_t(threadIdx.x) * VEC; j < D; j += int64_t(blockDim.x) * VEC) {
      if constexpr (VEC == 1) {
        dst[j] = src[j];
      } else {
        *reinterpret_cast<uint4*>(dst + j) = *reinterpret_cast<const uint4*>(src + j);
      }
    }
  }
}

// keys[i] = ids[i] (checked, as int32), positions[i] = i.
template <class I>
__global__ void prepare_sort_kernel(const I* __restrict__ ids, int64_t n, int64_t V, int32_t* __restrict__ keys,
                                    int32_t* __restrict__ positions) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    keys[i] = int32_t(checked_id(ids, i, V));
    positions[i] = int32_t(i);
  }
}

constexpr int kWarpsPerBlock = 8;

// Warp w of block x handles sorted index j = x * 8 + w if it starts a run; blockIdx.y picks 32 * VEC columns.
template <class T, int VEC>
__global__ void embedding_bwd_runs_kernel(const int32_t* __restrict__ keys, const int32_t* __restrict__ positions,
                                          int64_t n, const T* __restrict__ dout, T* __restrict__ dweight, int64_t D) {
  const int lane = threadIdx.x & 31;
  const int64_t j = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (j >= n) return;
  const int32_t key = keys[j];
  if (j > 0 && keys[j - 1] == key) return;  // not the first of its run
  const int64_t col = (int64_t(blockIdx.y) * 32 + lane) * VEC;
  if (col >= D) return;
  float acc[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
  for (int64_t e = j; e < n && keys[e] == key; ++e) {
    float v[VEC];
    load_vec<T, VEC>(dout + int64_t(positions[e]) * D + col, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] += v[k];
  }
  T* dst = dweight + int64_t(key) * D + col;
  float cur[VEC];
  load_vec<T, VEC>(dst, cur);
#pragma unroll
  for (int k = 0; k < VEC; ++k) cur[k] += acc[k];
  store_vec<T, VEC>(dst, cur);
}

int bits_for(int64_t V) {
  int b = 1;
  while (b < 31 && (int64_t(1) << b) < V) ++b;
  return b;
}

}  // namespace

void embedding_fwd(const Tensor& weight, const Tensor& ids, const Tensor& out) {
  NATSL_CHECK(weight.dim() == 2, "embedding_fwd: weight must be [V, D], got ", weight.str());
  const int64_t V = weight.size(0), D = weight.size(1), rows = ids.numel();
  NATSL_CHECK(out.numel() == rows * D, "embedding_fwd: out ", out.str(), " for ", rows, " ids of dim ", D);
  if (rows == 0 || D == 0) return;
  const int dev = weight.device().index;
  cudaStream_t s = activate(dev);
  NATSL_CUDA_DISPATCH_FLOAT(weight.dtype(), "embedding_fwd", T, [&] {
    NATSL_CHECK(out.dtype() == weight.dtype(), "embedding_fwd: dtypes differ");
    NATSL_CUDA_DISPATCH_INDEX(ids.dtype(), "embedding_fwd", I, [&] {
      const T* wp = static_cast<const T*>(weight.data_ptr());
      const I* ip = static_cast<const I*>(ids.data_ptr());
      T* op = static_cast<T*>(out.data_ptr());
      constexpr int VC = kVec<T>;
      if (D % VC == 0 && aligned16(wp) && aligned16(op)) {
        RowGrid g = row_grid(dev, rows, D, VC);
        embedding_fwd_kernel<T, I, VC><<<g.grid, g.block, 0, s>>>(wp, ip, op, rows, D, V);
      } else {
        RowGrid g = row_grid(dev, rows, D, 1);
        embedding_fwd_kernel<T, I, 1><<<g.grid, g.block, 0, s>>>(wp, ip, op, rows, D, V);
      }
    });
  });
  NATSL_CUDA_CHECK_LAUNCH();
}

void embedding_bwd(const Tensor& ids, const Tensor& dout, const Tensor& dweight) {
  NATSL_CHECK(dweight.dim() == 2, "embedding_bwd: dweight must be [V, D], got ", dweight.str());
  const int64_t V = dweight.size(0), D = dweight.size(1), n = ids.numel();
  NATSL_CHECK(dout.numel() == n * D, "embedding_bwd: dout ", dout.str(), " for ", n, " ids of dim ", D);
  NATSL_CHECK(n < (int64_t(1) << 31) && V < (int64_t(1) << 31), "embedding_bwd: more than 2^31 ids or rows");
  if (n == 0 || D == 0) return;
  const Device d = dweight.device();
  cudaStream_t s = activate(d.index);
  NATSL_CUDA_DISPATCH_FLOAT(dweight.dtype(), "embedding_bwd", T, [&] {
    NATSL_CHECK(dout.dtype() == dweight.dtype(), "embedding_bwd: dtypes differ");
    Tensor keys = Tensor::empty({2, n}, DType::i32, d), pos = Tensor::empty({2, n}, DType::i32, d);
    int32_t* keys_in = keys.data<int32_t>();
    int32_t* keys_out = keys_in + n;
    int32_t* pos_in = pos.data<int32_t>();
    int32_t* pos_out = pos_in + n;
    NATSL_CUDA_DISPATCH_INDEX(ids.dtype(), "embedding_bwd", I, [&] {
      prepare_sort_kernel<I><<<grid_for(d.index, n, 256), 256, 0, s>>>(static_cast<const I*>(ids.data_ptr()), n, V,
                                                                       keys_in, pos_in);
    });
    NATSL_CUDA_CHECK_LAUNCH();
    size_t temp_bytes = 0;
    const int end_bit = bits_for(V);
    NATSL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, keys_out, pos_in, pos_out, int(n),
                                                     0, end_bit, s));
    Tensor temp = Tensor::empty({int64_t(temp_bytes) + 1}, DType::u8, d);
    NATSL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data_ptr(), temp_bytes, keys_in, keys_out, pos_in, pos_out,
                                                     int(n), 0, end_bit, s));
    const T* gp = static_cast<const T*>(dout.data_ptr());
    T* wp = static_cast<T*>(dweight.data_ptr());
    constexpr int VC = kVec<T>;
    const bool vec = D % VC == 0 && aligned16(gp) && aligned16(wp);
    const int width = vec ? VC : 1;
    const int64_t col_blocks = (D + 32 * width - 1) / (32 * width);
    NATSL_CHECK(col_blocks <= 65535, "embedding_bwd: embedding dim ", D, " too large");
    dim3 grid(unsigned((n + kWarpsPerBlock - 1) / kWarpsPerBlock), unsigned(col_blocks));
    if (vec) embedding_bwd_runs_kernel<T, VC><<<grid, 32 * kWarpsPerBlock, 0, s>>>(keys_out, pos_out, n, gp, wp, D);
    else embedding_bwd_runs_kernel<T, 1><<<grid, 32 * kWarpsPerBlock, 0, s>>>(keys_out, pos_out, n, gp, wp, D);
    NATSL_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace natsl::kernels::cuda
