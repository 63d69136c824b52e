// CUDA embedding lookup and its (deterministic) backward.
//
// Backward: dweight[v] += sum of dout rows i with ids[i] = v, added in ascending position i (from 0, then
// added to dweight once): no atomics, the same bits on every run and in every variant. Two phases
// (kernels/cuda/embedding_bwd.h): segments (positions sorted by id, stable) and accumulate.
// Variant 0: a stable CUB radix sort of (id, position) pairs; the first warp of each run of one id owns that
// dweight row and adds the run's rows in order. Columns are split across blockIdx.y so a frequent id still
// spreads over many warps.
// Variant 1 (NATSL_KERNEL_VARIANT_EMBEDDING_BWD=1, variant.h): keys-only sort of 64-bit keys
// (id << 32 | position) on the id bits alone (stable, so positions stay ascending within an id), a binary
// search giving each id its segment [start[v], start[v + 1]) of the sorted keys, then one warp per
// (id, column chunk): every warp has work (no warps idle on non-run-starts), the segment's positions are
// read 32 at a time by the lanes, and 4 rows' loads are in flight per lane. Same summation order as v0,
// so the same bits.
// Variant 2: 32-bit keys id << pos_bits | position where they fit (bits_for(n) + bits_for(V) <= 32, e.g.
// 131072 tokens and 32000 ids), sorted on the id bits alone (half the bytes of v1's keys per radix pass);
// the segment starts from one pass over the sorted keys (where the id changes, the starts of the ids
// from the previous id + 1 to this one; no binary search); then one warp per (id, 32 vectors of columns)
// that issues its dweight load together with the segment's positions and 8 rows' loads per lane in one
// round (most segments are a single round: ~4 rows per id at 131072 tokens / 32000 ids). Same order of
// additions, so the same bits as v0 and v1. The default (variant.h): on the H200 its accumulation runs at
// 1.17x the copy time and the segment building (~50 us, the same for v0, v1, v2) is what is left to cut.
#include <cub/device/device_radix_sort.cuh>

#include <cstdio>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/embedding_bwd.h"
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

// keys[i] = id << shift | i (id checked); K = uint32_t (shift = pos_bits) or uint64_t (shift = 32).
template <class I, class K>
__global__ void pack_keys_v2_kernel(const I* __restrict__ ids, int64_t n, int64_t V, int shift, K* __restrict__ keys) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    keys[i] = (K(checked_id(ids, i, V)) << shift) | K(i);
}

// start[v] for v in [0, V]: sorted index j starts the ids in (id[j - 1], id[j]] (id[-1] = -1, id[n] = V),
// so every entry is written exactly once.
template <class K>
__global__ void segment_starts_v2_kernel(const K* __restrict__ keys, int64_t n, int shift, int64_t V,
                                         int32_t* __restrict__ start) {
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j <= n; j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t prev = j > 0 ? int64_t(keys[j - 1] >> shift) : -1;
    const int64_t cur = j < n ? int64_t(keys[j] >> shift) : V;
    for (int64_t v = prev + 1; v <= cur; ++v) start[v] = int32_t(j);
  }
}

constexpr int kAccWarps = 4;  // warps per block (tasks of neighbouring column chunks of one id)
constexpr int kAccRows = 8;   // rows of a segment whose loads are in flight together, per lane

