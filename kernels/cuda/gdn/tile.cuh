#pragma once
// Building blocks of the chunked Gated DeltaNet kernels (gdn_*.cu): 64x64 tiles in shared memory, a CTA of
// 8 warps multiplying two of them into f32 accumulators, asynchronous tile loads, and the chunk / sequence
// tables that map a CTA to its tokens.
//
// Every matrix in the chunked algorithm is handled as 64x64 tiles (chunk = 64, K and V multiples of 64), so
// one product routine serves all of them:
//   acc += op(A) op(B),  op(X) = X or X^T of a row-major 64x64 tile in shared memory.
// bf16 tiles use tensor cores (ldmatrix [.trans] + mma.sync m16n8k16, f32 accumulation); f32 tiles use plain
// f32 FMAs (the f32 path exists for exact checks, not speed) with the same accumulator layout, so every
// epilogue is shared. Accumulator layout: warp w owns rows 16*(w%4) .. +15 and columns 32*(w/4) .. +31;
// acc[nt][e] sits at row 16*(w%4) + lane/4 + 8*(e/2), column 32*(w/4) + 8*nt + 2*(lane%4) + (e%2).
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "core/dtype.h"
#include "kernels/chunk.h"
#include "kernels/cuda/ptx_sm80.cuh"

namespace natsl::kernels::cuda::gdn {

constexpr int kC = kChunk;     // chunk length = tile edge
static_assert(kC == 64, "the GDN tiles (8 warps of 16 rows x 32 columns of 64x64 tiles) assume 64-token chunks");
constexpr int kThreads = 256;  // 8 warps per CTA

// Row pitch of a shared tile in elements: 16-byte aligned rows, padded so ldmatrix rows fall in distinct banks.
template <class E> constexpr int kLd = std::is_same_v<E, float> ? 68 : 72;
template <class E> constexpr int kTileBytes = kC * kLd<E> * int(sizeof(E));

// ---- conversions ----
__device__ __forceinline__ float f32(float v) { return v; }
__device__ __forceinline__ float f32(bf16 v) { return __uint_as_float(uint32_t(v.bits) << 16); }
template <class E> __device__ __forceinline__ E cvt(float v) {
  if constexpr (std::is_same_v<E, float>) return v;
  else return bf16(v);
}
// Stores two adjacent elements (column c and c+1, c even).
template <class E> __device__ __forceinline__ void store2(E* p, float a, float b) {
  if constexpr (std::is_same_v<E, float>) {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
  } else {
    *reinterpret_cast<uint32_t*>(p) = bf16::round_bits2(a, b);
  }
}
template <class E> __device__ __forceinline__ float2 load2(const E* p) {
  if constexpr (std::is_same_v<E, float>) {
    return *reinterpret_cast<const float2*>(p);
  } else {
    uint32_t u = *reinterpret_cast<const uint32_t*>(p);
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
  }
}

// ---- accumulator geometry ----
using Acc = float[4][4];
struct Frag {
  int r0, c0;  // row of e = 0, column of nt = 0, e = 0
  __device__ __forceinline__ Frag() {
    const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    r0 = 16 * (w & 3) + (l >> 2);
    c0 = 32 * (w >> 2) + 2 * (l & 3);
  }
  __device__ __forceinline__ int row(int e) const { return r0 + 8 * (e >> 1); }
  __device__ __forceinline__ int col(int nt, int e) const { return c0 + 8 * nt + (e & 1); }
};
__device__ __forceinline__ void zero(Acc& a) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) a[i][e] = 0.f;
}
__device__ __forceinline__ void scale_rows(Acc& a, const Frag& f, const float* s) {
  const float lo = s[f.row(0)], hi = s[f.row(2)];
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    a[nt][0] *= lo; a[nt][1] *= lo; a[nt][2] *= hi; a[nt][3] *= hi;
  }
}
// a *= s, every element.
__device__ __forceinline__ void scale_acc(Acc& a, float s) {
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) a[nt][e] *= s;
}
// a = diag(scale e) a with e_i = exp(g_i), rows i >= len zeroed (the q h_n and dO h_n^T terms).
__device__ __forceinline__ void scale_rows_exp(Acc& a, const Frag& f, const float* g, int len, float scale) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int i = f.row(2 * hh);
    const float sc = i < len ? scale * __expf(g[i]) : 0.f;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      a[nt][2 * hh] *= sc;
      a[nt][2 * hh + 1] *= sc;
    }
  }
}
// Writes the accumulator into a shared tile, converting to E, each value passed through fn(row, col, v).
template <class E, class Fn>
__device__ __forceinline__ void acc_to_tile(const Acc& a, const Frag& f, E* t, Fn fn) {
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = f.row(2 * h), c = f.col(nt, 0);
      store2<E>(t + r * kLd<E> + c, fn(r, c, a[nt][2 * h]), fn(r, c + 1, a[nt][2 * h + 1]));
    }
}
template <class E>
__device__ __forceinline__ void acc_to_tile(const Acc& a, const Frag& f, E* t) {
  acc_to_tile<E>(a, f, t, [](int, int, float v) { return v; });
}
// Reads a shared tile into the accumulator layout.
template <class E>
__device__ __forceinline__ void tile_to_acc(const E* t, const Frag& f, Acc& a) {
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float2 v = load2<E>(t + f.row(2 * h) * kLd<E> + f.col(nt, 0));
      a[nt][2 * h] = v.x;
      a[nt][2 * h + 1] = v.y;
    }
}
// Stores the accumulator to global memory (row-major, pitch ld elements), rows < rows_valid only.
template <class D, class Fn>
__device__ __forceinline__ void acc_to_global(const Acc& a, const Frag& f, D* g, int64_t ld, int rows_valid, Fn fn) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = f.row(2 * h);
    if (r >= rows_valid) continue;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int c = f.col(nt, 0);
      store2<D>(g + r * ld + c, fn(r, c, a[nt][2 * h]), fn(r, c + 1, a[nt][2 * h + 1]));
    }
  }
}
template <class D>
__device__ __forceinline__ void acc_to_global(const Acc& a, const Frag& f, D* g, int64_t ld, int rows_valid) {
  acc_to_global<D>(a, f, g, ld, rows_valid, [](int, int, float v) { return v; });
}
// Row / column sums of accumulators, deterministic (no atomics). The 8 warps tile 64 x 64 as 4 row groups
// (w & 3) x 2 column groups (w >> 2) (Frag), so a row gets one partial sum per column group and a column one
// per row group. They go to separate kC-entry slots of a shared array: row sums to slot (w >> 2), column sums
// to slot kRowSlots + (w & 3). Every slot entry then has a single writer, the same warp on every call (its
// lanes ordered by __syncwarp), and sum_slots adds the slots up in a fixed order once every add is done.
// (Atomic adds from several warps into one entry would add in a run-dependent order: different bits.)
constexpr int kRowSlots = 2, kColSlots = 4;
constexpr int kRowColSlots = kRowSlots + kColSlots;  // an array that takes both row and column sums
// Adds the per-row sums of fn(row, col, v) to slots[w >> 2][row].
template <class Fn>
__device__ __forceinline__ void acc_row_sum_add(const Acc& a, const Frag& f, float* slots, Fn fn) {
  __syncwarp();
  float* const mine = slots + (threadIdx.x >> 7) * kC;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = f.row(2 * h);
    float s = 0.f;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) s += fn(r, f.col(nt, 0), a[nt][2 * h]) + fn(r, f.col(nt, 1), a[nt][2 * h + 1]);
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    s += __shfl_xor_sync(0xffffffffu, s, 2);
    if ((threadIdx.x & 3) == 0) mine[r] += s;
  }
}
// Adds the per-column sums of fn(row, col, v) to slots[kRowSlots + (w & 3)][col] (the array needs
// kRowColSlots slots).
template <class Fn>
__device__ __forceinline__ void acc_col_sum_add(const Acc& a, const Frag& f, float* slots, Fn fn) {
  __syncwarp();
  float* const mine = slots + (kRowSlots + ((threadIdx.x >> 5) & 3)) * kC;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      const int c = f.col(nt, b);
      float s = fn(f.row(0), c, a[nt][b]) + fn(f.row(2), c, a[nt][2 + b]);
      s += __shfl_xor_sync(0xffffffffu, s, 4);
      s += __shfl_xor_sync(0xffffffffu, s, 8);
      s += __shfl_xor_sync(0xffffffffu, s, 16);
      if ((threadIdx.x & 31) < 4) mine[c] += s;
    }
}
template <int N>
__device__ __forceinline__ void zero_slots(float* slots, int i) {
#pragma unroll
  for (int w = 0; w < N; ++w) slots[w * kC + i] = 0.f;
}
template <int N>
__device__ __forceinline__ float sum_slots(const float* slots, int i) {
  float s = 0.f;
#pragma unroll
  for (int w = 0; w < N; ++w) s += slots[w * kC + i];
  return s;
}

