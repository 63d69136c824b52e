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
// additions, so the same bits as v0 and v1. On the H200 (c0acb21) its accumulation runs at 1.20x the copy
// time and its segments take 41 us, mostly CUB's two onesweep passes (12.5 us each, only 15 CTAs at 131072
// keys).
// Variant 3 (an experiment, slower than v2): v2's keys, starts and accumulation, the segments without a
// device-wide radix sort: a stable
// two-level counting sort (the id's high bits pick one of at most 512 buckets, per tile of 2048 positions;
// one block scans the (bucket, tile) counts; each tile scatters its keys stably into the buckets; one block
// per bucket then counts its ids, which gives their segment starts, and sorts the bucket stably on the low
// id bits, chunk by chunk in order). Four small kernels with many CTAs each; the same sorted keys as v2.
// Ids wider than 21 bits fall back to v2's segments. A bucket holding many tokens (a very frequent id) is
// sorted by one block in chunks of 512 keys: slower than v2 there, linear in the bucket's size.
// Measured on the H200 (2026-11-28, 07418125f079): v3's segments 0.058 ms against v2's 0.040 ms (whole op
// 0.169 against 0.151 ms), accumulation the same (1.21x the copy): the four dependent small kernels cost more
// than CUB's onesweep here. Per-kernel times (Nsight Compute) are needed before tuning it further.
// Variant 4 (an experiment): v3's segments, an accumulation task of twice the columns per warp (two 16-byte
// vectors per lane and row: twice the loads in flight, half the tasks). Same order of additions: the same
// bits. Measured 2.51x the copy with 64 registers (it spilled); with 128 registers 1.83x (3d70c469).
// Variant 5 (an experiment; 0.145 ms against v2's 0.148 on the H200): v2 with a smaller onesweep tile for CUB's radix sort
// (WideSortHub below: 64 CTAs a pass instead of ~17 at 131072 keys). The same sort: v2's bits.
// Variant 6 (an experiment; 0.144-0.146 ms on the H200, its in-warp sort costing the accumulation ~7 us):
// v2's keys, starts and accumulation without any sort of the whole key
// set, so that the segments cost a few small kernels instead of CUB's five (~40 us at 131072 ids): a memset
// of counts[V]; a count kernel (atomic counts per id, one per group of equal ids in a warp) whose last block
// scans them into the starts; a scatter (each position takes a slot of its id's segment from an atomic
// countdown: grouped by id, unordered within an id); then order within each id is restored: segments of at
// most 32 entries by the accumulation warp itself (a bitonic sort over shuffles, before its loads), longer
// ones by one extra kernel (a block per segment: bitonic in shared memory up to 8192 entries, else a bitmap of
// the positions written out in order) into a second key buffer. Each id's rows are still added in ascending
// position: v2's bits. The kernels after the first use programmatic dependent launch (sm_90) to hide the gaps
// between them; variant 7 is v6 without it. Only for 32-bit keys; with 64-bit keys both run v2's segments.
// Details in the v6 section below.
// Variant 8: v2's sorted keys and starts built by ONE cooperative kernel (all blocks
// resident, 2 of 512 threads per SM), its phases separated by grid barriers instead of launches: zero the
// workspace; count the ids (v6's warp-aggregated atomics); scan the counts (each block publishes its tile's
// total, adds those of the blocks before it, scans its tile) and list the long segments; scatter the keys
// (v6); sort every segment in place: longer than 32 by one block each (v6's shared-memory bitonic or bitmap
// code), 2 to 32 by one warp each (bitonic over shuffles). Then v2's accumulation kernel (no sorting in the
// warp), launched with programmatic dependent launch so its blocks are in place when the segments kernel ends:
// the same keys, starts and bits as v2. Without cooperative launch or with 64-bit keys: v2's segments. Details
// in the v8 section below. The default (variant.h): 0.133 ms on the H200, 1.42x the copy (v2 0.148), segments
// 0.027 ms (v2 0.039), accumulation 0.111 (v2's).
// The default is in variant.h.
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

// Task t = blockIdx.x * kAccWarps + warp: id v = t / chunks, columns [(t % chunks) * 32 * CV * VEC, + 32 * CV * VEC):
// CV vectors of VEC elements per lane and row (v2, v3: CV = 1; v4: CV = 2, twice the loads in flight per lane).
// CV = 2 holds twice the raw vectors: 8 / CV blocks per SM leave it 128 registers (at 64 it spilled 520 bytes
// and measured 2.5x the copy on the H200).
// Programmatic dependent launch (sm_90, v6): a kernel launched with the PDL attribute (launch_pdl below) may
// start while the previous kernel of the stream still runs; pdl_wait blocks until that kernel has finished
// and its writes are visible, so every v6 kernel calls it before touching global memory. pdl_trigger lets
// the next kernel's blocks start early (they then wait in their own pdl_wait). Both are no-ops in a kernel
// launched without the attribute.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// v6: sorts the keys of lanes [0, cnt) ascending across the warp (bitonic network on the first
// next_pow2(cnt) lanes; lanes >= cnt hold ~0, which sorts last). cnt is warp-uniform, 1 <= cnt <= 32.
__device__ __forceinline__ uint32_t warp_sort_prefix(uint32_t key, int cnt, int lane) {
  const int width = cnt <= 1 ? 1 : 1 << (32 - __clz(cnt - 1));
  for (int k = 2; k <= width; k <<= 1)
    for (int j = k >> 1; j > 0; j >>= 1) {
      const uint32_t other = __shfl_xor_sync(0xffffffffu, key, j);
      // Within a run of k lanes sorted ascending when lane & k == 0 (always for the first `width` lanes at
      // the last k), the lower lane of each pair keeps the smaller key.
      const bool ascending = (lane & k) == 0, lower = (lane & j) == 0;
      key = (ascending == lower) ? min(key, other) : max(key, other);
    }
  return key;
}

constexpr int kWarpSortMax = 32;  // v6: longer segments are sorted before the accumulation (sorted_large)