// Task t = blockIdx.x * kAccWarps + warp: id v = t / chunks, columns [(t % chunks) * 32 * VEC, + 32 * VEC).
template <class T, int VEC, class K>
__global__ void __launch_bounds__(32 * kAccWarps, 8)
    embedding_bwd_accumulate_v2_kernel(const K* __restrict__ keys, int shift, const int32_t* __restrict__ start,
                                       int64_t V, int64_t chunks, const T* __restrict__ dout, T* __restrict__ dweight,
                                       int64_t D) {
  const int lane = threadIdx.x & 31;
  const int64_t task = int64_t(blockIdx.x) * kAccWarps + (threadIdx.x >> 5);
  if (task >= V * chunks) return;
  const int64_t v = task / chunks;
  const int64_t col = ((task - v * chunks) * 32 + lane) * VEC;
  const int32_t se = lane < 2 ? start[v + lane] : 0;
  const int32_t b = __shfl_sync(0xffffffffu, se, 0), e = __shfl_sync(0xffffffffu, se, 1);
  if (b == e) return;  // id absent: its row is left as it is
  const bool in = col < D;
  // Raw 16-byte vectors (VEC > 1) or elements (VEC == 1), unpacked only when added.
  using Raw = std::conditional_t<(VEC > 1), uint4, T>;
  auto load_raw = [&](const T* p) -> Raw {
    if constexpr (VEC > 1) return *reinterpret_cast<const uint4*>(p);
    else return *p;
  };
  auto unpack = [&](const Raw& r, float (&f)[VEC]) {
    if constexpr (VEC > 1) load_vec<T, VEC>(reinterpret_cast<const T*>(&r), f);
    else f[0] = to_f32(r);
  };
  T* dst = dweight + v * D + col;
  Raw cur_raw{};
  if (in) cur_raw = load_raw(dst);  // in flight with the positions and the first rows
  float acc[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
  const K pos_mask = (K(1) << shift) - 1;
  for (int32_t base = b; base < e; base += 32) {
    const int cnt = min(32, e - base);
    const int32_t my_pos = lane < cnt ? int32_t(keys[base + lane] & pos_mask) : 0;
    for (int i = 0; i < cnt; i += kAccRows) {
      Raw raw[kAccRows];
#pragma unroll
      for (int q = 0; q < kAccRows; ++q) {
        const int32_t p = __shfl_sync(0xffffffffu, my_pos, (i + q) & 31);
        raw[q] = Raw{};
        if (in && i + q < cnt) raw[q] = load_raw(dout + int64_t(p) * D + col);
      }
      // Added in position order; slots past the segment's end are skipped.
#pragma unroll
      for (int q = 0; q < kAccRows; ++q)
        if (i + q < cnt) {
          float f[VEC];
          unpack(raw[q], f);
#pragma unroll
          for (int k = 0; k < VEC; ++k) acc[k] += f[k];
        }
    }
  }
  if (!in) return;
  float cur[VEC];
  unpack(cur_raw, cur);
#pragma unroll
  for (int k = 0; k < VEC; ++k) cur[k] += acc[k];
  store_vec<T, VEC>(dst, cur);
}

// Launches a CUB keys-only radix sort of n keys on bits [begin, end), temp storage from the stream pool.
template <class K>
void sort_keys(const K* in, K* out, int64_t n, int begin, int end, Device d, cudaStream_t s) {
  size_t temp_bytes = 0;
  NATSL_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, in, out, int(n), begin, end, s));
  Tensor temp = Tensor::empty({int64_t(temp_bytes) + 1}, DType::u8, d);
  NATSL_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(temp.data_ptr(), temp_bytes, in, out, int(n), begin, end, s));
}

template <class K>
void segments_v2(const Tensor& ids, int64_t V, Device d, cudaStream_t s, EmbeddingBwdSegments& seg) {
  const int64_t n = seg.n;
  const int shift = seg.pos_bits;
  constexpr DType kd = sizeof(K) == 4 ? DType::i32 : DType::i64;
  Tensor packed = Tensor::empty({n}, kd, d);
  seg.keys = Tensor::empty({n}, kd, d);
  K* in = static_cast<K*>(packed.data_ptr());
  K* out = static_cast<K*>(seg.keys.data_ptr());
  NATSL_CUDA_DISPATCH_INDEX(ids.dtype(), "embedding_bwd", I, [&] {
    pack_keys_v2_kernel<I, K><<<grid_for(d.index, n, 256), 256, 0, s>>>(static_cast<const I*>(ids.data_ptr()), n, V,
                                                                        shift, in);
  });
  NATSL_CUDA_CHECK_LAUNCH();
  sort_keys<K>(in, out, n, shift, shift + bits_for(V), d, s);
  seg.aux = Tensor::empty({V + 1}, DType::i32, d);
  segment_starts_v2_kernel<K><<<grid_for(d.index, n + 1, 256), 256, 0, s>>>(out, n, shift, V, seg.aux.data<int32_t>());
  NATSL_CUDA_CHECK_LAUNCH();
}

