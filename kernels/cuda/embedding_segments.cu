// The cooperative segments of the CUDA embedding backward (kernels/cuda/embedding_bwd.h): the sorted keys and
// segment starts of the radix-sort path, built by one kernel.
#include <cooperative_groups.h>
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <mutex>

#include "kernels/cuda/embedding_common.cuh"

namespace natsl::kernels::cuda::embedding {
namespace {

// ---- shared by the cooperative segments kernel ----
// The workspace (int32) holds counts[V], then four words (done ticket, giant count, mid count, work ticket),
// then the list of long segments' ids (at most n / 33 of them: giants from the front, the others from the
// back). Data written by another block earlier in the same kernel is read through L2 (__ldcg).
constexpr int kScanPer = 16;  // counts a thread scans per round
constexpr int kLargeThreads = 512;
constexpr int kLargeKeys = 8192;          // shared-memory sort up to this length (32 KB of keys)
constexpr int kWindow = kLargeKeys * 32;  // the same 32 KB as a bitmap of positions
constexpr int kWsExtra = 4;               // the words after counts[V]
enum { kWsGiant = 1, kWsMid = 2, kWsWork = 3 };  // word 0 (a done ticket) is unused since the cooperative kernel

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

// ---- the radix-sort path's segments (sorted keys and starts) from one cooperative kernel ----
// Four steps as phases of one kernel whose blocks are all resident (cooperative launch), separated by grid
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
}  // namespace

bool segments_cooperative(const Tensor& ids, int64_t V, Device d, cudaStream_t s, EmbeddingBwdSegments& seg) {
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

}  // namespace natsl::kernels::cuda::embedding