// SORT_SMALL (v6, 32-bit keys): keys are grouped by id but unordered within an id; a segment of at most 32
// entries is sorted here in the warp (every column-chunk warp of the id sorts it again: a few shuffles),
// longer ones are read from sorted_large. Else (v2 to v5) keys are sorted and sorted_large is unused.
template <class T, int VEC, class K, int CV, bool SORT_SMALL = false>
__global__ void __launch_bounds__(32 * kAccWarps, 8 / CV)
    embedding_bwd_accumulate_v2_kernel(const K* __restrict__ keys, int shift, const int32_t* __restrict__ start,
                                       int64_t V, int64_t chunks, const T* __restrict__ dout, T* __restrict__ dweight,
                                       int64_t D, const K* __restrict__ sorted_large = nullptr) {
  static_assert(!SORT_SMALL || sizeof(K) == 4, "v6 sorts 32-bit keys");
  const int lane = threadIdx.x & 31;
  const int64_t task = int64_t(blockIdx.x) * kAccWarps + (threadIdx.x >> 5);
  pdl_wait();  // launched with PDL (v6, v8): the segments are complete past this point; else a no-op
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
  T* dst = dweight + v * D;
  Raw cur_raw[CV];
#pragma unroll
  for (int c = 0; c < CV; ++c) {
    cur_raw[c] = Raw{};
    if (in[c]) cur_raw[c] = load_raw(dst + col[c]);  // in flight with the positions and the first rows
  }
  float acc[CV][VEC];
#pragma unroll
  for (int c = 0; c < CV; ++c)
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[c][k] = 0.f;
  const K pos_mask = (K(1) << shift) - 1;
  const K* src = keys;
  if constexpr (SORT_SMALL)
    if (e - b > kWarpSortMax) src = sorted_large;
  for (int32_t base = b; base < e; base += 32) {
    const int cnt = min(32, e - base);
    int32_t my_pos;
    if constexpr (SORT_SMALL) {
      uint32_t key = lane < cnt ? uint32_t(src[base + lane]) : ~0u;
      if (e - b <= kWarpSortMax) key = warp_sort_prefix(key, cnt, lane);
      my_pos = lane < cnt ? int32_t(key & uint32_t(pos_mask)) : 0;
    } else {
      my_pos = lane < cnt ? int32_t(src[base + lane] & pos_mask) : 0;
    }
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
    unpack(cur_raw[c], cur);
#pragma unroll
    for (int k = 0; k < VEC; ++k) cur[k] += acc[c][k];
    store_vec<T, VEC>(dst + col[c], cur);
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

// v5: v2 with a keys-only 32-bit radix sort whose onesweep tile is smaller than CUB's sm_90 default. CUB's tile
// is 384 threads x 20 keys = 7680 keys, so 131072 keys make only ~17 CTAs and each of the two passes took 12.5 us
// on the H200 (Nsight Compute, 2026-11-28); 256 x 8 = 2048 keys a tile gives 64. Every other policy is CUB's own
// for sm_90. The sort is the same stable LSD sort, so the keys, starts and sums are v2's bit for bit.
struct WideSortHub {
  using Base = cub::detail::radix::policy_hub<uint32_t, cub::NullType, int>::Policy900;
  struct Policy : cub::ChainedPolicy<900, Policy, Policy> {
    static constexpr bool ONESWEEP = true;
    static constexpr int ONESWEEP_RADIX_BITS = Base::ONESWEEP_RADIX_BITS;
    using HistogramPolicy = Base::HistogramPolicy;
    using ExclusiveSumPolicy = Base::ExclusiveSumPolicy;
    using OnesweepPolicy =
        cub::AgentRadixSortOnesweepPolicy<256, 8, uint32_t, 1, cub::RADIX_RANK_MATCH_EARLY_COUNTS_ANY,
                                          cub::BLOCK_SCAN_RAKING_MEMOIZE, cub::RADIX_SORT_STORE_DIRECT,
                                          ONESWEEP_RADIX_BITS>;
    using ScanPolicy = Base::ScanPolicy;
    using DownsweepPolicy = Base::DownsweepPolicy;
    using AltDownsweepPolicy = Base::AltDownsweepPolicy;
    using UpsweepPolicy = Base::UpsweepPolicy;
    using AltUpsweepPolicy = Base::AltUpsweepPolicy;
    using SingleTilePolicy = Base::SingleTilePolicy;
    using SegmentedPolicy = Base::SegmentedPolicy;
    using AltSegmentedPolicy = Base::AltSegmentedPolicy;
  };
  using MaxPolicy = Policy;
};

void sort_keys_wide(const uint32_t* in, uint32_t* out, int64_t n, int begin, int end, Device d, cudaStream_t s) {
  using Dispatch = cub::DispatchRadixSort<cub::SortOrder::Ascending, uint32_t, cub::NullType, int,
                                          cub::detail::identity_decomposer_t, WideSortHub>;
  cub::DoubleBuffer<uint32_t> keys(const_cast<uint32_t*>(in), out);
  cub::DoubleBuffer<cub::NullType> values;
  size_t temp_bytes = 0;
  NATSL_CUDA_CHECK(Dispatch::Dispatch(nullptr, temp_bytes, keys, values, int(n), begin, end, false, s));
  Tensor temp = Tensor::empty({int64_t(temp_bytes) + 1}, DType::u8, d);
  NATSL_CUDA_CHECK(Dispatch::Dispatch(temp.data_ptr(), temp_bytes, keys, values, int(n), begin, end, false, s));
}

// wide_sort (v5, 32-bit keys only): sort_keys_wide instead of CUB's default policy.
template <class K>
void segments_v2(const Tensor& ids, int64_t V, Device d, cudaStream_t s, EmbeddingBwdSegments& seg,
                 bool wide_sort = false) {
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
  if constexpr (std::is_same_v<K, uint32_t>) {
    if (wide_sort) sort_keys_wide(in, out, n, shift, shift + bits_for(V), d, s);
    else sort_keys<K>(in, out, n, shift, shift + bits_for(V), d, s);
  } else {
    sort_keys<K>(in, out, n, shift, shift + bits_for(V), d, s);
  }
  seg.aux = Tensor::empty({V + 1}, DType::i32, d);
  segment_starts_v2_kernel<K><<<grid_for(d.index, n + 1, 256), 256, 0, s>>>(out, n, shift, V, seg.aux.data<int32_t>());
  NATSL_CUDA_CHECK_LAUNCH();
}

template <class T, class K, int CV>
void accumulate_v2(const EmbeddingBwdSegments& seg, const T* gp, T* wp, int64_t D, cudaStream_t s) {
  constexpr int VC = kVec<T>;
  const bool vec = D % VC == 0 && aligned16(gp) && aligned16(wp);
  const int width = vec ? VC : 1;
  const int64_t chunks = (D + 32 * CV * width - 1) / (32 * CV * width);
  const int64_t blocks = (seg.V * chunks + kAccWarps - 1) / kAccWarps;
  NATSL_CHECK(blocks < (int64_t(1) << 31), "embedding_bwd: ", seg.V, " ids x dim ", D, " too large");
  const K* keys = static_cast<const K*>(seg.keys.data_ptr());
  const int32_t* sp = seg.aux.data<int32_t>();
  if (vec)
    embedding_bwd_accumulate_v2_kernel<T, VC, K, CV>
        <<<unsigned(blocks), 32 * kAccWarps, 0, s>>>(keys, seg.pos_bits, sp, seg.V, chunks, gp, wp, D);
  else
    embedding_bwd_accumulate_v2_kernel<T, 1, K, CV>
        <<<unsigned(blocks), 32 * kAccWarps, 0, s>>>(keys, seg.pos_bits, sp, seg.V, chunks, gp, wp, D);
  NATSL_CUDA_CHECK_LAUNCH();
}

// ---- v3: segments by a two-level stable counting sort (no device-wide radix sort) ----
// Keys as in v2 (id << pos_bits | position, 32-bit where they fit). The ids' bits split into bucket bits
// (high, at most 9: at most 512 buckets) and LOW low bits. Tiles of positions in order:
//   bucket_hist:  per tile, how many of its ids fall in each bucket -> table[bucket * tiles + tile];
//   bucket_scan:  one block, exclusive sum of the table (bucket-major: the offsets of a stable bucketing);
//   bucket_scatter: per tile, a stable block sort on the bucket bits, each key to its bucket's offset for
//                 this tile plus its rank within the tile's run of that bucket (positions stay ascending);
//   bucket_sort:  one block per bucket: counts its ids (the segment starts of its id range), then sorts the
//                 bucket chunk by chunk, in order, stably on the LOW bits (any bucket size).
// Every step keeps positions ascending within an id, so the sorted keys equal v2's bit for bit.
constexpr int kTileThreads = 256, kTileItems = 8, kTile = kTileThreads * kTileItems;
constexpr int kMaxBucketBits = 9, kMaxBuckets = 1 << kMaxBucketBits;
constexpr int kMaxLowBits = 12;
constexpr int kSortThreads = 128, kSortItems = 4, kSortChunk = kSortThreads * kSortItems;
constexpr int kScanThreads = 1024, kScanItems = 16;  // 16384 table entries per round (32000 at the benchmark)

template <class I>
__global__ void __launch_bounds__(kTileThreads)
    bucket_hist_kernel(const I* __restrict__ ids, int64_t n, int64_t V, int low_bits, int buckets, int64_t tiles,
                       uint32_t* __restrict__ table) {
  __shared__ uint32_t hist[kMaxBuckets];
  for (int b = threadIdx.x; b < buckets; b += kTileThreads) hist[b] = 0;
  __syncthreads();
  const int64_t base = int64_t(blockIdx.x) * kTile;
  for (int k = threadIdx.x; k < kTile; k += kTileThreads)
    if (base + k < n) atomicAdd(&hist[checked_id(ids, base + k, V) >> low_bits], 1u);
  __syncthreads();
  for (int b = threadIdx.x; b < buckets; b += kTileThreads) table[int64_t(b) * tiles + blockIdx.x] = hist[b];
}

// In place: table[k] = sum of table[j < k], one block.
__global__ void __launch_bounds__(kScanThreads) bucket_scan_kernel(uint32_t* __restrict__ table, int64_t count) {
  using Scan = cub::BlockScan<uint32_t, kScanThreads>;
  __shared__ typename Scan::TempStorage temp;
  uint32_t running = 0;
  for (int64_t base = 0; base < count; base += int64_t(kScanThreads) * kScanItems) {
    const int64_t first = base + int64_t(threadIdx.x) * kScanItems;
    uint32_t v[kScanItems], ex[kScanItems], total;
#pragma unroll
    for (int k = 0; k < kScanItems; ++k) v[k] = first + k < count ? table[first + k] : 0u;
    Scan(temp).ExclusiveSum(v, ex, total);
#pragma unroll
    for (int k = 0; k < kScanItems; ++k)
      if (first + k < count) table[first + k] = running + ex[k];
    running += total;
    __syncthreads();  // temp reused
  }
}

template <class I, class K>
__global__ void __launch_bounds__(kTileThreads)
    bucket_scatter_kernel(const I* __restrict__ ids, int64_t n, int64_t V, int pos_bits, int low_bits, int id_bits,
                          int buckets, int64_t tiles, const uint32_t* __restrict__ offsets, K* __restrict__ out) {
  using Sort = cub::BlockRadixSort<K, kTileThreads, kTileItems>;
  using Scan = cub::BlockScan<uint32_t, kTileThreads>;
  constexpr int kPer = kMaxBuckets / kTileThreads;
  __shared__ union {
    typename Sort::TempStorage sort;
    typename Scan::TempStorage scan;
  } temp;
  __shared__ uint32_t hist[kMaxBuckets];
  __shared__ int64_t delta[kMaxBuckets];  // destination of the tile's sorted index k in bucket b: delta[b] + k
  for (int b = threadIdx.x; b < kMaxBuckets; b += kTileThreads) hist[b] = 0;
  __syncthreads();
  const int64_t base = int64_t(blockIdx.x) * kTile;
  const int valid = int(min(int64_t(kTile), n - base));
  // Blocked arrangement: the sort's stability follows thread-major order, i.e. position order.
  K keys[kTileItems];
#pragma unroll
  for (int k = 0; k < kTileItems; ++k) {
    const int idx = threadIdx.x * kTileItems + k;
    if (idx < valid) {
      const int64_t id = checked_id(ids, base + idx, V);
      atomicAdd(&hist[id >> low_bits], 1u);
      keys[k] = (K(id) << pos_bits) | K(base + idx);
    } else {
      keys[k] = ~K(0);  // after every real key of its bucket (stable, highest index); never written
    }
  }
  __syncthreads();
  {
    uint32_t c[kPer], ex[kPer];
#pragma unroll
    for (int k = 0; k < kPer; ++k) c[k] = hist[threadIdx.x * kPer + k];
    Scan(temp.scan).ExclusiveSum(c, ex);
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int b = threadIdx.x * kPer + k;
      if (b < buckets) delta[b] = int64_t(offsets[int64_t(b) * tiles + blockIdx.x]) - int64_t(ex[k]);
    }
  }
  __syncthreads();
  // One bucket (V <= 2): the keys are in order already, in the blocked arrangement.
  const bool one_bucket = low_bits == id_bits;
  if (!one_bucket) Sort(temp.sort).SortBlockedToStriped(keys, pos_bits + low_bits, pos_bits + id_bits);
#pragma unroll
  for (int k = 0; k < kTileItems; ++k) {
    const int idx = one_bucket ? threadIdx.x * kTileItems + k : k * kTileThreads + threadIdx.x;
    if (idx < valid) out[delta[int(keys[k] >> (pos_bits + low_bits))] + idx] = keys[k];
  }
}

template <class K>
__global__ void __launch_bounds__(kSortThreads)
    bucket_sort_kernel(const K* __restrict__ in, int64_t n, int64_t V, int pos_bits, int low_bits, int buckets,
                       int64_t tiles, const uint32_t* __restrict__ offsets, K* __restrict__ out,
                       int32_t* __restrict__ start) {
  using Sort = cub::BlockRadixSort<K, kSortThreads, kSortItems>;
  using Scan = cub::BlockScan<uint32_t, kSortThreads>;
  __shared__ union {
    typename Sort::TempStorage sort;
    typename Scan::TempStorage scan;
  } temp;
  __shared__ uint32_t cursor[1 << kMaxLowBits];  // per low id: counts, then where its next key goes
  __shared__ int32_t first[1 << kMaxLowBits];     // per low id: its first sorted index in the current chunk
  __shared__ uint16_t low_of[kSortChunk];         // the low id at each sorted index of the chunk
  const int b = blockIdx.x;
  const int64_t begin = offsets[int64_t(b) * tiles];
  const int64_t end = b + 1 < buckets ? int64_t(offsets[int64_t(b + 1) * tiles]) : n;
  const int64_t id0 = int64_t(b) << low_bits;
  const int span = int(min(int64_t(1) << low_bits, V - id0));  // ids of this bucket
  const K low_mask = (K(1) << low_bits) - 1;
  for (int l = threadIdx.x; l < span; l += kSortThreads) cursor[l] = 0;
  __syncthreads();
  for (int64_t j = begin + threadIdx.x; j < end; j += kSortThreads)
    atomicAdd(&cursor[int((in[j] >> pos_bits) & low_mask)], 1u);
  __syncthreads();
  // Exclusive sum of the counts: the segment starts of ids id0 .. id0 + span - 1.
  uint32_t running = 0;
  for (int l0 = 0; l0 < span; l0 += kSortChunk) {
    uint32_t c[kSortItems], ex[kSortItems], total;
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      const int l = l0 + threadIdx.x * kSortItems + k;
      c[k] = l < span ? cursor[l] : 0u;
    }
    Scan(temp.scan).ExclusiveSum(c, ex, total);
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      const int l = l0 + threadIdx.x * kSortItems + k;
      if (l < span) {
        cursor[l] = uint32_t(begin) + running + ex[k];
        start[id0 + l] = int32_t(begin + running + ex[k]);
      }
    }
    running += total;
    __syncthreads();
  }
  if (b == buckets - 1 && threadIdx.x == 0) start[V] = int32_t(n);
  // The bucket in chunks, in order; within a chunk a stable sort on the low bits.
  for (int64_t c0 = begin; c0 < end; c0 += kSortChunk) {
    const int valid = int(min(int64_t(kSortChunk), end - c0));
    K keys[kSortItems];
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      const int idx = threadIdx.x * kSortItems + k;
      keys[k] = idx < valid ? in[c0 + idx] : ~K(0);
    }
    Sort(temp.sort).SortBlockedToStriped(keys, pos_bits, pos_bits + low_bits);
    int low[kSortItems];
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      const int idx = k * kSortThreads + threadIdx.x;
      low[k] = int((keys[k] >> pos_bits) & low_mask);
      low_of[idx] = uint16_t(low[k]);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      const int idx = k * kSortThreads + threadIdx.x;
      if (idx < valid && (idx == 0 || low_of[idx - 1] != low[k])) first[low[k]] = idx;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      const int idx = k * kSortThreads + threadIdx.x;
      if (idx < valid) out[int64_t(cursor[low[k]]) + (idx - first[low[k]])] = keys[k];
    }
    __syncthreads();
    // The last key of each low id's run moves that id's cursor past the run.
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      const int idx = k * kSortThreads + threadIdx.x;
      if (idx < valid && (idx == valid - 1 || low_of[idx + 1] != low[k]))
        cursor[low[k]] += uint32_t(idx - first[low[k]] + 1);
    }
    __syncthreads();  // cursor, first, low_of and temp reused by the next chunk
  }
}