template <class T, class K>
void accumulate_v2(const EmbeddingBwdSegments& seg, const T* gp, T* wp, int64_t D, cudaStream_t s) {
  constexpr int VC = kVec<T>;
  const bool vec = D % VC == 0 && aligned16(gp) && aligned16(wp);
  const int width = vec ? VC : 1;
  const int64_t chunks = (D + 32 * width - 1) / (32 * width);
  const int64_t blocks = (seg.V * chunks + kAccWarps - 1) / kAccWarps;
  NATSL_CHECK(blocks < (int64_t(1) << 31), "embedding_bwd: ", seg.V, " ids x dim ", D, " too large");
  const K* keys = static_cast<const K*>(seg.keys.data_ptr());
  const int32_t* sp = seg.aux.data<int32_t>();
  if (vec)
    embedding_bwd_accumulate_v2_kernel<T, VC, K>
        <<<unsigned(blocks), 32 * kAccWarps, 0, s>>>(keys, seg.pos_bits, sp, seg.V, chunks, gp, wp, D);
  else
    embedding_bwd_accumulate_v2_kernel<T, 1, K>
        <<<unsigned(blocks), 32 * kAccWarps, 0, s>>>(keys, seg.pos_bits, sp, seg.V, chunks, gp, wp, D);
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

EmbeddingBwdSegments embedding_bwd_segments(const Tensor& ids, int64_t V, int variant) {
  NATSL_CHECK(variant >= 0 && variant <= 2, "embedding_bwd: unknown kernel variant ", variant, " (",
              kVariantEmbeddingBwd, " must be 0, 1 or 2)");
  EmbeddingBwdSegments seg;
  seg.variant = variant;
  seg.n = ids.numel();
  seg.V = V;
  const int64_t n = seg.n;
  NATSL_CHECK(n < (int64_t(1) << 31) && V < (int64_t(1) << 31), "embedding_bwd: more than 2^31 ids or rows");
  if (n == 0) return seg;
  const Device d = ids.device();
  cudaStream_t s = activate(d.index);
  if (variant == 2) {
    const int pos_bits = bits_for(n);
    if (pos_bits + bits_for(V) <= 32) {
      seg.pos_bits = pos_bits;
      seg.key_bits = 32;
      segments_v2<uint32_t>(ids, V, d, s, seg);
    } else {
      seg.pos_bits = 32;
      seg.key_bits = 64;
      segments_v2<uint64_t>(ids, V, d, s, seg);
    }
  } else if (variant == 1) {
    Tensor keys = Tensor::empty({2 * n}, DType::i64, d);
    uint64_t* keys_in = static_cast<uint64_t*>(keys.data_ptr());
    uint64_t* keys_out = keys_in + n;
    NATSL_CUDA_DISPATCH_INDEX(ids.dtype(), "embedding_bwd", I, [&] {
      pack_keys_kernel<I><<<grid_for(d.index, n, 256), 256, 0, s>>>(static_cast<const I*>(ids.data_ptr()), n, V,
                                                                    keys_in);
    });
    NATSL_CUDA_CHECK_LAUNCH();
    sort_keys<uint64_t>(keys_in, keys_out, n, 32, 32 + bits_for(V), d, s);
    seg.keys = keys.slice(0, n, 2 * n);
    seg.aux = Tensor::empty({V + 1}, DType::i32, d);
    segment_starts_kernel<<<grid_for(d.index, V + 1, 256), 256, 0, s>>>(keys_out, n, V, seg.aux.data<int32_t>());
    NATSL_CUDA_CHECK_LAUNCH();
  } else {
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
    seg.keys = keys.select(0, 1);
    seg.aux = pos.select(0, 1);
  }
  return seg;
}

void embedding_bwd_accumulate(const EmbeddingBwdSegments& seg, const Tensor& dout, const Tensor& dweight) {
  NATSL_CHECK(dweight.dim() == 2 && dweight.size(0) == seg.V, "embedding_bwd: dweight must be [", seg.V,
              ", D], got ", dweight.str());
  const int64_t V = seg.V, D = dweight.size(1), n = seg.n;
  NATSL_CHECK(dout.numel() == n * D, "embedding_bwd: dout ", dout.str(), " for ", n, " ids of dim ", D);
  if (n == 0 || D == 0) return;
  cudaStream_t s = activate(dweight.device().index);
  NATSL_CUDA_DISPATCH_FLOAT(dweight.dtype(), "embedding_bwd", T, [&] {
    NATSL_CHECK(dout.dtype() == dweight.dtype(), "embedding_bwd: dtypes differ");
    const T* gp = static_cast<const T*>(dout.data_ptr());
    T* wp = static_cast<T*>(dweight.data_ptr());
    constexpr int VC = kVec<T>;
    const bool vec = D % VC == 0 && aligned16(gp) && aligned16(wp);
    const int width = vec ? VC : 1;
    if (seg.variant == 2) {
      if (seg.key_bits == 32) accumulate_v2<T, uint32_t>(seg, gp, wp, D, s);
      else accumulate_v2<T, uint64_t>(seg, gp, wp, D, s);
      return;
    }
    if (seg.variant == 1) {
      const uint64_t* keys = static_cast<const uint64_t*>(seg.keys.data_ptr());
      const int32_t* sp = seg.aux.data<int32_t>();
      const int64_t chunk = 32 * kSegVecs * width;
      const int64_t col_blocks = (D + chunk - 1) / chunk;
      NATSL_CHECK(col_blocks <= 65535, "embedding_bwd: embedding dim ", D, " too large");
      const dim3 grid(unsigned((V + kSegWarps - 1) / kSegWarps), unsigned(col_blocks));
      if (vec) embedding_bwd_segments_kernel<T, VC><<<grid, 32 * kSegWarps, 0, s>>>(keys, sp, V, gp, wp, D);
      else embedding_bwd_segments_kernel<T, 1><<<grid, 32 * kSegWarps, 0, s>>>(keys, sp, V, gp, wp, D);
      NATSL_CUDA_CHECK_LAUNCH();
      return;
    }
    const int32_t* keys = static_cast<const int32_t*>(seg.keys.data_ptr());
    const int32_t* pos = static_cast<const int32_t*>(seg.aux.data_ptr());
    const int64_t col_blocks = (D + 32 * width - 1) / (32 * width);
    NATSL_CHECK(col_blocks <= 65535, "embedding_bwd: embedding dim ", D, " too large");
    dim3 grid(unsigned((n + kWarpsPerBlock - 1) / kWarpsPerBlock), unsigned(col_blocks));
    if (vec) embedding_bwd_runs_kernel<T, VC><<<grid, 32 * kWarpsPerBlock, 0, s>>>(keys, pos, n, gp, wp, D);
    else embedding_bwd_runs_kernel<T, 1><<<grid, 32 * kWarpsPerBlock, 0, s>>>(keys, pos, n, gp, wp, D);
    NATSL_CUDA_CHECK_LAUNCH();
  });
}

void embedding_bwd(const Tensor& ids, const Tensor& dout, const Tensor& dweight) {
  NATSL_CHECK(dweight.dim() == 2, "embedding_bwd: dweight must be [V, D], got ", dweight.str());
  const int64_t V = dweight.size(0), D = dweight.size(1), n = ids.numel();
  NATSL_CHECK(dout.numel() == n * D, "embedding_bwd: dout ", dout.str(), " for ", n, " ids of dim ", D);
  if (n == 0 || D == 0) return;
  const EmbeddingBwdSegments seg =
      embedding_bwd_segments(ids, V, kernel_variant(kVariantEmbeddingBwd, kDefaultEmbeddingBwd));
  embedding_bwd_accumulate(seg, dout, dweight);
}

}  // namespace natsl::kernels::cuda
