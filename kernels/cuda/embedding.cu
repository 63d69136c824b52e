// CUDA embedding lookup and its (deterministic) backward.
//
// Backward: dweight[v] += sum of dout rows i with ids[i] = v, added in ascending position i (from 0, then
// added to dweight once): no atomics, the same bits on every run and in every variant. Two phases
// (kernels/cuda/embedding_bwd.h): segments (positions sorted by id, stable) and accumulate.
// Segments: 32-bit keys id << pos_bits | position where they fit (bits_for(n) + bits_for(V) <= 32, e.g. 131072
// tokens and 32000 ids), else 64-bit keys id << 32 | position.
//   cooperative (the default): the sorted keys and the segment starts from ONE cooperative kernel (all
//     blocks resident), its phases separated by grid barriers instead of launches: count the ids
//     (warp-aggregated atomics), scan the counts, scatter the keys (grouped by id, unordered within an id),
//     sort every segment in place (long ones by a block, short ones by a warp). Details in its section below.
//   radix_sort (the fallback with 64-bit keys or without cooperative launch): a CUB keys-only radix sort on
//     the id bits (stable, so positions stay ascending within an id), the starts from one pass over the
//     sorted keys.
// Both give the same sorted keys and starts. dweight is in dout's dtype or f32 for bf16 dout (an f32 .grad, autograd's
// weight-gradient sink: the rows' f32 sum added in f32, no bf16 table). Accumulate: one warp per (id, 32 vectors of
// columns) issues its
// dweight load together with the segment's positions and 8 rows' loads per lane in one round (most segments
// are a single round: ~4 rows per id at 131072 tokens / 32000 ids); after the cooperative segments it is
// launched with programmatic dependent launch so that its blocks are in place when the segments kernel ends.
// Measurements of these and of the variants tried before them: BENCHMARKS.md, kernel history.
#include <cooperative_groups.h>
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/dispatch/dispatch_radix_sort.cuh>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <utility>

#include <cstdio>

#include "kernels/cuda/embedding_common.cuh"
#include "kernels/nn.h"