template <class K>
void segments_v3(const Tensor& ids, int64_t V, int id_bits, Device d, cudaStream_t s, EmbeddingBwdSegments& seg) {
  const int64_t n = seg.n;
  const int pos_bits = seg.pos_bits;
  const int bucket_bits = std::min(id_bits - 1, kMaxBucketBits);
  const int low_bits = id_bits - bucket_bits;
  const int buckets = int((V + (int64_t(1) << low_bits) - 1) >> low_bits);
  const int64_t tiles = (n + kTile - 1) / kTile;
  constexpr DType kd = sizeof(K) == 4 ? DType::i32 : DType::i64;
  Tensor table = Tensor::empty({int64_t(buckets) * tiles}, DType::i32, d);
  Tensor mid = Tensor::empty({n}, kd, d);
  seg.keys = Tensor::empty({n}, kd, d);
  seg.aux = Tensor::empty({V + 1}, DType::i32, d);
  uint32_t* tp = static_cast<uint32_t*>(table.data_ptr());
  K* mp = static_cast<K*>(mid.data_ptr());
  NATSL_CHECK(tiles < (int64_t(1) << 31), "embedding_bwd: too many ids");
  NATSL_CUDA_DISPATCH_INDEX(ids.dtype(), "embedding_bwd", I, [&] {
    const I* ip = static_cast<const I*>(ids.data_ptr());
    bucket_hist_kernel<I><<<unsigned(tiles), kTileThreads, 0, s>>>(ip, n, V, low_bits, buckets, tiles, tp);
    NATSL_CUDA_CHECK_LAUNCH();
    bucket_scan_kernel<<<1, kScanThreads, 0, s>>>(tp, int64_t(buckets) * tiles);
    NATSL_CUDA_CHECK_LAUNCH();
    bucket_scatter_kernel<I, K><<<unsigned(tiles), kTileThreads, 0, s>>>(ip, n, V, pos_bits, low_bits, id_bits,
                                                                          buckets, tiles, tp, mp);
    NATSL_CUDA_CHECK_LAUNCH();
  });
  bucket_sort_kernel<K><<<unsigned(buckets), kSortThreads, 0, s>>>(mp, n, V, pos_bits, low_bits, buckets, tiles, tp,
                                                                   static_cast<K*>(seg.keys.data_ptr()),
                                                                   seg.aux.data<int32_t>());
  NATSL_CUDA_CHECK_LAUNCH();
}