// A state tile of one (sequence, v head) into the accumulators: rows kt * 64 + .. of the f32 [K, V] matrix at
// src (already offset to its (sequence, head)), this CTA's columns c0 ..; zeros where src is null.
template <int KT>
__device__ __forceinline__ void load_state(Acc (&a)[KT], const Frag& f, const float* src, int V, int c0) {
#pragma unroll
  for (int kt = 0; kt < KT; ++kt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        a[kt][nt][e] = src ? src[int64_t(kt * kC + f.row(e)) * V + c0 + f.col(nt, e)] : 0.f;
}

// ---- tensor-core primitives (bf16; the PTX in ptx_sm80.cuh) ----
using ptx::mma_bf16;
using ptx::smem_addr;
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) { ptx::ldmatrix_x4(r, smem_addr(p)); }
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) { ptx::ldmatrix_x4_trans(r, smem_addr(p)); }

// Layouts of a 64x64 shared tile: off(r, c) = element offset of row r, column c (c a multiple of 8 where
// ldmatrix reads it).
// Padded: rows kLd<E> apart (what load_tile and acc_to_tile write).
template <class E> struct PaddedTile {
  static __device__ __forceinline__ int off(int r, int c) { return r * kLd<E> + c; }
};
// Swizzled: bf16 rows of 128 bytes, unpadded, the 16-byte piece j of row r stored at piece j ^ (r % 8): what the
// bulk tensor copy writes with CU_TENSOR_MAP_SWIZZLE_128B into a 1024-byte aligned tile. The 8 rows an ldmatrix
// reads at one logical column land in 8 different bank groups, as the padding does.
struct Swizzled128 {
  static __device__ __forceinline__ int off(int r, int c) { return r * 64 + ((((c >> 3) ^ r) & 7) << 3) + (c & 7); }
};
// Dense: rows of W elements, unpadded (a narrow tile that only load2 reads).
template <int W> struct DenseTile {
  static __device__ __forceinline__ int off(int r, int c) { return r * W + c; }
};

