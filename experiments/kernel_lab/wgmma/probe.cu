// Does natsl drive Hopper's warpgroup MMA (wgmma) correctly? A self-checking probe of every fact a wgmma
// kernel rests on, before the first real one (a FlashAttention-3-style attention: S = Q K^T with both operands
// from shared memory, B K-major; O += P V with P from registers, B = V N-major; GEMMs with fused epilogues,
// which read the accumulator fragment in registers). Nobody in the project has used wgmma yet: the facts
// below come from the PTX ISA and CUTLASS (cute/arch/mma_sm90_desc.hpp, cute/atom/mma_traits_sm90_gmma.hpp)
// and are checked here on the GPU, not trusted.
//
// One CTA of one warpgroup (128 threads) computes C[64 x N] = A[64 x 64] * B[64 x N] (bf16 in, f32
// accumulate, four k-steps of 16) for N = 64, 128, 256, with
//   A   from shared memory (descriptor, "ss") or from registers ("rs"), always K-major (row-major A);
//   B   K-major ("bK": B^T row-major, as K in Q K^T) or N-major ("bN": B row-major, as V in P V);
//   the shared-memory arrangement of both operands, each with its own descriptor fields:
//     nosw-kfast   no swizzle; 8 x 16-byte core matrices (128 contiguous bytes), the core matrices along K
//                  adjacent: LBO (stride between core matrices along K) = 128, SBO (along M/N) = 1024
//     nosw-mnfast  no swizzle; core matrices along M/N adjacent: SBO = 128, LBO = (M or N)/8 * 128
//     sw128        128-byte swizzle, as TMA's CU_TENSOR_MAP_SWIZZLE_128B writes a box 64 bf16 wide: 128-byte
//                  rows, the 16-byte chunk c of row r stored at chunk c ^ (r % 8), tiles 1024-byte aligned
//                  (descriptor base_offset 0). K-major: SBO = 1024 (8 rows), LBO unused; a k-step moves the
//                  start address 32 bytes inside the swizzled row. N-major: rows are k, SBO = 1024 (8 k-rows),
//                  LBO = 8192 (the next 64-column block, stored after all 64 k-rows of this one); a k-step
//                  moves the start 2048 bytes.
// Descriptor: bits 0-13 start address >> 4, 16-29 LBO >> 4, 32-45 SBO >> 4, 49-51 base offset, 62-63
// swizzle (0 none, 1 128B, 2 64B, 3 32B). Accumulator fragment (m64nNk16, f32): thread t = 32 w + l holds
// d[4j + i], j < N/8, at row 16 w + l/4 (+8 for i = 2, 3), column 8 j + 2 (l%4) (+1 for i = 1, 3). A fragment
// from registers (one k-step): a[0] = A[r][c, c+1], a[1] = A[r+8][c, c+1], a[2] = A[r][c+8, c+9],
// a[3] = A[r+8][c+8, c+9], r = 16 w + l/4, c = 2 (l%4), the lower column in the low 16 bits.
// The accumulators start as NaN and the first k-step has scale-d = 0, so a scale-d that fails to discard
// them shows as NaN.
//
// Prints "wgmma <variant>: max err X, ok|WRONG" for each of the 36 variants (X = max |C - ref| / max |ref|;
// an element is wrong when |C - ref| > 1e-5 * sum_k |A B|, ref in f64 from the same bf16 inputs), then, when
// something is wrong, "hint:" lines naming the fact that the pattern of failures points at (e.g. nosw-kfast
// right and nosw-mnfast wrong: LBO and SBO are swapped; ss right and rs wrong: the A register fragment;
// sw128 bN right at N = 64 and wrong at 128/256: the N-major swizzled LBO).
//
// Then the facts the GDN chunk-gradient lab (experiments/kernel_lab/gdn_chunk_bwd_wgmma/bwd.cu) rests on beyond
// those, its products laid out as it lays them out (see "the GDN chunk-gradient lab's products" below): the shape
// m64n32k16 (wgmma_ss N = 32); a warpgroup's 32-row (K-major, start + 4096 bytes) or 32-column (N-major, start +
// 512 bytes) slice of a B tile, two warpgroups on one 64 x 64 result; A^T by imm-trans-a = 1 on the M-major
// descriptor of A's tile (the lab's imm builds); one tile as both A and B; two issues into one accumulator and a
// second accumulator in one commit group; accumulating onto loaded f32 values (scale-d = 1 on every k-step);
// cp.async staging with zero-filled rows, published by fence.proxy.async; production's GDN accumulator fragment
// (gdn/tile.cuh's Frag). Each of the 8 cases prints "wgmma lab <case>: max err X, PASS|FAIL: <fact>" (the same
// error measure, the tolerance counting |C0| too), on FAIL with its wrong elements per warpgroup's columns and a
// hint. Written 2026-12-07 without a GPU to run them. The last line: "wgmma probe: W of 36 variants wrong, F of 8
// lab facts failed: all ok|FAILED". Exit 1 on any WRONG or FAIL, a CUDA error, or no GPU.
// No timing. The kernels wait on nothing but wgmma.wait_group and cp.async.wait_group (no spin loop); every CUDA
// call is checked, and an alarm ends the process after 60 s in any case.
//
// Build: the CMake target natsl_lab_wgmma (CUDA_ARCHITECTURES 90a; wgmma exists only on sm_90a), run
// build-gpu/experiments/kernel_lab/natsl_lab_wgmma on an H100/H200. By hand, from the repository root:
//   nvcc -std=c++20 -O2 -arch=sm_90a -I. -o probe experiments/kernel_lab/wgmma/probe.cu
// The helpers it checks (namespace wg, the NATSL_SM90A guard) are production's kernels/cuda/wgmma.cuh (every
// variant passed on an H100, 2026-12-07); run the probe again after any change to them.
#include <csignal>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>