// ---- v6: segments by a counting scatter (no sort of the whole key set) ----
// 32-bit keys as in v2 (id << pos_bits | position). The workspace (int32) holds counts[V], then four words
// (done ticket, giant count, mid count, work ticket; zeroed with the counts by one memset), then the list of
// long segments' ids (at most n / 33 of them: giants from the front, the others from the back).
//   count:   counts[id] += 1 per position (lanes of a warp with the same id add once, so one very frequent
//            id costs n / 32 atomics, not n); the last block to finish scans the counts into starts[V + 1]
//            (v2's seg.aux) and lists the ids of more than 32 entries;
//   scatter: each position takes a slot of its id's segment from an atomic countdown: grouped by id,
//            unordered within an id;
//   sort_large: one block per listed id sorts its segment into sorted_large: up to kLargeKeys entries with
//            a bitonic sort in shared memory, longer ones through a bitmap of the positions (set a bit per
//            entry, then write the set bits out in order), a window of kWindow positions at a time;
//   accumulate: v2's kernel, which sorts segments of at most 32 entries in the warp (SORT_SMALL).
// Every segment is added in ascending position order, so the bits are v2's. Kernels after the first are
// launched with programmatic dependent launch (v6; v7 without it) to hide the launch gaps.
// Data written by another block earlier in the same kernel (v8's phases) is read through L2 (__ldcg).
constexpr int kCountThreads = 1024;  // its last block scans the counts, kScanPer a thread and round
constexpr int kScanPer = 16;
constexpr int kScatterThreads = 256;
constexpr int kLargeThreads = 512;
constexpr int kLargeKeys = 8192;          // shared-memory sort up to this length (32 KB of keys)
constexpr int kWindow = kLargeKeys * 32;  // the same 32 KB as a bitmap of positions
constexpr int kWsExtra = 4;               // the words after counts[V]
enum { kWsDone = 0, kWsGiant = 1, kWsMid = 2, kWsWork = 3 };

// query(device) (a value >= 0), asked once per device: cache holds the value + 1, 0 while not asked yet.
template <class Query>
int cached_per_device(std::atomic<int> (&cache)[64], int device, Query query) {
  const int d = device < 64 ? device : 63;
  int c = cache[d].load(std::memory_order_relaxed);
  if (c == 0) {
    c = query(device) + 1;
    cache[d].store(c, std::memory_order_relaxed);
  }
  return c - 1;
}

// cudaDeviceGetAttribute(attr, device), cached per device.
template <cudaDeviceAttr kAttr>
int device_attribute(int device) {
  static std::atomic<int> cache[64];
  return cached_per_device(cache, device, [](int dev) {
    int value = 0;
    NATSL_CUDA_CHECK(cudaDeviceGetAttribute(&value, kAttr, dev));
    return value;
  });
}

bool pdl_supported(int device) { return device_attribute<cudaDevAttrComputeCapabilityMajor>(device) >= 9; }

