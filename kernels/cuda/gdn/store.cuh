#pragma once
// Tile stores of the GDN kernels that go through shared memory: the mma accumulator layout gives each thread
// pairs of adjacent columns (4-byte stores, 16 bytes per row per 4 lanes), so a 64-column tile is first written
// to a shared staging tile and then copied out row by row in 16-byte pieces (whole 32-byte sectors per store).
// And L2 prefetches: one bulk prefetch instruction per contiguous range.
#include "kernels/cuda/gdn/tile.cuh"

namespace natsl::kernels::cuda::gdn {

// Writes a 64x64 accumulator tile (after fn(row, col, v)) to g (row pitch gld elements, a multiple of
// 16 / sizeof(D); g 16-byte aligned), rows < rows_valid only, through the shared tile `stage`. Every thread of
// the CTA (nthr of them) must call it; it synchronises before and after using `stage`.
template <class D, class Fn>
__device__ __forceinline__ void acc_to_global_staged(const Acc& a, const Frag& f, D* stage, D* g, int64_t gld,
                                                     int rows_valid, int nthr, Fn fn) {
  constexpr int per_row = kC * int(sizeof(D)) / 16;
  constexpr int epp = 16 / int(sizeof(D));  // elements per 16-byte piece
  __syncthreads();
  acc_to_tile<D>(a, f, stage, fn);
  __syncthreads();
  for (int idx = threadIdx.x; idx < kC * per_row; idx += nthr) {
    const int r = idx / per_row, pc = idx % per_row;
    if (r < rows_valid)
      *reinterpret_cast<uint4*>(g + r * gld + pc * epp) = *reinterpret_cast<const uint4*>(stage + r * kLd<D> + pc * epp);
  }
  __syncthreads();
}
template <class D>
__device__ __forceinline__ void acc_to_global_staged(const Acc& a, const Frag& f, D* stage, D* g, int64_t gld,
                                                     int rows_valid, int nthr) {
  acc_to_global_staged<D>(a, f, stage, g, gld, rows_valid, nthr, [](int, int, float v) { return v; });
}

// Copies the first COLS columns of a shared 64-row tile to g (row pitch gld) in 16-byte pieces, negated
// (sign bits flipped: exact) when negate.
template <class D, int COLS, int NTHR>
__device__ __forceinline__ void tile_store_n(const D* s, D* g, int64_t gld, bool negate) {
  constexpr int epp = 16 / int(sizeof(D)), per_row = COLS / epp;
  const uint32_t flip = negate ? (sizeof(D) == 2 ? 0x80008000u : 0x80000000u) : 0u;
  for (int idx = threadIdx.x; idx < kC * per_row; idx += NTHR) {
    const int r = idx / per_row, pc = idx % per_row;
    uint4 v = *reinterpret_cast<const uint4*>(s + r * kLd<D> + pc * epp);
    v.x ^= flip;
    v.y ^= flip;
    v.z ^= flip;
    v.w ^= flip;
    *reinterpret_cast<uint4*>(g + r * gld + pc * epp) = v;
  }
}

// Step 1 of the state passes: the KT accumulators of a K x VW state (tile kt: rows 64 kt ..) into the padded tiles
// S, and with STORE also to the chunk's state in p.*out (row pitch p.V, at (tile_id p.K + 64 kt) p.V + c0): from
// the registers, or when p.staged from the tiles after sync() in 16-byte pieces. NTH threads run it; it calls
// sync() once, after the tiles are written. (p.*out is read where it is used, as the passes did before.)
template <class D, int KT, int VW, int NTH, bool STORE, class P, class Sync>
__device__ __forceinline__ void state_to_tiles(const P& p, D* P::*out, const Acc (&acc)[KT], const Frag& f, D* S,
                                               int64_t tile_id, int c0, Sync sync) {
  constexpr int TE = kC * kLd<D>;
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
    acc_to_tile<D>(acc[kt], f, S + kt * TE);
    if constexpr (STORE)
      if (!p.staged) acc_to_global<D>(acc[kt], f, p.*out + (tile_id * p.K + kt * kC) * p.V + c0, p.V, kC);
  }
  sync();
  if constexpr (STORE)
    if (p.staged) {
#pragma unroll
      for (int kt = 0; kt < KT; ++kt)
        tile_store_n<D, VW, NTH>(S + kt * TE, p.*out + (tile_id * p.K + kt * kC) * p.V + c0, p.V, false);
    }
}

// Asks L2 to fetch bytes [p, p + bytes) (p 16-byte aligned, bytes a multiple of 16); no completion to wait for.
__device__ __forceinline__ void prefetch_l2(const void* p, int bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
#else
  for (int o = 0; o < bytes; o += 128)
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(static_cast<const char*>(p) + o));
#endif
}

// L2 prefetch of row t of a chunk's K (and with Q its Q) tokens (row0: its first token), where t < len.
template <bool Q, class P>
__device__ __forceinline__ void prefetch_qk_row(const P& p, int t, int row0, int len, int64_t qk_ld, int h) {
  if (t < len) {
    const int64_t off = int64_t(row0 + t) * qk_ld + int64_t(h) * p.K;
    prefetch_l2(p.k + off, p.K * int(sizeof(*p.k)));
    if constexpr (Q) prefetch_l2(p.q + off, p.K * int(sizeof(*p.q)));
  }
}

}  // namespace natsl::kernels::cuda::gdn