#include <unistd.h>

#include "kernels/cuda/ptx_sm90.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace ptx = natsl::kernels::cuda::ptx;
namespace wg = natsl::kernels::cuda::wg;

constexpr int kM = 64, kK = 64, kThreads = 128;

// How an operand sits in shared memory (see the header). mn: its M or N extent; K is always kK.
enum class Arr : int { kNoSwKFast, kNoSwMnFast, kSw128 };
const char* arr_name(Arr a) {
  return a == Arr::kNoSwKFast ? "nosw-kfast" : a == Arr::kNoSwMnFast ? "nosw-mnfast" : "sw128";
}
struct Operand {
  Arr arr;
  bool mn_major;  // false: K contiguous (A, B^T rows); true: M/N contiguous (B rows)
  int mn;
};
// The byte offset of element (i along M/N, k) inside the operand's tile.
__host__ __device__ uint32_t byte_offset(Operand o, int i, int k) {
  if (!o.mn_major) {  // core matrix: 8 rows along M/N x 8 k (16 bytes)
    const uint32_t in_core = uint32_t(i % 8) * 16 + uint32_t(k % 8) * 2;
    switch (o.arr) {
      case Arr::kNoSwKFast: return uint32_t(i / 8) * (kK / 8) * 128 + uint32_t(k / 8) * 128 + in_core;
      case Arr::kNoSwMnFast: return uint32_t(k / 8) * uint32_t(o.mn / 8) * 128 + uint32_t(i / 8) * 128 + in_core;
      case Arr::kSw128: return uint32_t(i) * 128 + uint32_t((k / 8) ^ (i % 8)) * 16 + uint32_t(k % 8) * 2;
    }
  } else {  // core matrix: 8 rows along k x 8 along M/N (16 bytes)
    const uint32_t in_core = uint32_t(k % 8) * 16 + uint32_t(i % 8) * 2;
    switch (o.arr) {
      case Arr::kNoSwKFast: return uint32_t(i / 8) * (kK / 8) * 128 + uint32_t(k / 8) * 128 + in_core;
      case Arr::kNoSwMnFast: return uint32_t(k / 8) * uint32_t(o.mn / 8) * 128 + uint32_t(i / 8) * 128 + in_core;
      case Arr::kSw128:
        return uint32_t(i / 64) * (kK * 128) + uint32_t(k) * 128 + uint32_t(((i % 64) / 8) ^ (k % 8)) * 16 +
               uint32_t(i % 8) * 2;
    }
  }
  return 0;
}
// The descriptor fields of that arrangement, and how far a 16-wide k-step moves the start address.
struct DescFields {
  uint32_t lbo, sbo, kstep;
  wg::Swizzle sw;
};
__host__ __device__ DescFields desc_fields(Operand o) {
  switch (o.arr) {
    case Arr::kNoSwKFast: return {128, (kK / 8) * 128, 2 * 128, wg::Swizzle::kNone};
    case Arr::kNoSwMnFast: {
      const uint32_t lbo = uint32_t(o.mn / 8) * 128;
      return {lbo, 128, 2 * lbo, wg::Swizzle::kNone};
    }
    case Arr::kSw128:
      // K-major: LBO is unused with a swizzle (16 = field value 1, as CUTLASS sets it).
      return o.mn_major ? DescFields{kK * 128, 1024, 16 * 128, wg::Swizzle::k128B}
                        : DescFields{16, 1024, 32, wg::Swizzle::k128B};
  }
  return {0, 0, 0, wg::Swizzle::kNone};
}

constexpr uint32_t smem_bytes(int n) { return uint32_t(kM * kK * 2 + n * kK * 2 + 1024); }  // + alignment slack

