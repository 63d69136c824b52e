#pragma once
// Hopper warpgroup MMA (wgmma, sm_90a): shared-memory matrix descriptors, the fence / commit / wait
// instructions, and m64nNk16 bf16 -> f32 MMAs with A from shared memory (wgmma_ss) or registers (wgmma_rs).
// The facts they rest on (descriptor fields, accumulator and A-register fragment layouts, the shared-memory
// arrangements nosw-kfast / nosw-mnfast / sw128) are checked on the GPU by the kernel lab's probe
// (experiments/kernel_lab/wgmma/probe.cu: 36 of 36 variants right on an H100, 2026-12-07). Users: the
// chunk-selected attention forward (sparse_attention_fwd_wgmma.sm90a.cu), the probe and the kernel labs
// (attention_wgmma_bwd, gdn_chunk_bwd_wgmma).
//
#include <cstdint>

// wgmma exists only on the arch-specific target sm_90a. A translation unit compiled for plain sm_90 (natsl's own
// are) has no wgmma: there each wrapped instruction becomes a trap, so including this header never breaks such a
// build; the files that use it are built for sm_90a (*.sm90a.cu: CMakeLists.txt's natsl_sm90a objects, and the lab).
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define NATSL_SM90A(...) __trap()
#else
#define NATSL_SM90A(...) __VA_ARGS__
#endif