// acc += op(A) op(B) over one 64-deep reduction; A, B row-major 64x64 shared tiles of E in layouts LA, LB (bf16
// only for other than the padded layout).
template <bool TA, bool TB, class E, class LA = PaddedTile<E>, class LB = PaddedTile<E>>
__device__ __forceinline__ void tile_mma(Acc& acc, const E* A, const E* B) {
  const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
  const int rb = 16 * (w & 3), cb = 32 * (w >> 2);
  if constexpr (std::is_same_v<E, float>) {
    static_assert(std::is_same_v<LA, PaddedTile<E>> && std::is_same_v<LB, PaddedTile<E>>);
    constexpr int ld = kLd<E>;
    const Frag f;
#pragma unroll 4
    for (int k = 0; k < kC; ++k) {
      const float a0 = TA ? A[k * ld + f.r0] : A[f.r0 * ld + k];
      const float a1 = TA ? A[k * ld + f.r0 + 8] : A[(f.r0 + 8) * ld + k];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int c = f.c0 + 8 * nt;
        const float b0 = TB ? B[c * ld + k] : B[k * ld + c];
        const float b1 = TB ? B[(c + 1) * ld + k] : B[k * ld + c + 1];
        acc[nt][0] = fmaf(a0, b0, acc[nt][0]);
        acc[nt][1] = fmaf(a0, b1, acc[nt][1]);
        acc[nt][2] = fmaf(a1, b0, acc[nt][2]);
        acc[nt][3] = fmaf(a1, b1, acc[nt][3]);
      }
    }
  } else {
    const int i = l >> 3, r = l & 7;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t a[4];
      if constexpr (!TA) ldsm_x4(a, A + LA::off(rb + (l & 15), 16 * kk + 8 * (l >> 4)));
      else ldsm_x4_t(a, A + LA::off(16 * kk + r + 8 * (i >> 1), rb + 8 * (i & 1)));
#pragma unroll
      for (int np = 0; np < 2; ++np) {  // pairs of 8-column tiles
        const int nb = cb + 16 * np;
        uint32_t b[4];
        if constexpr (TB) ldsm_x4(b, B + LB::off(nb + r + 8 * (i >> 1), 16 * kk + 8 * (i & 1)));
        else ldsm_x4_t(b, B + LB::off(16 * kk + r + 8 * (i & 1), nb + 8 * (i >> 1)));
        mma_bf16(acc[2 * np], a, b[0], b[1]);
        mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
      }
    }
  }
}