// C[64 x N] (row-major, f32) = A[64 x 64] (row-major) * B, B as [N][64] (kBMn false) or [64][N] (kBMn true);
// all bf16 given as raw bits. kARegs: A from registers instead of shared memory.
template <int N, bool kARegs, bool kBMn>
__global__ void __launch_bounds__(kThreads) wgmma_gemm(const uint16_t* A, const uint16_t* B, float* C, Arr arr) {
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = ptx::smem_addr(smem_raw);
  uint8_t* const sa = smem_raw + ((1024u - (raw & 1023u)) & 1023u);  // 1024-byte aligned (base_offset 0)
  uint8_t* const sb = sa + kM * kK * 2;                              // 8 KiB further: aligned too
  const Operand oa{arr, false, kM}, ob{arr, kBMn, N};
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  if constexpr (!kARegs)
    for (int e = tid; e < kM * kK; e += kThreads)
      *reinterpret_cast<uint16_t*>(sa + byte_offset(oa, e / kK, e % kK)) = A[e];
  for (int e = tid; e < N * kK; e += kThreads) {
    const int n = kBMn ? e % N : e / kK, k = kBMn ? e / N : e % kK;
    *reinterpret_cast<uint16_t*>(sb + byte_offset(ob, n, k)) = B[e];
  }
  // Generic-proxy stores, async-proxy (wgmma) reads: fence, then make every thread's stores visible.
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();

  const int r = 16 * warp + lane / 4, c = 2 * (lane % 4);
  uint32_t a[kK / 16][4] = {};
  if constexpr (kARegs) {
#pragma unroll
    for (int s = 0; s < kK / 16; ++s) {
      const uint16_t* p = A + r * kK + 16 * s + c;
      a[s][0] = *reinterpret_cast<const uint32_t*>(p);
      a[s][1] = *reinterpret_cast<const uint32_t*>(p + 8 * kK);
      a[s][2] = *reinterpret_cast<const uint32_t*>(p + 8);
      a[s][3] = *reinterpret_cast<const uint32_t*>(p + 8 * kK + 8);
    }
  }
  float d[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) d[i] = __int_as_float(0x7fc00000);  // NaN: scale-d = 0 must discard it

  const DescFields fa = desc_fields(oa), fb = desc_fields(ob);
  const uint32_t a0 = ptx::smem_addr(sa), b0 = ptx::smem_addr(sb);
  wg::fence_regs(d);
  wg::fence();
#pragma unroll
  for (int s = 0; s < kK / 16; ++s) {
    const uint64_t db = wg::smem_desc(b0 + s * fb.kstep, fb.lbo, fb.sbo, fb.sw);
    if constexpr (kARegs) {
      wg::wgmma_rs<N, kBMn ? 1 : 0>(d, a[s], db, s > 0);
    } else {
      const uint64_t da = wg::smem_desc(a0 + s * fa.kstep, fa.lbo, fa.sbo, fa.sw);
      wg::wgmma_ss<N, 0, kBMn ? 1 : 0>(d, da, db, s > 0);
    }
  }
  wg::commit_group();
  wg::wait_group<0>();
  wg::fence_regs(d);

#pragma unroll
  for (int j = 0; j < N / 8; ++j) {
    float* row0 = C + r * N + 8 * j + c;
    float* row8 = row0 + 8 * N;
    row0[0] = d[4 * j + 0];
    row0[1] = d[4 * j + 1];
    row8[0] = d[4 * j + 2];
    row8[1] = d[4 * j + 3];
  }
}

// ---- the GDN chunk-gradient lab's products (experiments/kernel_lab/gdn_chunk_bwd_wgmma/bwd.cu) ----
// Laid out as that lab lays them out (its mma_issue, load_cm, publish): one CTA of two warpgroups (256 threads)
// computes a 64 x 64 result, warpgroup g its columns 32 g .. 32 g + 31 by 4 k-steps of wgmma.m64n32k16 with A and B
// from shared memory. Operands are 64 x 64 bf16 tiles in the lab's core-matrix layout: element (r, c) of the
// row-major source at byte (r / 8) 1024 + (c / 8) 128 + (r % 8) 16 + (c % 8) 2 (8 KiB), filled by cp.async in
// 16-byte pieces (rows >= valid zero-filled, over a NaN poison) and published by fence.proxy.async + barrier. One
// tile serves both majors; the descriptors (no swizzle):
//   K-major  (tile rows = the operand's M / N index): start + row0 * 128 + ks * 256, LBO 128, SBO 1024; B's slice
//            for warpgroup g is row0 = 32 g (start + 4096 g)
//   MN-major (tile rows = the k index): start + ks * 2048 + col0 * 16, LBO 1024, SBO 128; B's slice col0 = 32 g
//            (start + 512 g, imm-trans-b = 1); A with col0 = 0 and imm-trans-a = 1 is op(A) = tile^T
// The accumulators start from a random f32 C0 (the lab zeroes them or loads an f32 tile, then accumulates: scale-d
// = 1 on every k-step) and are read and written through production's GDN fragment (gdn/tile.cuh's Frag, warp w of
// 8): d[4 nt + e] at row 16 (w % 4) + l / 4 + 8 (e / 2), column 32 (w / 4) + 8 nt + 2 (l % 4) + e % 2.
constexpr int kLabThreads = 256, kLabTile = 64 * 64 * 2;  // threads; bytes of one tile