namespace natsl::kernels::cuda::wg {

// The swizzle field (bits 62-63) of a shared-memory matrix descriptor.
enum class Swizzle : uint32_t { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };

// A wgmma shared-memory matrix descriptor: start (shared-memory byte address, 16-byte aligned; a swizzled tile
// 1024-byte aligned, since base_offset is 0), LBO and SBO in bytes (multiples of 16, below 256 KiB).
__host__ __device__ constexpr uint64_t smem_desc(uint32_t start, uint32_t lbo, uint32_t sbo, Swizzle sw) {
  return uint64_t((start >> 4) & 0x3FFFu) | uint64_t((lbo >> 4) & 0x3FFFu) << 16 |
         uint64_t((sbo >> 4) & 0x3FFFu) << 32 | uint64_t(static_cast<uint32_t>(sw)) << 62;
}

// Orders this thread's earlier register and shared-memory accesses before the wgmma that follow (needed
// before the first wgmma and whenever its accumulator or A registers were written by other instructions).
__device__ __forceinline__ void fence() { NATSL_SM90A(asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory")); }
// Closes a group of the wgmma issued so far.
__device__ __forceinline__ void commit_group() {
  NATSL_SM90A(asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"));
}
// Waits until at most N groups are pending.
template <int N>
__device__ __forceinline__ void wait_group() {
  static_assert(N >= 0 && N <= 7, "wgmma.wait_group: N in [0, 7]");
  NATSL_SM90A(asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"));
}
// Keeps the compiler from moving reads or writes of the accumulators across the wgmma issue / wait (they are
// written asynchronously; the compiler knows nothing of it).
template <int R>
__device__ __forceinline__ void fence_regs(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// The same for registers of the A fragment (wgmma_rs reads them asynchronously too: they must not be
// rewritten before the wgmma that reads them has been waited for).
template <int R>
__device__ __forceinline__ void fence_regs(uint32_t (&a)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+r"(a[i])::"memory");
}

// Makes this thread's generic-proxy writes to shared memory (st.shared, and cp.async once waited for) visible
// to the async proxy (wgmma operand reads, TMA); a CTA barrier then publishes them to the other threads.
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

#define WG_ACC8(i)                                                                                              \
  "+f"(d[(i) + 0]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3]), "+f"(d[(i) + 4]), "+f"(d[(i) + 5]), \
      "+f"(d[(i) + 6]), "+f"(d[(i) + 7])

// d[N/2] (this thread's accumulators) = A * B (+ d when accumulate); A and B from shared memory through
// descriptors. kTransA/kTransB: 0 = K-major, 1 = M-/N-major (the imm-trans operands). N = 32 (the same fragment
// layout, j < 4; not in the probe's list) is the GDN chunk-gradient lab's half-tile product.
template <int N, int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  static_assert(N == 32 || N == 64 || N == 128 || N == 256, "wgmma_ss: N is 32, 64, 128 or 256 here");
  static_assert((kTransA == 0 || kTransA == 1) && (kTransB == 0 || kTransB == 1), "wgmma_ss: trans is 0 or 1");
  if constexpr (N == 32) {
    NATSL_SM90A(asm volatile(
        "{ .reg .pred p; setp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
        "}, "
        "%16, %17, p, 1, 1, %19, %20; }\n"
        : WG_ACC8(0), WG_ACC8(8)
        : "l"(desc_a), "l"(desc_b), "r"(uint32_t(accumulate)), "n"(kTransA), "n"(kTransB)));
  } else if constexpr (N == 64) {
    NATSL_SM90A(asm volatile(
        "{ .reg .pred p; setp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, "
        "%32, %33, p, 1, 1, %35, %36; }\n"
        : WG_ACC8(0), WG_ACC8(8), WG_ACC8(16), WG_ACC8(24)
        : "l"(desc_a), "l"(desc_b), "r"(uint32_t(accumulate)), "n"(kTransA), "n"(kTransB)));
  } else if constexpr (N == 128) {
    NATSL_SM90A(asm volatile(
        "{ .reg .pred p; setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, "
        "%64, %65, p, 1, 1, %67, %68; }\n"
        : WG_ACC8(0), WG_ACC8(8), WG_ACC8(16), WG_ACC8(24), WG_ACC8(32), WG_ACC8(40), WG_ACC8(48), WG_ACC8(56)
        : "l"(desc_a), "l"(desc_b), "r"(uint32_t(accumulate)), "n"(kTransA), "n"(kTransB)));
  } else if constexpr (N == 256) {
    NATSL_SM90A(asm volatile(
        "{ .reg .pred p; setp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, "
        "%128, %129, p, 1, 1, %131, %132; }\n"
        : WG_ACC8(0), WG_ACC8(8), WG_ACC8(16), WG_ACC8(24), WG_ACC8(32), WG_ACC8(40), WG_ACC8(48), WG_ACC8(56),
          WG_ACC8(64), WG_ACC8(72), WG_ACC8(80), WG_ACC8(88), WG_ACC8(96), WG_ACC8(104), WG_ACC8(112), WG_ACC8(120)
        : "l"(desc_a), "l"(desc_b), "r"(uint32_t(accumulate)), "n"(kTransA), "n"(kTransB)));
  }
}

// The same with A from registers: a[4] is this thread's A fragment of one 64 x 16 k-step (see the header).
template <int N, int kTransB>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, bool accumulate) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma_rs: N is 64, 128 or 256 here");
  static_assert(kTransB == 0 || kTransB == 1, "wgmma_rs: trans is 0 or 1");
  if constexpr (N == 64) {
    NATSL_SM90A(asm volatile(
        "{ .reg .pred p; setp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, %38; }\n"
        : WG_ACC8(0), WG_ACC8(8), WG_ACC8(16), WG_ACC8(24)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(uint32_t(accumulate)), "n"(kTransB)));
  } else if constexpr (N == 128) {
    NATSL_SM90A(asm volatile(
        "{ .reg .pred p; setp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, "
        "{%64, %65, %66, %67}, %68, p, 1, 1, %70; }\n"
        : WG_ACC8(0), WG_ACC8(8), WG_ACC8(16), WG_ACC8(24), WG_ACC8(32), WG_ACC8(40), WG_ACC8(48), WG_ACC8(56)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(uint32_t(accumulate)), "n"(kTransB)));
  } else if constexpr (N == 256) {
    NATSL_SM90A(asm volatile(
        "{ .reg .pred p; setp.ne.b32 p, %133, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, "
        "{%128, %129, %130, %131}, %132, p, 1, 1, %134; }\n"
        : WG_ACC8(0), WG_ACC8(8), WG_ACC8(16), WG_ACC8(24), WG_ACC8(32), WG_ACC8(40), WG_ACC8(48), WG_ACC8(56),
          WG_ACC8(64), WG_ACC8(72), WG_ACC8(80), WG_ACC8(88), WG_ACC8(96), WG_ACC8(104), WG_ACC8(112), WG_ACC8(120)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(uint32_t(accumulate)), "n"(kTransB)));
  }
}
#undef WG_ACC8

}  // namespace natsl::kernels::cuda::wg