namespace natsl::kernels::cuda {
namespace {

using namespace embedding;

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

// VEC values of TW at p to f32 and back, in 16-byte vectors (VEC == 1, or VEC * sizeof(TW) a multiple of 16): an f32
// dweight row chunk beside bf16 dout vectors.
template <class TW, int VEC>
__device__ __forceinline__ void load_wide(const TW* p, float (&f)[VEC]) {
  constexpr int P = VEC == 1 ? 1 : int(16 / sizeof(TW));
#pragma unroll
  for (int i = 0; i < VEC; i += P) load_vec<TW, P>(p + i, *reinterpret_cast<float(*)[P]>(f + i));
}
template <class TW, int VEC>
__device__ __forceinline__ void store_wide(TW* p, const float (&f)[VEC]) {
  constexpr int P = VEC == 1 ? 1 : int(16 / sizeof(TW));
#pragma unroll
  for (int i = 0; i < VEC; i += P) store_vec<TW, P>(p + i, *reinterpret_cast<const float(*)[P]>(f + i));
}

// Task t = blockIdx.x * kAccWarps + warp: id v = t / chunks, columns [(t % chunks) * 32 * CV * VEC, + 32 * CV * VEC):
// CV vectors of VEC elements per lane and row (1 today: 2 needed 128 registers and was slower).
// keys: sorted (positions ascending within an id), start: the segment starts. dweight of TW: T, or float for bf16 T.
template <class T, class TW, int VEC, class K, int CV>
__global__ void __launch_bounds__(32 * kAccWarps, 8 / CV)
    embedding_bwd_accumulate_v2_kernel(const K* __restrict__ keys, int shift, const int32_t* __restrict__ start,
                                       int64_t V, int64_t chunks, const T* __restrict__ dout, TW* __restrict__ dweight,
                                       int64_t D) {
  constexpr bool kSame = std::is_same_v<T, TW>;
  const int lane = threadIdx.x & 31;
  const int64_t task = int64_t(blockIdx.x) * kAccWarps + (threadIdx.x >> 5);
  pdl_wait();  // launched with PDL (after the cooperative segments): the segments are complete past this point; else a no-op
  if (task >= V * chunks) return;
  const int64_t v = task / chunks;
  const int64_t col0 = (task - v * chunks) * 32 * CV;
  const int32_t se = lane < 2 ? start[v + lane] : 0;
  const int32_t b = __shfl_sync(0xffffffffu, se, 0), e = __shfl_sync(0xffffffffu, se, 1);
  if (b == e) return;  // id absent: its row is left as it is
  int64_t col[CV];
  bool in[CV];
#pragma unroll
  for (int c = 0; c < CV; ++c) {
    col[c] = (col0 + c * 32 + lane) * VEC;
    in[c] = col[c] < D;
  }
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
  TW* dst = dweight + v * D;
  // dweight's values, in flight with the positions and the first rows: raw in dout's type, else widened at once.
  Raw cur_raw[CV];
  float cur_wide[CV][kSame ? 1 : VEC];
#pragma unroll
  for (int c = 0; c < CV; ++c) {
    if constexpr (kSame) {
      cur_raw[c] = Raw{};
      if (in[c]) cur_raw[c] = load_raw(dst + col[c]);
    } else if (in[c]) {
      load_wide<TW, VEC>(dst + col[c], cur_wide[c]);
    }
  }
  float acc[CV][VEC];
#pragma unroll
  for (int c = 0; c < CV; ++c)
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[c][k] = 0.f;
  const K pos_mask = (K(1) << shift) - 1;
  const K* src = keys;
  for (int32_t base = b; base < e; base += 32) {
    const int cnt = min(32, e - base);
    const int32_t my_pos = lane < cnt ? int32_t(src[base + lane] & pos_mask) : 0;
    for (int i = 0; i < cnt; i += kAccRows) {
      Raw raw[kAccRows][CV];
#pragma unroll
      for (int q = 0; q < kAccRows; ++q) {
        const int32_t p = __shfl_sync(0xffffffffu, my_pos, (i + q) & 31);
#pragma unroll
        for (int c = 0; c < CV; ++c) {
          raw[q][c] = Raw{};
          if (in[c] && i + q < cnt) raw[q][c] = load_raw(dout + int64_t(p) * D + col[c]);
        }
      }
      // Added in position order; slots past the segment's end are skipped.
#pragma unroll
      for (int q = 0; q < kAccRows; ++q)
        if (i + q < cnt)
#pragma unroll
          for (int c = 0; c < CV; ++c) {
            float f[VEC];
            unpack(raw[q][c], f);
#pragma unroll
            for (int k = 0; k < VEC; ++k) acc[c][k] += f[k];
          }
    }
  }
#pragma unroll
  for (int c = 0; c < CV; ++c) {
    if (!in[c]) continue;
    float cur[VEC];
    if constexpr (kSame) {
      unpack(cur_raw[c], cur);
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) cur[k] = cur_wide[c][k];
    }
#pragma unroll
    for (int k = 0; k < VEC; ++k) cur[k] += acc[c][k];
    store_wide<TW, VEC>(dst + col[c], cur);
  }
}

// Launches a CUB keys-only radix sort of n keys on bits [begin, end), temp storage from the stream pool.
template <class K>
void sort_keys(const K* in, K* out, int64_t n, int begin, int end, Device d, cudaStream_t s) {
  size_t temp_bytes = 0;
  NATSL_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, in, out, int(n), begin, end, s));
  Tensor temp = Tensor::empty({int64_t(temp_bytes) + 1}, DType::u8, d);
  NATSL_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(temp.data_ptr(), temp_bytes, in, out, int(n), begin, end, s));
}

// The radix_sort segments.
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

template <class T, class TW, class K, int CV>
void accumulate_v2(const EmbeddingBwdSegments& seg, const T* gp, TW* wp, int64_t D, cudaStream_t s) {
  constexpr int VC = kVec<T>;
  const bool vec = D % VC == 0 && aligned16(gp) && aligned16(wp);
  const int width = vec ? VC : 1;
  const int64_t chunks = (D + 32 * CV * width - 1) / (32 * CV * width);
  const int64_t blocks = (seg.V * chunks + kAccWarps - 1) / kAccWarps;
  NATSL_CHECK(blocks < (int64_t(1) << 31), "embedding_bwd: ", seg.V, " ids x dim ", D, " too large");
  const K* keys = static_cast<const K*>(seg.keys.data_ptr());
  const int32_t* sp = seg.aux.data<int32_t>();
  if (vec)
    embedding_bwd_accumulate_v2_kernel<T, TW, VC, K, CV>
        <<<unsigned(blocks), 32 * kAccWarps, 0, s>>>(keys, seg.pos_bits, sp, seg.V, chunks, gp, wp, D);
  else
    embedding_bwd_accumulate_v2_kernel<T, TW, 1, K, CV>
        <<<unsigned(blocks), 32 * kAccWarps, 0, s>>>(keys, seg.pos_bits, sp, seg.V, chunks, gp, wp, D);
  NATSL_CUDA_CHECK_LAUNCH();
}