__host__ __device__ constexpr uint32_t lab_cm_byte(int r, int c) {
  return uint32_t(r / 8) * 1024 + uint32_t(c / 8) * 128 + uint32_t(r % 8) * 16 + uint32_t(c % 8) * 2;
}
__device__ __forceinline__ uint64_t lab_desc_kmajor(uint32_t tile, int ks, int row0) {
  return wg::smem_desc(tile + uint32_t(row0) * 128u + uint32_t(ks) * 256u, 128, 1024, wg::Swizzle::kNone);
}
__device__ __forceinline__ uint64_t lab_desc_mnmajor(uint32_t tile, int ks, int col0) {
  return wg::smem_desc(tile + uint32_t(ks) * 2048u + uint32_t(col0) * 16u, 1024, 128, wg::Swizzle::kNone);
}
// d += op(A) op(B) over k = 0..63, this warpgroup's 32 columns: op(A) = A^T (TA) by imm-trans-a on the MN-major
// descriptor; op(B) = B^T (TB) by B's rows as the N index (K-major), else B's rows as k (N-major).
template <bool TA, bool TB>
__device__ __forceinline__ void lab_issue(float (&d)[16], uint32_t a, uint32_t b) {
  const int n0 = 32 * int(threadIdx.x >> 7);
  wg::fence_regs(d);
  wg::fence();
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    const uint64_t da = TA ? lab_desc_mnmajor(a, ks, 0) : lab_desc_kmajor(a, ks, 0);
    const uint64_t db = TB ? lab_desc_kmajor(b, ks, n0) : lab_desc_mnmajor(b, ks, n0);
    wg::wgmma_ss<32, TA ? 1 : 0, TB ? 0 : 1>(d, da, db, true);
  }
}
// A row-major 64 x 64 bf16 source into the core-matrix tile by cp.async, consecutive threads on the 8 rows of one
// core matrix (the lab's load_cm at 256 threads); rows >= valid are zero-filled and read nothing.
__device__ __forceinline__ void lab_load(uint8_t* tile, const uint16_t* g, int valid) {
  for (int idx = int(threadIdx.x); idx < 64 * 8; idx += kLabThreads) {
    const int r = 8 * (idx >> 6) + (idx & 7), p = (idx >> 3) & 7;
    const bool ok = r < valid;
    ptx::cp_async16(ptx::smem_addr(tile + lab_cm_byte(r, 8 * p)), ok ? g + r * 64 + 8 * p : g, ok);
  }
}

struct LabArgs {
  const uint16_t *xa, *xb;  // row-major 64 x 64 bf16 bits
  const float* c0;          // row-major 64 x 64
  float *c, *e;             // row-major 64 x 64 results (e: kGroup only)
  int valid;                // rows of xa and xb read; the rest zero-filled
  int b_is_a;               // B's descriptors on A's tile (the lab's K K^T): xb unused
};
// Without kGroup: C = C0 + op(A) op(B). With kGroup (the lab's phase C, dk += dB K + dB^T K, and its batched
// products): in one commit group and one wait, C = C0 + A op(B) + A^T op(B) (two issues into one accumulator,
// imm-trans-a 0 then 1, TA = false) and E = A op'(B) (a second accumulator from 0, op' the other B arrangement).
template <bool TA, bool TB, bool kGroup>
__global__ void __launch_bounds__(kLabThreads, 1) lab_gemm(LabArgs p) {
  extern __shared__ __align__(128) uint8_t lab_smem[];
  uint8_t* const ta = lab_smem;
  uint8_t* const tb = lab_smem + kLabTile;
  const int tid = threadIdx.x;
  for (int i = tid; i < 2 * kLabTile / 4; i += kLabThreads) reinterpret_cast<uint32_t*>(lab_smem)[i] = 0xFFFFFFFFu;
  __syncthreads();  // the NaN poison before the copies (a missing zero fill shows as NaN)
  lab_load(ta, p.xa, p.valid);
  if (!p.b_is_a) lab_load(tb, p.xb, p.valid);
  ptx::cp_async_commit();
  ptx::cp_async_wait<0>();
  wg::fence_proxy_async_smem();  // the lab's publish()
  __syncthreads();

  const int w = tid >> 5, l = tid & 31, r0 = 16 * (w & 3) + (l >> 2), cb = 32 * (w >> 2) + 2 * (l & 3);
  float d[16], e[16];
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      d[4 * nt + q] = p.c0[(r0 + 8 * (q >> 1)) * 64 + cb + 8 * nt + (q & 1)];
      e[4 * nt + q] = 0.f;
    }
  const uint32_t a = ptx::smem_addr(ta), b = p.b_is_a ? a : ptx::smem_addr(tb);
  lab_issue<TA, TB>(d, a, b);
  if constexpr (kGroup) {
    lab_issue<!TA, TB>(d, a, b);
    lab_issue<false, !TB>(e, a, b);
  }
  wg::commit_group();
  wg::wait_group<0>();
  wg::fence_regs(d);
  wg::fence_regs(e);
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int at = (r0 + 8 * (q >> 1)) * 64 + cb + 8 * nt + (q & 1);
      p.c[at] = d[4 * nt + q];
      if constexpr (kGroup) p.e[at] = e[4 * nt + q];
    }
}

// ---- host ----

namespace {

const char* g_variant = "setup";

void check(cudaError_t e, const char* what, int line) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "wgmma probe: CUDA error in %s (line %d, variant %s): %s\n", what, line, g_variant,
               cudaGetErrorString(e));
  std::exit(1);
}
#define CK(x) check((x), #x, __LINE__)

void on_alarm(int) {
  const char msg[] = "wgmma probe: still running after 60 s: a kernel hangs; FAILED\n";
  (void)!write(2, msg, sizeof(msg) - 1);
  _exit(1);
}

