// CUDA embedding lookup and its (deterministic) backward.
//
// Backward: dweight[v] += sum of dout rows i with ids[i] = v. The token positions are sorted by id with a
// stable radix sort (CUB), so the rows of one id form a run in ascending position order; the first warp of
// each run owns that dweight row: it adds the run's rows in order and updates dweight once. No atomics,
// the same bits on every run. Columns are split across blockIdx.y so a frequent id still spreads over
// many warps.
// Variant 1 (NATSL_KERNEL_VARIANT_EMBEDDING_BWD=1, variant.h): keys-only sort of 64-bit keys
// (id << 32 | position) on the id bits alone (stable, so positions stay ascending within an id), a binary
// search giving each id its segment [start[v], start[v + 1]) of the sorted keys, then one warp per
// (id, column chunk): every warp has work (no warps idle on non-run-starts), the segment's positions are
// read 32 at a time by the lanes, and 4 rows' loads are in flight per lane. Same summation order as the
// default (ascending positions, from 0, then added to dweight), so the same bits.
#include <cub/device/device_radix_sort.cuh>

#include <cstdio>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/variant.h"
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

// keys[i] = id << 32 | i (id checked).
template <class I>
__global__ void pack_keys_kernel(const I* __restrict__ ids, int64_t n, int64_t V, uint64_t* __restrict__ keys) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    keys[i] = (uint64_t(checked_id(ids, i, V)) << 32) | uint64_t(i);
}

// start[v] = first sorted index whose id is >= v, for v in [0, V] (start[V] = n).
__global__ void segment_starts_kernel(const uint64_t* __restrict__ keys, int64_t n, int64_t V,
                                      int32_t* __restrict__ start) {
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v <= V; v += int64_t(gridDim.x) * blockDim.x) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
      const int64_t mid = (lo + hi) >> 1;
      if (int64_t(keys[mid] >> 32) < v) lo = mid + 1;
      else hi = mid;
    }
    start[v] = int32_t(lo);
  }
}

constexpr int kSegWarps = 8;   // warps (ids) per block
constexpr int kSegRows = 4;    // rows of the segment loaded together per lane
constexpr int kSegVecs = 2;    // vectors per lane per row: a warp covers 32 * kSegVecs * VEC columns

// Warp w of block x owns id v = x * kSegWarps + w and the column chunk blockIdx.y.
template <class T, int VEC>
__global__ void __launch_bounds__(32 * kSegWarps)
    embedding_bwd_segments_kernel(const uint64_t* __restrict__ keys, const int32_t* __restrict__ start, int64_t V,
                                  const T* __restrict__ dout, T* __restrict__ dweight, int64_t D) {
  const int lane = threadIdx.x & 31;
  const int64_t v = int64_t(blockIdx.x) * kSegWarps + (threadIdx.x >> 5);
  if (v >= V) return;
  const int32_t b = start[v], e = start[v + 1];
  if (b == e) return;  // id absent: its row is left as it is
  const int64_t col0 = int64_t(blockIdx.y) * (32 * kSegVecs * VEC);
  float acc[kSegVecs][VEC];
#pragma unroll
  for (int c = 0; c < kSegVecs; ++c)
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[c][k] = 0.f;
  for (int32_t base = b; base < e; base += 32) {
    const int cnt = min(32, e - base);
    const int32_t my_pos = lane < cnt ? int32_t(keys[base + lane] & 0xffffffffu) : 0;
    for (int i = 0; i < cnt; i += kSegRows) {
      // Raw 16-byte vectors (VEC > 1) or values (VEC == 1), unpacked only when added.
      using Raw = std::conditional_t<(VEC > 1), uint4, float>;
      Raw raw[kSegRows][kSegVecs];
#pragma unroll
      for (int q = 0; q < kSegRows; ++q) {
        const int32_t p = __shfl_sync(0xffffffffu, my_pos, (i + q) & 31);
#pragma unroll
        for (int c = 0; c < kSegVecs; ++c) {
          const int64_t col = col0 + (int64_t(c) * 32 + lane) * VEC;
          const bool in = i + q < cnt && col < D;
          if constexpr (VEC > 1)
            raw[q][c] = in ? *reinterpret_cast<const uint4*>(dout + int64_t(p) * D + col) : make_uint4(0, 0, 0, 0);
          else
            raw[q][c] = in ? to_f32(dout[int64_t(p) * D + col]) : 0.f;
        }
      }
      // Added in position order; slots past the segment's end are skipped.
#pragma unroll
      for (int q = 0; q < kSegRows; ++q)
        if (i + q < cnt)
#pragma unroll
          for (int c = 0; c < kSegVecs; ++c) {
            float f[VEC];
            if constexpr (VEC > 1) load_vec<T, VEC>(reinterpret_cast<const T*>(&raw[q][c]), f);
            else f[0] = raw[q][c];
#pragma unroll
            for (int k = 0; k < VEC; ++k) acc[c][k] += f[k];
          }
    }
  }
#pragma unroll
  for (int c = 0; c < kSegVecs; ++c) {
    const int64_t col = col0 + (int64_t(c) * 32 + lane) * VEC;
    if (col >= D) continue;
    T* dst = dweight + v * D + col;
    float cur[VEC];
    load_vec<T, VEC>(dst, cur);
#pragma unroll
    for (int k = 0; k < VEC; ++k) cur[k] += acc[c][k];
    store_vec<T, VEC>(dst, cur);
  }
}