// Launches kernel on the stream with the given launch attributes (none when count is 0).
template <class... Params, class... Args>
void launch_with(const cudaLaunchAttribute* attrs, unsigned count, void (*kernel)(Params...), unsigned grid,
                 unsigned block, cudaStream_t s, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(block);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = s;
  cfg.attrs = const_cast<cudaLaunchAttribute*>(attrs);
  cfg.numAttrs = count;
  NATSL_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

// Launches kernel on the stream, with programmatic dependent launch where `pdl` (and the device has it).
template <class... Params, class... Args>
void launch_pdl(bool pdl, void (*kernel)(Params...), unsigned grid, unsigned block, cudaStream_t s, Args&&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  launch_with(&attr, pdl ? 1u : 0u, kernel, grid, block, s, std::forward<Args>(args)...);
}

// One block of THREADS: starts[v] = carry + sum of counts[lo <= u < v] for v in [lo, hi) (lo a multiple of
// kScanPer); the ids of more than kWarpSortMax entries are listed in `large`: those of more than kLargeKeys
// from the front (slot from *num_giant), the others from the back (slot from *num_mid). Every round of
// THREADS * kScanPer ids ends with __syncthreads.
template <int THREADS>
__device__ void scan_counts(const int32_t* counts, int64_t lo, int64_t hi, int32_t carry, int32_t* num_giant,
                            int32_t* num_mid, int32_t* large, int32_t large_cap, int32_t* __restrict__ starts,
                            typename cub::BlockScan<int32_t, THREADS>::TempStorage& temp) {
  using Scan = cub::BlockScan<int32_t, THREADS>;
  for (int64_t r = lo; r < hi; r += int64_t(THREADS) * kScanPer) {
    const int64_t v0 = r + int64_t(threadIdx.x) * kScanPer;
    const bool whole = v0 + kScanPer <= hi;
    int32_t c[kScanPer];
    // L2 loads (__ldcg): the counts were added by other blocks' atomics.
    if (whole) {
#pragma unroll
      for (int q = 0; q < kScanPer / 4; ++q) {
        const int4 w = __ldcg(reinterpret_cast<const int4*>(counts + v0) + q);
        c[4 * q] = w.x, c[4 * q + 1] = w.y, c[4 * q + 2] = w.z, c[4 * q + 3] = w.w;
      }
    } else {
#pragma unroll
      for (int k = 0; k < kScanPer; ++k) c[k] = v0 + k < hi ? __ldcg(counts + v0 + k) : 0;
    }
    int32_t sum = 0;
#pragma unroll
    for (int k = 0; k < kScanPer; ++k) sum += c[k];
    int32_t ex, total;
    Scan(temp).ExclusiveSum(sum, ex, total);
    int32_t run = carry + ex;
    uint32_t long_ones = 0, giant_ones = 0;  // bit k: entry k has more than kWarpSortMax / kLargeKeys
#pragma unroll
    for (int k = 0; k < kScanPer; ++k) {
      const int32_t count = c[k];
      c[k] = run;
      run += count;
      long_ones |= uint32_t(count > kWarpSortMax) << k;  // never past hi (count 0 there)
      giant_ones |= uint32_t(count > kLargeKeys) << k;
    }
    while (long_ones) {
      const int k = __ffs(long_ones) - 1;
      long_ones &= long_ones - 1u;
      const int32_t v = int32_t(v0 + k);
      if ((giant_ones >> k) & 1u) large[atomicAdd(num_giant, 1)] = v;
      else large[large_cap - 1 - atomicAdd(num_mid, 1)] = v;
    }
    if (whole) {
#pragma unroll
      for (int q = 0; q < kScanPer / 4; ++q)
        reinterpret_cast<int4*>(starts + v0)[q] = make_int4(c[4 * q], c[4 * q + 1], c[4 * q + 2], c[4 * q + 3]);
    } else {
#pragma unroll
      for (int k = 0; k < kScanPer; ++k)
        if (v0 + k < hi) starts[v0 + k] = c[k];
    }
    carry += total;
    __syncthreads();  // temp reused
  }
}

// One block: starts[v] = sum of counts[u < v], starts[V] = n; lists the ids of more than kWarpSortMax entries.
__device__ void v6_scan_counts(const int32_t* counts, int32_t n, int32_t V, int32_t* extra, int32_t* large,
                               int32_t large_cap, int32_t* __restrict__ starts) {
  using Scan = cub::BlockScan<int32_t, kCountThreads>;
  __shared__ typename Scan::TempStorage temp;
  __shared__ int32_t num_giant, num_mid;
  if (threadIdx.x == 0) num_giant = num_mid = 0;
  __syncthreads();
  scan_counts<kCountThreads>(counts, 0, V, 0, &num_giant, &num_mid, large, large_cap, starts, temp);
  if (threadIdx.x == 0) {
    starts[V] = n;
    extra[kWsGiant] = num_giant;
    extra[kWsMid] = num_mid;
  }
}

// counts[id] += the number of positions of id, over a grid-stride loop (lanes of a warp with the same id add
// once). Ids are checked here.
template <class I>
__device__ void count_ids(const I* __restrict__ ids, int32_t n, int32_t V, int32_t* counts) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  // base is block-uniform: every lane of a warp takes part in the match.
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x; base < n; base += stride) {
    const int64_t i = base + threadIdx.x;
    const int32_t id = i < n ? int32_t(checked_id(ids, i, V)) : -1 - lane;  // past the end: matches no lane
    const uint32_t group = __match_any_sync(0xffffffffu, id);
    if (id >= 0 && lane == __ffs(group) - 1) atomicAdd(&counts[id], __popc(group));
  }
}

// keys[starts[id] + slot] = id << pos_bits | i over a grid-stride loop, the slot from a countdown of
// counts[id] (shared by the lanes of a warp with the same id): every slot of the segment is taken once, in no
// particular order.
template <class I>
__device__ void scatter_ids(const I* __restrict__ ids, int32_t n, int pos_bits, int32_t* counts,
                            const int32_t* starts, uint32_t* __restrict__ keys) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x; base < n; base += stride) {
    const int64_t i = base + threadIdx.x;
    const int32_t id = i < n ? int32_t(ids[i]) : -1 - lane;
    const uint32_t group = __match_any_sync(0xffffffffu, id);
    const int leader = __ffs(group) - 1;
    int32_t first = 0;
    if (id >= 0 && lane == leader) {
      const int32_t m = __popc(group);
      first = __ldcg(starts + id) + atomicSub(&counts[id], m) - m;
    }
    first = __shfl_sync(0xffffffffu, first, leader);
    if (id >= 0) keys[first + __popc(group & ((1u << lane) - 1u))] = (uint32_t(id) << pos_bits) | uint32_t(i);
  }
}