uint16_t to_bf16(float f) {  // round to nearest even (inputs are finite)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
float from_bf16(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct Lcg {
  uint64_t s;
  float next() {  // uniform in [-1, 1)
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return float(int64_t(s >> 40) - (int64_t(1) << 23)) / float(1 << 23);
  }
};

struct Result {
  int n;
  bool a_regs, b_mn;
  Arr arr;
  bool ok, nonfinite;
};

template <int N, bool kARegs, bool kBMn>
Result run_variant(Arr arr, const std::vector<uint16_t>& ha, const std::vector<uint16_t>& hbt, const uint16_t* dA,
                   uint16_t* dB, float* dC) {
  const std::string name = std::string("m64n") + std::to_string(N) + "k16 " + (kARegs ? "rs" : "ss") +
                           (kBMn ? " bN " : " bK ") + arr_name(arr);
  g_variant = name.c_str();
  // B as the variant reads it: [N][K] (K-major) or [K][N] (N-major); hbt is B^T, [N][K].
  std::vector<uint16_t> hb(size_t(N) * kK);
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < kK; ++k) hb[kBMn ? size_t(k) * N + n : size_t(n) * kK + k] = hbt[size_t(n) * kK + k];
  CK(cudaMemcpy(dB, hb.data(), hb.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemset(dC, 0, size_t(kM) * N * 4));
  auto kernel = wgmma_gemm<N, kARegs, kBMn>;
  CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes(N))));
  kernel<<<1, kThreads, smem_bytes(N)>>>(dA, dB, dC, arr);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  std::vector<float> hc(size_t(kM) * N);
  CK(cudaMemcpy(hc.data(), dC, hc.size() * 4, cudaMemcpyDeviceToHost));

  double max_err = 0, max_ref = 0;
  int wrong = 0, first_m = -1, first_n = -1;
  double first_got = 0, first_want = 0;
  bool nonfinite = false;
  for (int m = 0; m < kM; ++m)
    for (int n = 0; n < N; ++n) {
      double ref = 0, scale = 0;
      for (int k = 0; k < kK; ++k) {
        const double p = double(from_bf16(ha[size_t(m) * kK + k])) * double(from_bf16(hbt[size_t(n) * kK + k]));
        ref += p;
        scale += std::fabs(p);
      }
      const double got = hc[size_t(m) * N + n], err = std::fabs(got - ref);
      max_ref = std::fmax(max_ref, std::fabs(ref));
      if (!std::isfinite(got)) nonfinite = true;
      if (!(err <= 1e-5 * scale + 1e-30)) {
        if (wrong++ == 0) first_m = m, first_n = n, first_got = got, first_want = ref;
        max_err = std::isfinite(err) ? std::fmax(max_err, err) : INFINITY;
      } else {
        max_err = std::fmax(max_err, err);
      }
    }
  const bool ok = wrong == 0;
  std::printf("wgmma %s: max err %.3g, %s\n", name.c_str(), max_ref > 0 ? max_err / max_ref : max_err,
              ok ? "ok" : "WRONG");
  if (!ok) {
    const DescFields fa = desc_fields(Operand{arr, false, kM}), fb = desc_fields(Operand{arr, kBMn, N});
    std::printf("  %d of %d elements wrong%s; first C[%d][%d] = %g, want %g; desc A lbo %u sbo %u kstep %u, "
                "B lbo %u sbo %u kstep %u, swizzle %u\n",
                wrong, kM * N, nonfinite ? " (some NaN/Inf)" : "", first_m, first_n, first_got, first_want,
                kARegs ? 0u : fa.lbo, kARegs ? 0u : fa.sbo, kARegs ? 0u : fa.kstep, fb.lbo, fb.sbo, fb.kstep,
                static_cast<uint32_t>(fb.sw));
  }
  return {N, kARegs, kBMn, arr, ok, nonfinite};
}

template <int N>
void run_n(std::vector<Result>& res, const std::vector<uint16_t>& ha, const std::vector<uint16_t>& hbt,
           const uint16_t* dA, uint16_t* dB, float* dC) {
  for (Arr arr : {Arr::kNoSwKFast, Arr::kNoSwMnFast, Arr::kSw128}) {
    res.push_back(run_variant<N, false, false>(arr, ha, hbt, dA, dB, dC));
    res.push_back(run_variant<N, false, true>(arr, ha, hbt, dA, dB, dC));
    res.push_back(run_variant<N, true, false>(arr, ha, hbt, dA, dB, dC));
    res.push_back(run_variant<N, true, true>(arr, ha, hbt, dA, dB, dC));
  }
}

// Whether every result matching the filter passed (-1: any).
bool all_ok(const std::vector<Result>& res, int n, int a_regs, int b_mn, int arr) {
  for (const Result& r : res)
    if ((n < 0 || r.n == n) && (a_regs < 0 || r.a_regs == bool(a_regs)) && (b_mn < 0 || r.b_mn == bool(b_mn)) &&
        (arr < 0 || int(r.arr) == arr) && !r.ok)
      return false;
  return true;
}
bool all_wrong(const std::vector<Result>& res, int n, int a_regs, int b_mn, int arr) {
  for (const Result& r : res)
    if ((n < 0 || r.n == n) && (a_regs < 0 || r.a_regs == bool(a_regs)) && (b_mn < 0 || r.b_mn == bool(b_mn)) &&
        (arr < 0 || int(r.arr) == arr) && r.ok)
      return false;
  return true;
}

