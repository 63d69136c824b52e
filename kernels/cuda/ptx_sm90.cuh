#pragma once
// The sm_90 PTX primitives: tensor copies (TMA), mbarriers (init, arrive with an expected byte count, parity wait), bulk copies
// global -> shared completing on an mbarrier, the named barriers of warp-specialised kernels and their register
// reallocation (setmaxnreg, sm_90a). Written once here; the GDN passes (gdn/state_fwd.cuh, gdn/tma.cuh) compose them. sm_80 primitives: ptx_sm80.cuh.
#include <cuda.h>

#include "kernels/cuda/ptx_sm80.cuh"

namespace natsl::kernels::cuda::ptx {

// Makes this thread's mbarrier initialisations visible to the other threads and to the async proxy (the tensor
// copies that complete on them); between the inits and the CTA barrier that publishes them.
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_init1(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait_parity(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done)
    asm volatile(
        "{ .reg .pred q; mbarrier.try_wait.parity.shared::cta.b64 q, [%1], %2; selp.u32 %0, 1, 0, q; }\n"
        : "=r"(done) : "r"(smem_addr(bar)), "r"(parity) : "memory");
}
__device__ __forceinline__ void mbar_init_count(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive1(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// The barrier among the NTH compute threads of a warp-specialised kernel (named barrier 1; the loading warp
// does not take part).
template <int NTH>
__device__ __forceinline__ void compute_sync() {
  asm volatile("bar.sync 1, %0;\n" ::"n"(NTH) : "memory");
}
// The same on named barrier `id` (1..15; 0 is __syncthreads'): one barrier per group of NTH threads, e.g. per
// consumer warpgroup of a kernel with several (ids distinct, every thread of the group calls it).
template <int NTH>
__device__ __forceinline__ void compute_sync(int id) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(NTH) : "memory");
}

// Register reallocation of a warp-specialised kernel (sm_90a; a plain sm_90 build traps here): the executing
// warpgroup's per-thread register limit rises to (inc; waits until the CTA's pool has them) or falls to (dec) N.
// All 4 warps of the warpgroup execute the same one; the kernel's register count at entry must be fixed by
// __launch_bounds__ (whole warpgroups: e.g. (384, 1) gives 168, so one loading warpgroup at 24 frees what two
// computing warpgroups at 240 take: 128 * 24 + 256 * 240 = 384 * 168).
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  static_assert(N >= 24 && N <= 256 && N % 8 == 0, "setmaxnreg: 24..256, a multiple of 8");
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();
#else
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  static_assert(N >= 24 && N <= 256 && N % 8 == 0, "setmaxnreg: 24..256, a multiple of 8");
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();
#else
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
__device__ __forceinline__ void bulk_g2s(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   smem_addr(dst)), "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}
// A 2-D tensor copy (TMA) of the box at (col, row) of `map` into shared memory, completing on bar.
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, int col, int row, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::
          "r"(smem_addr(dst)), "l"(reinterpret_cast<uint64_t>(map)), "r"(col), "r"(row), "r"(smem_addr(bar))
      : "memory");
}

// A 3-D tensor copy (TMA) of the box at (col, row, seq) of `map` into shared memory, completing on bar.
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, int col, int row, int seq,
                                            uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(col), "r"(row), "r"(seq), "r"(smem_addr(bar))
      : "memory");
}

}  // namespace natsl::kernels::cuda::ptx