// ---- asynchronous global -> shared tile copies ----
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  ptx::cp_async16(smem_addr(smem), gmem, valid);
}
using ptx::cp_async_commit;
using ptx::cp_async_wait;
// Queues the copy of a 64 x COLS tile (row pitch gld elements; rows >= rows_valid become zeros) by a CTA of
// NTHR threads.
template <class E, int COLS, int NTHR>
__device__ __forceinline__ void load_tile_n(E* s, const E* g, int64_t gld, int rows_valid) {
  constexpr int per_row = COLS * int(sizeof(E)) / 16;  // 16-byte pieces in a row
  for (int idx = threadIdx.x; idx < 64 * per_row; idx += NTHR) {
    const int r = idx / per_row, p = idx % per_row;
    const bool ok = r < rows_valid;
    cp_async16(s + r * kLd<E> + p * (16 / int(sizeof(E))), ok ? g + r * gld + p * (16 / int(sizeof(E))) : g, ok);
  }
}
template <class E>
__device__ __forceinline__ void load_tile(E* s, const E* g, int64_t gld, int rows_valid) {
  load_tile_n<E, 64, kThreads>(s, g, gld, rows_valid);
}
// Queues the copy of 64 floats (a chunk's per-row scalars stored contiguously).
__device__ __forceinline__ void load_row64(float* s, const float* g) {
  if (threadIdx.x < 16) cp_async16(s + 4 * threadIdx.x, g + 4 * threadIdx.x, true);
}

// ---- chunk and sequence tables (built on the device by gdn_tables_kernel) ----
struct ChunkInfo {
  int row0;  // first token row (b * T + offset within the batch row)
  int len;   // valid tokens, 1..64
  int seq;   // sequence index n
  int pad;
};
struct SeqInfo {
  int first_chunk, nchunks, row0, len;
};

// Inclusive prefix sum of g over the chunk's rows (rows >= len read as 0), by warp 0; writes gam[64].
__device__ __forceinline__ void chunk_cumsum(float* gam, const float* g, int64_t stride, int len) {
  if (threadIdx.x < 32) {
    const int l = threadIdx.x;
    float a = l < len ? g[l * stride] : 0.f;
    float b = l + 32 < len ? g[(l + 32) * stride] : 0.f;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      float x = __shfl_up_sync(0xffffffffu, a, o), y = __shfl_up_sync(0xffffffffu, b, o);
      if (l >= o) { a += x; b += y; }
    }
    b += __shfl_sync(0xffffffffu, a, 31);
    gam[l] = a;
    gam[l + 32] = b;
  }
}

}  // namespace natsl::kernels::cuda::gdn