void hints(const std::vector<Result>& res) {
  const int kf = int(Arr::kNoSwKFast), mf = int(Arr::kNoSwMnFast), sw = int(Arr::kSw128);
  auto hint = [](const char* s) { std::printf("hint: %s\n", s); };
  for (const Result& r : res)
    if (r.nonfinite) {
      hint("NaN/Inf in C: scale-d = 0 on the first k-step did not discard the NaN-filled accumulators (the "
           "setp/predicate operand), or a descriptor pointed outside the tile");
      break;
    }
  if (all_wrong(res, -1, -1, -1, -1)) {
    hint("every variant is wrong: the accumulator fragment mapping (d[4j+i] at row 16w + l/4 (+8 for i >= 2), "
         "column 8j + 2(l%4) (+1 for odd i)), the instruction form, or the staging (fence.proxy.async before "
         "__syncthreads); compare the first wrong element with the reference");
    return;
  }
  if (all_ok(res, -1, 0, -1, -1) && all_wrong(res, -1, 1, -1, -1))
    hint("ss right, rs wrong: the A register fragment (a0 = A[r][c,c+1], a1 = A[r+8][c,c+1], a2 = A[r][c+8,c+9], "
         "a3 = A[r+8][c+8,c+9], r = 16w + l/4, c = 2(l%4), lower column in the low half) or its operand order");
  if (all_wrong(res, -1, 0, -1, -1) && all_ok(res, -1, 1, -1, -1))
    hint("rs right, ss wrong: the A descriptor (imm-trans-a = 0 for K-major A) or A's staging");
  for (int arr : {kf, mf, sw})
    if (all_ok(res, -1, -1, 0, arr) && all_wrong(res, -1, -1, 1, arr))
      std::printf("hint: %s: B K-major right, N-major wrong: imm-trans-b (1 = N-major) or the N-major core matrix "
                  "(8 k-rows of 16 bytes along N)%s\n",
                  arr_name(Arr(arr)), arr == sw ? "; swizzled N-major: SBO = 1024 between 8-k-row groups, +2048 "
                                                  "bytes a k-step" : "");
  if (all_ok(res, -1, -1, -1, kf) != all_ok(res, -1, -1, -1, mf))
    hint("one no-swizzle arrangement right, the other wrong: the failing one's staging or its LBO / SBO values "
         "(no swizzle: LBO = stride between core matrices along K, SBO = along M/N; a plain swap of the two "
         "fields would break both)");
  if (!all_ok(res, -1, -1, -1, kf) && !all_ok(res, -1, -1, -1, mf) && all_ok(res, -1, -1, -1, sw))
    hint("every no-swizzle variant wrong, sw128 right: the no-swizzle core matrix (8 rows of 16 contiguous bytes, "
         "128 bytes in all), LBO / SBO swapped, or the swizzle field value 0");
  if (all_ok(res, -1, -1, 0, kf) && all_ok(res, -1, -1, 0, mf) && !all_ok(res, -1, -1, 0, sw))
    hint("no-swizzle K-major right, sw128 K-major wrong: the 128B swizzle (16-byte chunk c of row r at c ^ (r%8)), "
         "the 1024-byte tile alignment (base_offset 0), SBO = 1024, the swizzle field value 1, or moving the start "
         "address by 32 bytes per k-step inside a swizzled row");
  if (all_ok(res, 64, -1, 1, sw) && !all_ok(res, -1, -1, 1, sw))
    hint("sw128 N-major right at N = 64, wrong at N > 64: LBO of a swizzled N-major operand is the stride between "
         "64-column blocks (8192 bytes here), or the fields are the other way round");
  if (all_ok(res, 64, -1, -1, -1) && all_wrong(res, 128, -1, -1, -1) && all_wrong(res, 256, -1, -1, -1))
    hint("N = 64 right, N > 64 wrong everywhere: the accumulator register order for larger N (d[4j..4j+3] covers "
         "columns 8j..8j+7) or the m64n128/m64n256 operand lists");
}

// One of the lab's facts: the kernel that checks it and what it computes.
struct LabCase {
  const char* name;  // short: shape, A and B arrangement
  const char* fact;  // what a PASS establishes
  void (*kernel)(LabArgs);
  bool ta, tb, group, b_is_a;
  int valid;
  const char* hint;  // where to look on FAIL
};