// ws: counts[V] (zero), extra[kWsExtra] (zero), large[large_cap].
template <class I>
__global__ void __launch_bounds__(kCountThreads)
    embedding_bwd_v6_count_kernel(const I* __restrict__ ids, int32_t n, int32_t V, int32_t* ws, int32_t large_cap,
                                  int32_t* __restrict__ starts) {
  pdl_wait();
  pdl_trigger();
  int32_t* counts = ws;
  int32_t* extra = ws + V;
  count_ids(ids, n, V, counts);
  // The last block to finish (the threadfence-and-ticket pattern) sees every count and scans them.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0)
    last = atomicAdd(reinterpret_cast<unsigned*>(extra + kWsDone), 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  v6_scan_counts(counts, n, V, extra, extra + kWsExtra, large_cap, starts);
}

template <class I>
__global__ void __launch_bounds__(kScatterThreads)
    embedding_bwd_v6_scatter_kernel(const I* __restrict__ ids, int32_t n, int pos_bits, int32_t* counts,
                                    const int32_t* __restrict__ starts, uint32_t* __restrict__ keys) {
  pdl_wait();
  pdl_trigger();
  scatter_ids(ids, n, pos_bits, counts, starts, keys);
}

// One block (kLargeThreads) per listed id, pulled from the work counter extra[kWsWork]: its segment of keys
// sorted into the same indices of `sorted`. Segments of more than kLargeKeys entries are written to
// giant_out, then copied to `sorted` by the same block where the two differ (v8 sorts in place: sorted and
// giant_out are keys and a scratch buffer; the bitmap pass reads the segment again for every window).
__device__ void sort_long_segments(const uint32_t* keys, uint32_t* sorted, uint32_t* giant_out, int32_t n,
                                   int pos_bits, const int32_t* starts, const int32_t* extra, int32_t* work,
                                   const int32_t* large, int32_t large_cap) {
  using Scan = cub::BlockScan<int32_t, kLargeThreads>;
  __shared__ uint32_t buf[kLargeKeys];  // the keys (bitonic) or a bitmap of kWindow positions
  __shared__ typename Scan::TempStorage temp;
  __shared__ int32_t item;
  const int tid = threadIdx.x;
  const int32_t giant = __ldcg(extra + kWsGiant), listed = giant + __ldcg(extra + kWsMid);
  if (listed == 0) return;  // the usual case with ~4 positions per id: no atomic on the work counter
  const uint32_t pos_mask = (1u << pos_bits) - 1u;
  for (;;) {
    if (tid == 0) item = atomicAdd(work, 1);
    __syncthreads();
    const int32_t k = item;
    if (k >= listed) break;
    const int32_t v = __ldcg(large + (k < giant ? k : large_cap - 1 - (k - giant)));
    const int32_t b = __ldcg(starts + v), len = __ldcg(starts + v + 1) - b;
    if (len <= kLargeKeys) {
      int width = 2 * kWarpSortMax;
      while (width < len) width <<= 1;
      for (int i = tid; i < width; i += kLargeThreads) buf[i] = i < len ? __ldcg(keys + b + i) : ~0u;
      __syncthreads();
      for (int run = 2; run <= width; run <<= 1)
        for (int j = run >> 1; j > 0; j >>= 1) {
          // Pair i: lo has bit j clear, hi = lo + j; runs of `run` entries alternate ascending/descending.
          for (int i = tid; i < width / 2; i += kLargeThreads) {
            const int lo = 2 * i - (i & (j - 1)), hi = lo + j;
            const uint32_t a = buf[lo], c = buf[hi];
            if ((a > c) == ((lo & run) == 0)) {
              buf[lo] = c;
              buf[hi] = a;
            }
          }
          __syncthreads();
        }
      for (int i = tid; i < len; i += kLargeThreads) sorted[b + i] = buf[i];
    } else {
      constexpr int kWordsPer = kLargeKeys / kLargeThreads;  // bitmap words per thread, blocked (in order)
      const uint32_t high = uint32_t(v) << pos_bits;
      int32_t written = 0;
      for (int64_t w0 = 0; w0 < n; w0 += kWindow) {
        for (int i = tid; i < kLargeKeys; i += kLargeThreads) buf[i] = 0;
        __syncthreads();
        for (int32_t j = b + tid; j < b + len; j += kLargeThreads) {
          const int64_t p = int64_t(__ldcg(keys + j) & pos_mask) - w0;
          if (p >= 0 && p < kWindow) atomicOr(&buf[p >> 5], 1u << (p & 31));
        }
        __syncthreads();
        int32_t cnt = 0;
#pragma unroll
        for (int q = 0; q < kWordsPer; ++q) cnt += __popc(buf[tid * kWordsPer + q]);
        int32_t ex, total;
        Scan(temp).ExclusiveSum(cnt, ex, total);
        int32_t out = b + written + ex;
        for (int q = 0; q < kWordsPer; ++q) {
          uint32_t word = buf[tid * kWordsPer + q];
          const uint32_t p0 = uint32_t(w0) + uint32_t(tid * kWordsPer + q) * 32u;
          while (word) {
            giant_out[out++] = high | (p0 + uint32_t(__ffs(word) - 1));
            word &= word - 1u;
          }
        }
        written += total;
        __syncthreads();  // buf and temp reused; giant_out complete after the last window
      }
      if (giant_out != sorted)
        for (int i = tid; i < len; i += kLargeThreads) sorted[b + i] = __ldcg(giant_out + b + i);
    }
    __syncthreads();  // buf and item reused
  }
}

__global__ void __launch_bounds__(kLargeThreads)
    embedding_bwd_v6_sort_large_kernel(const uint32_t* __restrict__ keys, int32_t n, int pos_bits,
                                       const int32_t* __restrict__ starts, int32_t* extra, int32_t large_cap,
                                       uint32_t* __restrict__ sorted) {
  pdl_wait();
  pdl_trigger();
  sort_long_segments(keys, sorted, sorted, n, pos_bits, starts, extra, extra + kWsWork, extra + kWsExtra,
                     large_cap);
}

// v6 (pdl) and v7: the segments above; seg.pos_bits and key_bits (32) set by the caller.
void segments_v6(const Tensor& ids, int64_t V, Device d, cudaStream_t s, bool pdl, EmbeddingBwdSegments& seg) {
  const int64_t n = seg.n;
  const int32_t large_cap = int32_t(std::max<int64_t>(1, n / (kWarpSortMax + 1)));
  Tensor ws = Tensor::empty({V + kWsExtra + large_cap}, DType::i32, d);
  Tensor both = Tensor::empty({2 * n}, DType::i32, d);
  seg.keys = both.slice(0, 0, n);
  seg.sorted_large = both.slice(0, n, 2 * n);
  seg.aux = Tensor::empty({V + 1}, DType::i32, d);
  int32_t* wsp = ws.data<int32_t>();
  int32_t* sp = seg.aux.data<int32_t>();
  uint32_t* kp = static_cast<uint32_t*>(both.data_ptr());
  NATSL_CHECK(aligned16(wsp) && aligned16(sp), "embedding_bwd: workspace not 16-byte aligned");
  NATSL_CUDA_CHECK(cudaMemsetAsync(wsp, 0, size_t(V + kWsExtra) * sizeof(int32_t), s));
  pdl = pdl && pdl_supported(d.index);
  NATSL_CUDA_DISPATCH_INDEX(ids.dtype(), "embedding_bwd", I, [&] {
    const I* ip = static_cast<const I*>(ids.data_ptr());
    // After the memset (not a kernel): an ordinary launch.
    launch_pdl(false, embedding_bwd_v6_count_kernel<I>, unsigned(grid_for(d.index, n, kCountThreads, 2)),
               kCountThreads, s, ip, int32_t(n), int32_t(V), wsp, large_cap, sp);
    launch_pdl(pdl, embedding_bwd_v6_scatter_kernel<I>, unsigned(grid_for(d.index, n, kScatterThreads)),
               kScatterThreads, s, ip, int32_t(n), seg.pos_bits, wsp, static_cast<const int32_t*>(sp), kp);
  });
  if (n > kWarpSortMax) {  // else no segment is long
    const int grid = std::min<int>(large_cap, 4 * sm_count(d.index));
    launch_pdl(pdl, embedding_bwd_v6_sort_large_kernel, unsigned(grid), kLargeThreads, s,
               static_cast<const uint32_t*>(kp), int32_t(n), seg.pos_bits, static_cast<const int32_t*>(sp), wsp + V,
               large_cap, kp + n);
  }
}

// ---- v8: v2's segments (sorted keys and starts) from one cooperative kernel ----
// The v6 steps as phases of one kernel whose blocks are all resident (cooperative launch), separated by grid
// barriers instead of launches:
//   1. count the ids (count_ids) into counts[V], which is zero between calls (v8_zero_counts); block 0 zeroes
//      the kWsExtra words and the published words meanwhile;
//   2. scan: block x owns ids [x * tile, (x + 1) * tile); it publishes its tile's count (+ 1, so 0 means not
//      yet), adds up the published counts of the blocks before it (all resident: the wait ends) and scans
//      its tile from there (scan_counts), listing the long segments;
//   3. scatter the keys (scatter_ids): grouped by id, unordered within an id, counts[] back at zero;
//   4. sort every segment in place: those of more than 32 entries by one block each (sort_long_segments,
//      the giants through a scratch buffer), then those of 2 to 32 entries by one warp each (bitonic over
//      shuffles, kShortPerWarp ids a warp at a time so that their loads are in flight together).
// Keys ascending within every segment and segments in id order: the keys are v2's sorted keys bit for bit,
// the starts v2's, so the accumulation is v2's kernel with v2's bits.
constexpr int kCoopThreads = kLargeThreads;  // a block also sorts one long segment
constexpr int kCoopBlocksPerSm = 2;          // 1024 threads per SM: one position per thread at 131072 ids
constexpr int kShortPerWarp = 4;

// Sorts the segments of 2 to kWarpSortMax entries in place, one warp each, over a grid-stride loop of ids.
__device__ void sort_short_segments(uint32_t* keys, const int32_t* starts, int32_t V) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x >> 5);
  const int64_t warp = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  for (int64_t v0 = warp; v0 < V; v0 += kShortPerWarp * warps) {
    // Lane k < kShortPerWarp reads the start of id v0 + k * warps, lane kShortPerWarp + k its end.
    int32_t se = 0;
    if (lane < 2 * kShortPerWarp) {
      const int64_t v = v0 + int64_t(lane % kShortPerWarp) * warps;
      if (v < V) se = __ldcg(starts + v + lane / kShortPerWarp);
    }
    int32_t b[kShortPerWarp], len[kShortPerWarp];
    uint32_t key[kShortPerWarp];
#pragma unroll
    for (int k = 0; k < kShortPerWarp; ++k) {
      b[k] = __shfl_sync(0xffffffffu, se, k);
      len[k] = __shfl_sync(0xffffffffu, se, kShortPerWarp + k) - b[k];  // 0 past V
      if (len[k] > kWarpSortMax) len[k] = 0;                             // a long one: sorted by a block
      key[k] = len[k] > 1 && lane < len[k] ? __ldcg(keys + b[k] + lane) : ~0u;
    }
#pragma unroll
    for (int k = 0; k < kShortPerWarp; ++k)
      if (len[k] > 1) {
        key[k] = warp_sort_prefix(key[k], len[k], lane);
        if (lane < len[k]) keys[b[k] + lane] = key[k];
      }
  }
}

