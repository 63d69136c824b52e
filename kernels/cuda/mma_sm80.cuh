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

namespace natsl::kernels::cuda::mma {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; with valid = false the destination is zero-filled and nothing is read.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
// 4-byte variant (for per-row scalars whose rows are not contiguous).
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a * b (bf16 x bf16 -> f32).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

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

}  // namespace natsl::kernels::cuda::mma