template <class T>
void embedding_bwd_segments(const Tensor& ids, const T* gp, T* wp, int64_t n, int64_t V, int64_t D, Device d,
                            cudaStream_t s) {
  Tensor keys = Tensor::empty({2 * n}, DType::i64, d);
  uint64_t* keys_in = static_cast<uint64_t*>(keys.data_ptr());
  uint64_t* keys_out = keys_in + n;
  NATSL_CUDA_DISPATCH_INDEX(ids.dtype(), "embedding_bwd", I, [&] {
    pack_keys_kernel<I><<<grid_for(d.index, n, 256), 256, 0, s>>>(static_cast<const I*>(ids.data_ptr()), n, V,
                                                                  keys_in);
  });
  NATSL_CUDA_CHECK_LAUNCH();
  size_t temp_bytes = 0;
  const int end_bit = 32 + bits_for(V);
  NATSL_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, keys_in, keys_out, int(n), 32, end_bit, s));
  Tensor temp = Tensor::empty({int64_t(temp_bytes) + 1}, DType::u8, d);
  NATSL_CUDA_CHECK(
      cub::DeviceRadixSort::SortKeys(temp.data_ptr(), temp_bytes, keys_in, keys_out, int(n), 32, end_bit, s));
  Tensor starts = Tensor::empty({V + 1}, DType::i32, d);
  int32_t* sp = starts.data<int32_t>();
  segment_starts_kernel<<<grid_for(d.index, V + 1, 256), 256, 0, s>>>(keys_out, n, V, sp);
  NATSL_CUDA_CHECK_LAUNCH();
  constexpr int VC = kVec<T>;
  const bool vec = D % VC == 0 && aligned16(gp) && aligned16(wp);
  const int width = vec ? VC : 1;
  const int64_t chunk = 32 * kSegVecs * width;
  const int64_t col_blocks = (D + chunk - 1) / chunk;
  NATSL_CHECK(col_blocks <= 65535, "embedding_bwd: embedding dim ", D, " too large");
  const dim3 grid(unsigned((V + kSegWarps - 1) / kSegWarps), unsigned(col_blocks));
  if (vec) embedding_bwd_segments_kernel<T, VC><<<grid, 32 * kSegWarps, 0, s>>>(keys_out, sp, V, gp, wp, D);
  else embedding_bwd_segments_kernel<T, 1><<<grid, 32 * kSegWarps, 0, s>>>(keys_out, sp, V, gp, wp, D);
  NATSL_CUDA_CHECK_LAUNCH();
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
    if (kernel_variant(kVariantEmbeddingBwd, kDefaultEmbeddingBwd) == 1) {
      embedding_bwd_segments<T>(ids, static_cast<const T*>(dout.data_ptr()), static_cast<T*>(dweight.data_ptr()), n,
                                V, D, d, s);
      return;
    }
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