// counts[V]: zero on entry, and zero again on exit (the scatter counts every id back down). ws: extra[kWsExtra],
// published[gridDim.x] (both zeroed here), large[large_cap]. scratch: n keys (the giant segments' bitmap
// output); tile: a multiple of kScanPer.
template <class I>
__global__ void __launch_bounds__(kCoopThreads, kCoopBlocksPerSm)
    embedding_bwd_v8_segments_kernel(const I* __restrict__ ids, int32_t n, int32_t V, int pos_bits, int32_t tile,
                                     int32_t* counts, int32_t* ws, int32_t large_cap, int32_t* starts, uint32_t* keys,
                                     uint32_t* scratch) {
  using Scan = cub::BlockScan<int32_t, kCoopThreads>;
  using Reduce = cub::BlockReduce<int32_t, kCoopThreads>;
  __shared__ union {
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage reduce;
  } temp;
  __shared__ int32_t carry;
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  pdl_trigger();  // the accumulation's blocks may be scheduled now; they wait for this kernel in pdl_wait
  int32_t* extra = ws;
  uint32_t* published = reinterpret_cast<uint32_t*>(extra + kWsExtra);
  int32_t* large = extra + kWsExtra + gridDim.x;
  // extra and published are first touched after the next barrier: block 0 zeroes them while all count.
  if (blockIdx.x == 0)
    for (int k = threadIdx.x; k < kWsExtra + int(gridDim.x); k += kCoopThreads) ws[k] = 0;
  count_ids(ids, n, V, counts);
  grid.sync();
  {
    const int64_t first = int64_t(blockIdx.x) * tile;
    const int64_t lo = first < V ? first : V, hi = lo + tile < V ? lo + tile : V;
    int32_t mine = 0;
    for (int64_t v = lo + threadIdx.x; v < hi; v += kCoopThreads) mine += __ldcg(counts + v);
    mine = Reduce(temp.reduce).Sum(mine);
    if (threadIdx.x == 0) atomicExch(published + blockIdx.x, uint32_t(mine) + 1u);
    int32_t before = 0;
    for (unsigned x = threadIdx.x; x < blockIdx.x; x += kCoopThreads) {
      uint32_t p;
      do p = *static_cast<volatile const uint32_t*>(published + x);
      while (p == 0);
      before += int32_t(p - 1u);
    }
    __syncthreads();  // temp reused
    before = Reduce(temp.reduce).Sum(before);
    if (threadIdx.x == 0) carry = before;
    __syncthreads();
    scan_counts<kCoopThreads>(counts, lo, hi, carry, extra + kWsGiant, extra + kWsMid, large, large_cap, starts,
                              temp.scan);
    if (blockIdx.x == 0 && threadIdx.x == 0) starts[V] = n;
  }
  grid.sync();
  scatter_ids(ids, n, pos_bits, counts, starts, keys);
  grid.sync();
  sort_long_segments(keys, keys, scratch, n, pos_bits, starts, extra, extra + kWsWork, large, large_cap);
  sort_short_segments(keys, starts, V);
}

// Resident blocks per SM of the v8 kernel (at most kCoopBlocksPerSm; 0 if it cannot run), cached per device.
// The occupancy query is for the current device, the one the caller activated.
template <class I>
int v8_blocks_per_sm(int device) {
  static std::atomic<int> cache[64];
  return cached_per_device(cache, device, [](int) {
    int per_sm = 0;
    NATSL_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, embedding_bwd_v8_segments_kernel<I>,
                                                                   kCoopThreads, 0));
    return std::min(per_sm, kCoopBlocksPerSm);
  });
}

// v8's counts[V], zero between calls: each call's scatter counts every id back down to zero, so the kernel needs
// no zeroing phase (a grid barrier less). One buffer per device, for the device's compute stream (natsl runs
// one per device; two streams running v8 at once would share it), allocated and zeroed on that stream when a
// larger vocabulary first comes, and kept for the life of the process (like a BLAS workspace). A call that
// fails midway traps the kernel (ids are checked), which ends the context with the buffer.
int32_t* v8_zero_counts(int device, int64_t V, cudaStream_t s) {
  struct Buffer {
    int32_t* p = nullptr;
    int64_t size = 0;
  };
  static std::mutex mu;
  static Buffer buffers[64];
  std::lock_guard<std::mutex> lock(mu);
  Buffer& b = buffers[device < 64 ? device : 63];
  if (b.size < V) {
    // The old buffer may still be read by queued work of this stream: freed in stream order.
    if (b.p) NATSL_CUDA_CHECK(cudaFreeAsync(b.p, s));
    void* p = nullptr;
    NATSL_CUDA_CHECK(cudaMallocAsync(&p, size_t(V) * sizeof(int32_t), s));
    NATSL_CUDA_CHECK(cudaMemsetAsync(p, 0, size_t(V) * sizeof(int32_t), s));
    b = Buffer{static_cast<int32_t*>(p), V};
  }
  return b.p;
}