// The accumulation launched with programmatic dependent launch where `pdl` (after the cooperative segments).
template <class T, class TW>
void accumulate_pdl(const EmbeddingBwdSegments& seg, const T* gp, TW* wp, int64_t D, cudaStream_t s, bool pdl,
                    int device) {
  constexpr int VC = kVec<T>;
  const bool vec = D % VC == 0 && aligned16(gp) && aligned16(wp);
  const int width = vec ? VC : 1;
  const int64_t chunks = (D + 32 * width - 1) / (32 * width);
  const int64_t blocks = (seg.V * chunks + kAccWarps - 1) / kAccWarps;
  NATSL_CHECK(blocks < (int64_t(1) << 31), "embedding_bwd: ", seg.V, " ids x dim ", D, " too large");
  const uint32_t* keys = static_cast<const uint32_t*>(seg.keys.data_ptr());
  const int32_t* sp = seg.aux.data<int32_t>();
  pdl = pdl && pdl_supported(device);
  if (vec)
    launch_pdl(pdl, embedding_bwd_accumulate_v2_kernel<T, TW, VC, uint32_t, 1>, unsigned(blocks), 32 * kAccWarps, s,
               keys, seg.pos_bits, sp, seg.V, chunks, gp, wp, D);
  else
    launch_pdl(pdl, embedding_bwd_accumulate_v2_kernel<T, TW, 1, uint32_t, 1>, unsigned(blocks), 32 * kAccWarps, s,
               keys, seg.pos_bits, sp, seg.V, chunks, gp, wp, D);
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

EmbeddingBwdSegments embedding_bwd_segments(const Tensor& ids, int64_t V, const EmbeddingBwdPlan& plan) {
  EmbeddingBwdSegments seg;
  seg.n = ids.numel();
  seg.V = V;
  const int64_t n = seg.n;
  NATSL_CHECK(n < (int64_t(1) << 31) && V < (int64_t(1) << 31), "embedding_bwd: more than 2^31 ids or rows");
  if (n == 0) return seg;
  const Device d = ids.device();
  cudaStream_t s = activate(d.index);
  const int pos_bits = bits_for(n);
  if (pos_bits + bits_for(V) <= 32) {
    seg.pos_bits = pos_bits;
    seg.key_bits = 32;
    // The accumulation after the cooperative plan is launched with PDL even where the radix sort stood in.
    seg.pdl_accumulate = plan.segments == EmbeddingBwdSegmentsKernel::cooperative;
    if (seg.pdl_accumulate && segments_cooperative(ids, V, d, s, seg)) return seg;
    segments_v2<uint32_t>(ids, V, d, s, seg);
  } else {  // 64-bit keys: the radix sort whatever the plan
    seg.pos_bits = 32;
    seg.key_bits = 64;
    segments_v2<uint64_t>(ids, V, d, s, seg);
  }
  return seg;
}

void embedding_bwd_accumulate(const EmbeddingBwdSegments& seg, const Tensor& dout, const Tensor& dweight) {
  NATSL_CHECK(dweight.dim() == 2 && dweight.size(0) == seg.V, "embedding_bwd: dweight must be [", seg.V,
              ", D], got ", dweight.str());
  const int64_t D = dweight.size(1), n = seg.n;
  NATSL_CHECK(dout.numel() == n * D, "embedding_bwd: dout ", dout.str(), " for ", n, " ids of dim ", D);
  if (n == 0 || D == 0) return;
  cudaStream_t s = activate(dweight.device().index);
  NATSL_CHECK(weight_grad_writes(dout.dtype(), dweight.dtype()), "embedding_bwd: dweight ", dweight.str(),
              " for dout ", dout.str(), " (dout's dtype, or f32 for bf16)");
  auto run = [&](auto t, auto tw) {
    using T = decltype(t);
    using TW = decltype(tw);
    const T* gp = static_cast<const T*>(dout.data_ptr());
    TW* wp = static_cast<TW*>(dweight.data_ptr());
    if (seg.pdl_accumulate) {  // its launch overlapping the segments kernel
      accumulate_pdl<T, TW>(seg, gp, wp, D, s, /*pdl=*/true, dweight.device().index);
      return;
    }
    if (seg.key_bits == 32) accumulate_v2<T, TW, uint32_t, 1>(seg, gp, wp, D, s);
    else accumulate_v2<T, TW, uint64_t, 1>(seg, gp, wp, D, s);
  };
  if (dout.dtype() == DType::bf16 && dweight.dtype() == DType::f32) {
    run(bf16{}, float{});
    return;
  }
  NATSL_CUDA_DISPATCH_FLOAT(dweight.dtype(), "embedding_bwd", T, [&] { run(T{}, T{}); });
}

void embedding_bwd(const Tensor& ids, const Tensor& dout, const Tensor& dweight) {
  NATSL_CHECK(dweight.dim() == 2, "embedding_bwd: dweight must be [V, D], got ", dweight.str());
  const int64_t V = dweight.size(0), D = dweight.size(1), n = ids.numel();
  NATSL_CHECK(dout.numel() == n * D, "embedding_bwd: dout ", dout.str(), " for ", n, " ids of dim ", D);
  if (n == 0 || D == 0) return;
  const EmbeddingBwdSegments seg =
      embedding_bwd_segments(ids, V, EmbeddingBwdPlan{});
  embedding_bwd_accumulate(seg, dout, dweight);
}

}  // namespace natsl::kernels::cuda