// Runs one lab case on xa, xb (row-major 64 x 64 bf16 bits) and c0, against an f64 product of the same inputs;
// an element is wrong when |got - ref| > 1e-5 (sum_k |a b| + |c0|). Prints one PASS / FAIL line naming the fact.
bool run_lab(const LabCase& lc, const std::vector<uint16_t>& xa, const std::vector<uint16_t>& xb,
             const std::vector<float>& c0, const uint16_t* dxa, const uint16_t* dxb, const float* dc0, float* dc,
             float* de) {
  const std::string name = std::string("lab ") + lc.name;
  g_variant = name.c_str();
  CK(cudaMemset(dc, 0xFF, size_t(64) * 64 * 4));  // NaN: an element not written shows
  CK(cudaMemset(de, 0xFF, size_t(64) * 64 * 4));
  const LabArgs args{dxa, dxb, dc0, dc, de, lc.valid, lc.b_is_a ? 1 : 0};
  lc.kernel<<<1, kLabThreads, 2 * kLabTile>>>(args);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  std::vector<float> hc(size_t(64) * 64), he(size_t(64) * 64);
  CK(cudaMemcpy(hc.data(), dc, hc.size() * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(he.data(), de, he.size() * 4, cudaMemcpyDeviceToHost));

  // The operands as the lab's tiles hold them: rows >= valid of both sources are zeros.
  const std::vector<uint16_t>& xbs = lc.b_is_a ? xa : xb;
  auto va = [&](int r, int c) { return r < lc.valid ? double(from_bf16(xa[size_t(r) * 64 + c])) : 0.0; };
  auto vb = [&](int r, int c) { return r < lc.valid ? double(from_bf16(xbs[size_t(r) * 64 + c])) : 0.0; };
  auto opb = [&](bool tb, int k, int n) { return tb ? vb(n, k) : vb(k, n); };
  double max_err = 0, max_ref = 0;
  int wrong[2][2] = {}, first = -1;  // [C or E][column half: warpgroup 0 or 1]
  double first_got = 0, first_want = 0;
  bool nonfinite = false;
  for (int out = 0; out < (lc.group ? 2 : 1); ++out)
    for (int m = 0; m < 64; ++m)
      for (int n = 0; n < 64; ++n) {
        double ref = out == 0 ? double(c0[size_t(m) * 64 + n]) : 0.0, scale = std::fabs(ref);
        for (int k = 0; k < 64; ++k) {
          double prods[2];
          int np = 0;
          if (out == 1) {
            prods[np++] = va(m, k) * opb(!lc.tb, k, n);
          } else {
            prods[np++] = (lc.ta ? va(k, m) : va(m, k)) * opb(lc.tb, k, n);
            if (lc.group) prods[np++] = (lc.ta ? va(m, k) : va(k, m)) * opb(lc.tb, k, n);
          }
          for (int i = 0; i < np; ++i) {
            ref += prods[i];
            scale += std::fabs(prods[i]);
          }
        }
        const double got = (out == 0 ? hc : he)[size_t(m) * 64 + n], err = std::fabs(got - ref);
        max_ref = std::fmax(max_ref, std::fabs(ref));
        if (!std::isfinite(got)) nonfinite = true;
        if (!(err <= 1e-5 * scale + 1e-30)) {
          if (first < 0) first = out * 4096 + m * 64 + n, first_got = got, first_want = ref;
          ++wrong[out][n / 32];
          max_err = std::isfinite(err) ? std::fmax(max_err, err) : INFINITY;
        } else {
          max_err = std::fmax(max_err, err);
        }
      }
  const bool ok = first < 0;
  std::printf("wgmma %s: max err %.3g, %s: %s\n", name.c_str(), max_ref > 0 ? max_err / max_ref : max_err,
              ok ? "PASS" : "FAIL", lc.fact);
  if (!ok) {
    std::printf("  wrong elements: %scolumns 0-31 (warpgroup 0) %d, 32-63 (warpgroup 1) %d", lc.group ? "C " : "",
                wrong[0][0], wrong[0][1]);
    if (lc.group) std::printf("; E columns 0-31 %d, 32-63 %d", wrong[1][0], wrong[1][1]);
    std::printf("%s; first %s[%d][%d] = %g, want %g\n  hint: %s\n", nonfinite ? " (some NaN/Inf)" : "",
                first >= 4096 ? "E" : "C", (first % 4096) / 64, first % 64, first_got, first_want, lc.hint);
  }
  return ok;
}

// The facts bwd.cu rests on that the 36 variants above do not cover (its mma_issue<TA, TB> at N = 32 on its
// core-matrix tiles, two warpgroups): returns how many failed; total: how many ran.
int run_lab_cases(int& total) {
  const LabCase cases[] = {
      {"m64n32k16 aK bK-slice", "m64n32k16 (wgmma_ss N = 32), A K-major, B K-major 32-row slice at start + 4096 B "
       "per warpgroup (LBO 128, SBO 1024): C0 + A B^T (the lab's mma_issue<false, true>)",
       lab_gemm<false, true, false>, false, true, false, false, 64,
       "warpgroup 1 alone wrong: the K-major slice offset (+4096 B = 32 rows of the core-matrix tile); both wrong: "
       "the m64n32k16 operand list / fragment (d[4j+i], j < 4) or the accumulate-onto-C0 path (scale-d = 1)"},
      {"m64n32k16 aK bN-slice", "m64n32k16, A K-major, B N-major 32-column slice at start + 512 B per warpgroup "
       "(LBO 1024, SBO 128, imm-trans-b = 1): C0 + A B (the lab's mma_issue<false, false>)",
       lab_gemm<false, false, false>, false, false, false, false, 64,
       "warpgroup 1 alone wrong: the N-major slice offset (+512 B = 4 core matrices along N at SBO 128); both wrong "
       "and the K-major slice right: LBO / SBO of the N-major tile at N = 32"},
      {"m64n32k16 aT(imm) bN-slice", "imm-trans-a = 1: A^T from the A tile's M-major descriptor (LBO 1024, SBO 128), "
       "B N-major slice: C0 + A^T B (the lab's imm build, mma_issue<true, false>: T^T dv2, dS^T Q, T^T dW, dB^T K)",
       lab_gemm<true, false, false>, true, false, false, false, 64,
       "the transposed A: imm-trans-a (the first 'n' operand after scale-b), or the M-major A's LBO (along K, 1024) "
       "/ SBO (along M, 128); the lab's copies build (A^T by a transposed copy, K-major) does not use it"},
      {"m64n32k16 aT(imm) bK-slice", "imm-trans-a = 1 with a K-major B slice: C0 + A^T B^T (mma_issue<true, true>; "
       "not issued by the lab, completes the trans-a x trans-b grid)",
       lab_gemm<true, true, false>, true, true, false, false, 64,
       "as the aT(imm) bN-slice case; if only this one fails, imm-trans-a = 1 with imm-trans-b = 0"},
      {"m64n32k16 aK bK same tile", "A and B from one tile (B's descriptor on A's tile, the slice +4096 B): C0 + "
       "K K^T (the lab's kk)",
       lab_gemm<false, true, false>, false, true, false, true, 64,
       "aK bK-slice right and this wrong: the staging of a tile read by two descriptors at once"},
      {"m64n32k16 group", "one commit group, one wait: C = C0 + A B + A^T B (two issues into one accumulator, "
       "imm-trans-a 0 then 1, a wgmma.fence between) and E = A B^T (a second accumulator from 0): the lab's phase C "
       "dk += dB K + dB^T K and its batched products",
       lab_gemm<false, false, true>, false, false, true, false, 64,
       "the single-product cases right and this wrong: the accumulator chaining across issues (the register "
       "constraints of wgmma_ss, fence_regs) or wait_group 0 covering every chain of the group"},
      {"m64n32k16 aK bK-slice partial", "rows >= 37 of A and B zero-filled by cp.async (src-size 0, over NaN) in "
       "the core-matrix tile: C0 + A B^T on a partial chunk (the lab's load_cm rows_valid)",
       lab_gemm<false, true, false>, false, true, false, false, 37,
       "full-tile case right and this wrong: cp.async's zero fill (NaN in C: the poison was read), or the order "
       "cp.async.wait_group 0 -> fence.proxy.async -> barrier"},
      {"m64n32k16 aT(imm) bN-slice partial", "rows >= 37 zero-filled, A^T by imm-trans-a, B N-major slice: the "
       "zero-filled rows are k indices here (C0 + A^T B on a partial chunk)",
       lab_gemm<true, false, false>, true, false, false, false, 37,
       "full-tile case right and this wrong: cp.async's zero fill or its visibility to the async proxy"},
  };
  Lcg rng{0x1ab2026ull};
  std::vector<uint16_t> xa(size_t(64) * 64), xb(size_t(64) * 64);
  std::vector<float> c0(size_t(64) * 64);
  for (auto& v : xa) v = to_bf16(rng.next());
  for (auto& v : xb) v = to_bf16(rng.next());
  for (auto& v : c0) v = rng.next();
  uint16_t *dxa = nullptr, *dxb = nullptr;
  float *dc0 = nullptr, *dc = nullptr, *de = nullptr;
  CK(cudaMalloc(&dxa, xa.size() * 2));
  CK(cudaMalloc(&dxb, xb.size() * 2));
  CK(cudaMalloc(&dc0, c0.size() * 4));
  CK(cudaMalloc(&dc, c0.size() * 4));
  CK(cudaMalloc(&de, c0.size() * 4));
  CK(cudaMemcpy(dxa, xa.data(), xa.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dxb, xb.data(), xb.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dc0, c0.data(), c0.size() * 4, cudaMemcpyHostToDevice));
  int failed = 0;
  for (const LabCase& lc : cases) failed += !run_lab(lc, xa, xb, c0, dxa, dxb, dc0, dc, de);
  g_variant = "lab teardown";
  CK(cudaFree(dxa));
  CK(cudaFree(dxb));
  CK(cudaFree(dc0));
  CK(cudaFree(dc));
  CK(cudaFree(de));
  total = int(std::size(cases));
  return failed;
}

}  // namespace

