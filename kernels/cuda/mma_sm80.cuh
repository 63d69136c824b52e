#pragma once
// Warp-level tensor-core building blocks (sm_80 style, run on Hopper too): mma.sync m16n8k16 with bf16
// operands and f32 accumulators, ldmatrix from shared memory, cp.async 16-byte copies, and a swizzled
// shared-memory tile layout.
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4), PTX ISA "Matrix Fragments for mma.m16n8k16":
//   A 16x16 (row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B 16x8  (k x n):     b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g)
//   C 16x8  (f32):       c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
// So the C fragments of two adjacent n-tiles are, packed to bf16, exactly the A fragment of one k-step: the
// flash-attention trick that feeds P = softmax(S) to the next product without touching shared memory.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/ptx_sm80.cuh"

namespace natsl::kernels::cuda::mma {

using namespace ptx;

// 2^x on the special-function unit (2^-inf = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats as a bf16 pair, lo in the low half (the lower column index of a fragment).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// A [ROWS x D] bf16 tile in shared memory, rows of D / 8 16-byte chunks, chunk c of row r stored at chunk
// c ^ (r % 8). ldmatrix reads 8 rows at one logical chunk; the XOR spreads them over all 32 banks (rows are
// a multiple of 128 bytes, so without it all 8 would hit the same 4 banks).
template <int D>
struct Swizzled {
  static_assert(D % 64 == 0, "rows must be a multiple of 64 bf16 (8 chunks) for the XOR swizzle");
  static constexpr int kChunks = D / 8;
  __device__ __forceinline__ static uint32_t offset(int row, int chunk) {
    return uint32_t(row * (D * 2) + ((chunk ^ (row & 7)) << 4));
  }
};

// Copies rows [0, ROWS) of a global bf16 matrix (row stride `ld` elements) into a swizzled tile; rows at or
// past `valid_rows` are zero-filled. All NT threads of the block call it.
template <int ROWS, int D, int NT>
__device__ __forceinline__ void load_tile_async(uint32_t tile, const __nv_bfloat16* g, int64_t ld, int valid_rows) {
  constexpr int kChunks = D / 8;
  static_assert(ROWS * kChunks % NT == 0, "tile copy must split evenly over the threads");
#pragma unroll
  for (int it = 0; it < ROWS * kChunks / NT; ++it) {
    const int idx = it * NT + int(threadIdx.x), row = idx / kChunks, ch = idx % kChunks;
    const bool valid = row < valid_rows;
    const __nv_bfloat16* src = valid ? g + row * ld + ch * 8 : g;
    cp_async16(tile + Swizzled<D>::offset(row, ch), src, valid);
  }
}

// Writes rows [0, valid_rows) of a swizzled tile to global memory with 16-byte stores.
template <int ROWS, int D, int NT>
__device__ __forceinline__ void store_tile(const char* tile, __nv_bfloat16* g, int64_t ld, int valid_rows) {
  constexpr int kChunks = D / 8;
  static_assert(ROWS * kChunks % NT == 0, "tile copy must split evenly over the threads");
#pragma unroll
  for (int it = 0; it < ROWS * kChunks / NT; ++it) {
    const int idx = it * NT + int(threadIdx.x), row = idx / kChunks, ch = idx % kChunks;
    if (row < valid_rows)
      *reinterpret_cast<uint4*>(g + row * ld + ch * 8) =
          *reinterpret_cast<const uint4*>(tile + Swizzled<D>::offset(row, ch));
  }
}

// Stores a thread's C fragment pair (row, cols 2t..2t+1) as bf16 into a swizzled tile.
template <int D>
__device__ __forceinline__ void store_pair(char* tile, int row, int col, float lo, float hi) {
  *reinterpret_cast<uint32_t*>(tile + Swizzled<D>::offset(row, col >> 3) + (col & 7) * 2) = pack_bf16(lo, hi);
}

// Max / sum over the 4 lanes of a quad (the threads that hold one row of a C fragment): xor 1, then xor 2.
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Zeroes N f32 C fragments.
template <int N>
__device__ __forceinline__ void zero_frags(float (&c)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) c[n][e] = 0.f;
}

// acc (16 x 64, 8 n-tiles) += A B^T over D: A = rows a_row0 .. a_row0 + 15 of the swizzled tile a, B = the 64
// rows of the swizzled tile b (both D columns, k-steps of 16).
template <int D>
__device__ __forceinline__ void mma_abt_16x64(float (&acc)[8][4], uint32_t a, int a_row0, uint32_t b, int lane) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t af[4];
    ldmatrix_x4(af, a + Swizzled<D>::offset(a_row0 + (lane & 15), kk * 2 + (lane >> 4)));
#pragma unroll
    for (int jp = 0; jp < 4; ++jp) {
      uint32_t bf[4];
      ldmatrix_x4(bf, b + Swizzled<D>::offset(jp * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
      mma_bf16(acc[2 * jp], af, bf[0], bf[1]);
      mma_bf16(acc[2 * jp + 1], af, bf[2], bf[3]);
    }
  }
}

// f(j, e, col) for each column col = 8 j + 2 t + e (t = lane % 4) of a 16 x 64 product whose C fragments
// (8 n-tiles) this thread holds: the column's elements are c[j][e] (row g) and c[j][2 + e] (row g + 8).
template <class F>
__device__ __forceinline__ void for_each_frag_col(int t, F&& f) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) f(j, e, j * 8 + 2 * t + e);
}

// The A fragment of k-step kk (columns 16 kk .. 16 kk + 15) from the C fragments c of a 16 x 64 product, as bf16
// (the C-to-A identity in the header comment).
__device__ __forceinline__ void c_to_a(const float (&c)[8][4], int kk, uint32_t (&a)[4]) {
  a[0] = pack_bf16(c[2 * kk][0], c[2 * kk][1]);
  a[1] = pack_bf16(c[2 * kk][2], c[2 * kk][3]);
  a[2] = pack_bf16(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = pack_bf16(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// acc (16 x D) += A B for the A fragment a of k-step kk and rows 16 kk .. 16 kk + 15 of the swizzled tile b
// (D columns, read transposed).
template <int D>
__device__ __forceinline__ void mma_ab_kstep(float (&acc)[D / 8][4], const uint32_t (&a)[4], uint32_t b, int kk,
                                             int lane) {
#pragma unroll
  for (int jp = 0; jp < D / 16; ++jp) {
    uint32_t bt[4];
    ldmatrix_x4_trans(bt, b + Swizzled<D>::offset(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), jp * 2 + (lane >> 4)));
    mma_bf16(acc[2 * jp], a, bt[0], bt[1]);
    mma_bf16(acc[2 * jp + 1], a, bt[2], bt[3]);
  }
}

}  // namespace natsl::kernels::cuda::mma