// v8: false (nothing queued) where the device has no cooperative launch; seg.pos_bits and key_bits (32) set by
// the caller.
bool segments_v8(const Tensor& ids, int64_t V, Device d, cudaStream_t s, EmbeddingBwdSegments& seg) {
  if (device_attribute<cudaDevAttrCooperativeLaunch>(d.index) == 0) return false;
  const int64_t n = seg.n;
  bool launched = false;
  NATSL_CUDA_DISPATCH_INDEX(ids.dtype(), "embedding_bwd", I, [&] {
    const int per_sm = v8_blocks_per_sm<I>(d.index);
    if (per_sm == 0) return;
    const int64_t grid = int64_t(per_sm) * sm_count(d.index);
    const int64_t tile = ((V + grid - 1) / grid + kScanPer - 1) / kScanPer * kScanPer;
    const int32_t large_cap = int32_t(std::max<int64_t>(1, n / (kWarpSortMax + 1)));
    int32_t* counts = v8_zero_counts(d.index, V, s);
    Tensor ws = Tensor::empty({kWsExtra + grid + large_cap}, DType::i32, d);
    seg.keys = Tensor::empty({n}, DType::i32, d);
    seg.aux = Tensor::empty({V + 1}, DType::i32, d);
    // Only a segment of more than kLargeKeys entries uses the scratch.
    Tensor scratch = Tensor::empty({n > kLargeKeys ? n : 1}, DType::i32, d);
    int32_t* wsp = ws.data<int32_t>();
    int32_t* sp = seg.aux.data<int32_t>();
    NATSL_CHECK(aligned16(wsp) && aligned16(sp), "embedding_bwd: workspace not 16-byte aligned");
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeCooperative;
    attr.val.cooperative = 1;
    launch_with(&attr, 1, embedding_bwd_v8_segments_kernel<I>, unsigned(grid), kCoopThreads, s,
                static_cast<const I*>(ids.data_ptr()), int32_t(n), int32_t(V), seg.pos_bits, int32_t(tile), counts,
                wsp, large_cap, sp, static_cast<uint32_t*>(seg.keys.data_ptr()),
                static_cast<uint32_t*>(scratch.data_ptr()));
    launched = true;
  });
  return launched;
}

// v2's accumulation launched with programmatic dependent launch where `pdl`: SORT_SMALL (v6, v7) on keys
// unordered within short segments and long ones in sorted_large, else (v8) on v2's sorted keys.
template <class T, bool SORT_SMALL>
void accumulate_pdl(const EmbeddingBwdSegments& seg, const T* gp, T* wp, int64_t D, cudaStream_t s, bool pdl,
                    int device) {
  constexpr int VC = kVec<T>;
  const bool vec = D % VC == 0 && aligned16(gp) && aligned16(wp);
  const int width = vec ? VC : 1;
  const int64_t chunks = (D + 32 * width - 1) / (32 * width);
  const int64_t blocks = (seg.V * chunks + kAccWarps - 1) / kAccWarps;
  NATSL_CHECK(blocks < (int64_t(1) << 31), "embedding_bwd: ", seg.V, " ids x dim ", D, " too large");
  const uint32_t* keys = static_cast<const uint32_t*>(seg.keys.data_ptr());
  const uint32_t* sorted = SORT_SMALL ? static_cast<const uint32_t*>(seg.sorted_large.data_ptr()) : nullptr;
  const int32_t* sp = seg.aux.data<int32_t>();
  pdl = pdl && pdl_supported(device);
  if (vec)
    launch_pdl(pdl, embedding_bwd_accumulate_v2_kernel<T, VC, uint32_t, 1, SORT_SMALL>, unsigned(blocks),
               32 * kAccWarps, s, keys, seg.pos_bits, sp, seg.V, chunks, gp, wp, D, sorted);
  else
    launch_pdl(pdl, embedding_bwd_accumulate_v2_kernel<T, 1, uint32_t, 1, SORT_SMALL>, unsigned(blocks),
               32 * kAccWarps, s, keys, seg.pos_bits, sp, seg.V, chunks, gp, wp, D, sorted);
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
  NATSL_CHECK(variant >= 0 && variant <= 8, "embedding_bwd: unknown kernel variant ", variant, " (",
              kVariantEmbeddingBwd, " must be 0 to 8)");
  EmbeddingBwdSegments seg;
  seg.variant = variant;
  seg.n = ids.numel();
  seg.V = V;
  const int64_t n = seg.n;
  NATSL_CHECK(n < (int64_t(1) << 31) && V < (int64_t(1) << 31), "embedding_bwd: more than 2^31 ids or rows");
  if (n == 0) return seg;
  const Device d = ids.device();
  cudaStream_t s = activate(d.index);
  if (variant == 8 && bits_for(n) + bits_for(V) <= 32) {
    seg.pos_bits = bits_for(n);
    seg.key_bits = 32;
    if (segments_v8(ids, V, d, s, seg)) return seg;
  }
  if ((variant == 3 || variant == 4) && bits_for(V) <= kMaxBucketBits + kMaxLowBits) {
    const int pos_bits = bits_for(n), id_bits = bits_for(V);
    seg.pos_bits = pos_bits;
    if (pos_bits + id_bits <= 32) {
      seg.key_bits = 32;
      segments_v3<uint32_t>(ids, V, id_bits, d, s, seg);
    } else {
      seg.key_bits = 64;
      segments_v3<uint64_t>(ids, V, id_bits, d, s, seg);
    }
  } else if ((variant == 6 || variant == 7) && bits_for(n) + bits_for(V) <= 32) {
    seg.pos_bits = bits_for(n);
    seg.key_bits = 32;
    segments_v6(ids, V, d, s, /*pdl=*/variant == 6, seg);
  } else if (variant >= 2) {  // v2, v5; v3, v4 with more than 2^21 ids, v6 to v8 with 64-bit keys (v8 also
                              // without cooperative launch): v2's segments
    const int pos_bits = bits_for(n);
    if (pos_bits + bits_for(V) <= 32) {
      seg.pos_bits = pos_bits;
      seg.key_bits = 32;
      segments_v2<uint32_t>(ids, V, d, s, seg, /*wide_sort=*/variant == 5);
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
    if (seg.sorted_large.defined()) {  // v6, v7 (32-bit keys)
      accumulate_pdl<T, true>(seg, gp, wp, D, s, /*pdl=*/seg.variant == 6, dweight.device().index);
      return;
    }
    if (seg.variant == 8 && seg.key_bits == 32) {  // v2's accumulation, its launch overlapping the segments kernel
      accumulate_pdl<T, false>(seg, gp, wp, D, s, /*pdl=*/true, dweight.device().index);
      return;
    }
    if (seg.variant >= 2) {
      if (seg.variant == 4) {
        if (seg.key_bits == 32) accumulate_v2<T, uint32_t, 2>(seg, gp, wp, D, s);
        else accumulate_v2<T, uint64_t, 2>(seg, gp, wp, D, s);
      } else {
        if (seg.key_bits == 32) accumulate_v2<T, uint32_t, 1>(seg, gp, wp, D, s);
        else accumulate_v2<T, uint64_t, 1>(seg, gp, wp, D, s);
      }
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