int main() {
  std::signal(SIGALRM, on_alarm);
  alarm(60);
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    std::fprintf(stderr, "wgmma probe: no CUDA device; it needs an sm_90 GPU (H100/H200): nothing checked\n");
    return 1;
  }
  int dev = 0;
  CK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, dev));
  if (prop.major != 9 || prop.minor != 0) {
    std::fprintf(stderr, "wgmma probe: needs an sm_90 GPU (H100/H200) for its sm_90a code; this is %s (sm_%d%d)\n",
                 prop.name, prop.major, prop.minor);
    return 1;
  }
  Lcg rng{0x5eed2026ull};
  std::vector<uint16_t> ha(size_t(kM) * kK), hbt(size_t(256) * kK);  // A [64][64]; B^T [256][64]
  for (auto& v : ha) v = to_bf16(rng.next());
  for (auto& v : hbt) v = to_bf16(rng.next());
  uint16_t *dA = nullptr, *dB = nullptr;
  float* dC = nullptr;
  CK(cudaMalloc(&dA, ha.size() * 2));
  CK(cudaMalloc(&dB, hbt.size() * 2));
  CK(cudaMalloc(&dC, size_t(kM) * 256 * 4));
  CK(cudaMemcpy(dA, ha.data(), ha.size() * 2, cudaMemcpyHostToDevice));

  std::vector<Result> res;
  run_n<64>(res, ha, hbt, dA, dB, dC);
  run_n<128>(res, ha, hbt, dA, dB, dC);
  run_n<256>(res, ha, hbt, dA, dB, dC);
  g_variant = "teardown";
  CK(cudaFree(dA));
  CK(cudaFree(dB));
  CK(cudaFree(dC));

  int wrong = 0;
  for (const Result& r : res) wrong += !r.ok;
  if (wrong) hints(res);
  int lab_total = 0;
  const int lab_failed = run_lab_cases(lab_total);
  std::printf("wgmma probe: %d of %zu variants wrong, %d of %d lab facts failed: %s\n", wrong, res.size(), lab_failed,
              lab_total, wrong || lab_failed ? "FAILED" : "all ok");
  return wrong || lab_failed ? 1 : 0;
}
