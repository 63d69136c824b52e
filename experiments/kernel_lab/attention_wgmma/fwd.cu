// Kernel lab: the first Hopper warpgroup-MMA (wgmma) forward of NAtS-L's chunk-selected causal attention
// (kernels/sparse_attention.h; production: the mma.sync kernel of kernels/cuda/sparse_attention_fwd.cu, about
// 2x cuDNN's time at full selection, experiments/results/bench/attention_notes.md). The same function for bf16,
// 64-token chunks, Dk = 64, Dv = 128 (the natsl-340m NAtS-L layer), with the selection index taken as
// production takes it (SparseAttentionIndex: chunks [B, Hr, NC] ascending, prefix [B, Hr, NC + 1]). Correctness
// first: version 1 (fwd_wgmma) has no warp specialisation and no TMA; version 2 (fwd_wgmma_tma) adds both.
// Nothing here has run on a GPU yet (written before the probe's first run).
//
// Design (one CTA per (query chunk qc, head a, batch b), blockIdx.x = slot * B Ha + b Ha + a with
// qc = NC - 1 - slot as production, heaviest chunks first; one warpgroup = 128 threads = 4 warps):
//   shared memory  Q [64 x 64] 8 KiB, K 2 x [64 x 64] 16 KiB, V 2 x [64 x 128] 32 KiB (56 KiB), all bf16
//                  in the probe's no-swizzle arrangements (wgmma/probe.cu, wgmma/wgmma.cuh):
//                  Q, K  K-major "nosw-kfast": 8 x 16-byte core matrices (8 rows x 8 dims, 128 contiguous
//                        bytes), the 8 core matrices of a row block along Dk adjacent; LBO 128, SBO 1024, a
//                        k-step of 16 dims moves the start 256 bytes;
//                  V     N-major (the Dv columns contiguous in memory, keys = the k dimension): "nosw-kfast"
//                        (core matrix 8 keys x 8 columns; along the keys adjacent: LBO 128, SBO 1024, k-step
//                        256) or, with --v-layout mnfast, "nosw-mnfast" (along the columns adjacent: SBO 128,
//                        LBO 2048, k-step 4096); both are run by default and both are valid layouts: one failing alone is a bug
//                        in its staging or its descriptor.
//   loads          cp.async 16-byte pieces (production's helper ptx::cp_async16; rows past T zero-filled),
//                  Q once, K/V of tile t+1 into the other buffer while tile t is computed (as production);
//                  after cp.async.wait_group each thread fences its writes into the async proxy
//                  (fence.proxy.async.shared::cta), then __syncthreads publishes them to the warpgroup.
//                  The thread -> piece map makes each warp's 16-byte shared stores 128-byte contiguous runs
//                  and its global reads 64-byte runs of 8 rows.
//   tiles          t = 0: the own chunk qc, causal (key column > query row -> -inf); t >= 1: chunk
//                  chunks[b, r, t - 1], r = a / G, for t < 1 + prefix[b, r, qc]; unmasked.
//   S = Q K^T      4 x wgmma.m64n64k16 (ss: both operands by descriptor, K K-major), scale-d 0 on the first
//                  k-step (no zeroing), commit, wait_group 0.
//   softmax        online, f32, in the log2 domain (z * scale * log2 e) as production: the accumulator
//                  fragment gives thread 32 w + l rows 16 w + l/4 (h = 0: s[4j + e]) and + 8 (h = 1:
//                  s[4j + 2 + e]), columns 8 j + 2 (l%4) + e; the row max and the (per-thread) row sum reduce
//                  over the quad (shfl xor 1, 2); O's fragment (same layout, j < 16) is rescaled in registers.
//   O += P V       P rounded to bf16 straight into the A-register fragment (k-step kk: a0 = (r, 16kk+2(l%4)..+1)
//                  = s[8kk..8kk+1], a1 = row r+8 = s[8kk+2..3], a2 = columns +8 = s[8kk+4..5], a3 = s[8kk+6..7]),
//                  4 x wgmma.m64n128k16 (rs, B = V N-major, imm-trans-b 1), commit, wait_group 0; then
//                  __syncthreads before the buffer is refilled.
//   epilogue       O / l as bf16 staged through shared memory (production's swizzled staging and 16-byte
//                  stores, kernels/cuda/mma_sm80.cuh), lse = ln 2 (m + log2 l) (f32) per valid row.
// Everything waits (wait_group 0) right after each product: no overlap of softmax and MMA inside a CTA yet
// (only between the CTAs of an SM: 168 registers, 56 KiB, so 3 CTAs an SM).
// Version 2 (fwd_wgmma_tma, below version 1): the same computation with K/V brought in by TMA from a producer
// warp through mbarrier stages, in the 128-byte swizzle (the probe's sw128), and optionally (OVERLAP) FA3's
// intra-warpgroup overlap of the softmax of tile t with the P V product of tile t - 1; see its comment. Next
// steps: two consumer warpgroups (pingpong), setmaxnreg for a producer warpgroup.
//
// main: random bf16 q, k, v (normal), B in {2, 8} (--B N for one), T 4096, 12 heads, 6 router heads (as the
// attention bench's NAtS-L shape), a random selection (each earlier chunk selected with probability 0.6 per
// (b, router head); the own chunk is always visited) and full selection. Production (kernels::
// sparse_attention_fwd, the dispatching entry, which takes the tensor-core path here) against the lab kernels
// (version 1 with V nosw-kfast, with V nosw-mnfast; version 2 TMA sw128, plain and overlapped):
// both outputs poisoned with NaN (0xFF bytes) first; o compared as max |lab - prod| / max |prod| <= 2e-2, lse
// as max |lab - prod| / max(1, |prod|) <= 1e-3, and no NaN left. Timing: bench::median_ms (L2 flushed before
// each call unless NATSL_BENCH_TIMING=sync), TFLOP/s of the FLOPs executed as the attention bench counts them
// (2 (Dk + Dv) per visible query-key pair), ratio lab / production. Exit 1 on any mismatch.
//   natsl_lab_attention_wgmma [--reps N] [--B N] [--v-layout kfast|mnfast|both|none] [--tma on|off]
// Needs an sm_90 GPU (the kernel is sm_90a code). By hand (object only; linking needs libnatsl):
//   nvcc -std=c++20 -O3 -arch=sm_90a --expt-relaxed-constexpr -DNATSL_WITH_CUDA=1 -I. -Xptxas -v
//        -c experiments/kernel_lab/attention_wgmma/fwd.cu
#include <algorithm>
#include <csignal>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <unistd.h>

#include "core/cuda_check.h"
#include "core/philox.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "experiments/bench/bench_timing.h"
#include "experiments/kernel_lab/wgmma/wgmma.cuh"
#include "kernels/cuda/gdn/tma.cuh"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/ptx_sm90.cuh"
#include "kernels/cuda/sparse_attention.cuh"
#include "kernels/sparse_attention.h"

using namespace natsl;
using namespace natsl::kernels;

namespace {

namespace sa = natsl::kernels::cuda::sparse_attn;
namespace mma = natsl::kernels::cuda::mma;
namespace ptx = natsl::kernels::cuda::ptx;
using bf = __nv_bfloat16;

constexpr int kC = 64, kDk = 64, kDv = 128, kThreads = 128;
constexpr int kQBytes = kC * kDk * 2, kKBytes = kC * kDk * 2, kVBytes = kC * kDv * 2;
constexpr int kSmem = kQBytes + 2 * (kKBytes + kVBytes);  // 57344
static_assert(kVBytes == kC * kDv * 2, "the epilogue stages O (64 x Dv bf16) in V buffer 0");

// How V (N-major) sits in shared memory: the probe's nosw-kfast or nosw-mnfast (see the header).
enum class VArr { kKFast, kMnFast };

// Byte offset of the 16-byte piece (row i, dims 8c .. 8c + 7) of a K-major 64 x Dk tile, nosw-kfast.
struct QkPiece {
  __device__ __forceinline__ uint32_t operator()(int i, int c) const {
    return uint32_t(i >> 3) * (kDk / 8) * 128 + uint32_t(c) * 128 + uint32_t(i & 7) * 16;
  }
};
// Byte offset of the 16-byte piece (key k, columns 8 nc .. 8 nc + 7) of the N-major 64 x Dv V tile.
template <VArr kV>
struct VPiece {
  __device__ __forceinline__ uint32_t operator()(int k, int nc) const {
    if constexpr (kV == VArr::kKFast)
      return uint32_t(nc) * (kC / 8) * 128 + uint32_t(k >> 3) * 128 + uint32_t(k & 7) * 16;
    else
      return uint32_t(k >> 3) * (kDv / 8) * 128 + uint32_t(nc) * 128 + uint32_t(k & 7) * 16;
  }
};
// The V descriptor's LBO, SBO and the start-address step of one 16-key k-step (the probe's desc_fields).
template <VArr kV>
struct VDesc {
  static constexpr uint32_t kLbo = kV == VArr::kKFast ? 128u : uint32_t(kDv / 8) * 128;
  static constexpr uint32_t kSbo = kV == VArr::kKFast ? uint32_t(kC / 8) * 128 : 128u;
  static constexpr uint32_t kStep = 2 * kLbo;
};
constexpr uint32_t kQkLbo = 128, kQkSbo = (kDk / 8) * 128, kQkStep = 2 * kQkLbo;

// Copies rows [0, 64) of a global bf16 matrix of D columns (row stride ld elements) into a shared tile as
// 16-byte cp.async pieces placed by piece(row, chunk); rows at or past `valid` are zero-filled. Thread map:
// idx -> row 8 (idx / D) + idx % 8, chunk (idx / 8) % (D / 8), so 8 consecutive threads fill 8 rows of one
// chunk (one core matrix: 128 contiguous bytes) and a warp reads 8 rows x 4 chunks (64-byte runs).
template <int D, class Piece>
__device__ __forceinline__ void load_rows(uint32_t dst, const bf* src, int64_t ld, int valid, Piece piece) {
  constexpr int kPieces = kC * D / 8;
  static_assert(kPieces % kThreads == 0, "the tile copy must split evenly over the threads");
#pragma unroll
  for (int it = 0; it < kPieces / kThreads; ++it) {
    const int idx = it * kThreads + int(threadIdx.x);
    const int row = (idx / D) * 8 + (idx & 7), ch = (idx >> 3) % (D / 8);
    const bool ok = row < valid;
    ptx::cp_async16(dst + piece(row, ch), ok ? src + row * ld + ch * 8 : src, ok);
  }
}

// The online softmax of one tile on this thread's accumulator fragment s (rows row_lo, row_lo + 8): s becomes
// P = 2^(z - m) (f32), row_max / row_sum are updated, corr[h] = 2^(m_old - m_new).
__device__ __forceinline__ void tile_softmax(float (&s)[kC / 2], bool diag, int row_lo, int tq, float sl2,
                                             float (&row_max)[2], float (&row_sum)[2], float (&corr)[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = row_lo + 8 * h;
    float mx = row_max[h];
#pragma unroll
    for (int j = 0; j < kC / 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float x = s[4 * j + 2 * h + e] * sl2;
        if (diag && 8 * j + 2 * tq + e > row) x = -INFINITY;  // causal, own chunk
        s[4 * j + 2 * h + e] = x;
        mx = fmaxf(mx, x);
      }
    mx = mma::quad_max(mx);
    corr[h] = mma::fast_exp2(row_max[h] - mx);
    row_max[h] = mx;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < kC / 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float pe = mma::fast_exp2(s[4 * j + 2 * h + e] - mx);
        s[4 * j + 2 * h + e] = pe;
        sum += pe;
      }
    row_sum[h] = row_sum[h] * corr[h] + sum;
  }
}
// P (f32 accumulator fragment) -> the bf16 A-register fragments of the 4 k-steps of P V.
__device__ __forceinline__ void pack_p(const float (&s)[kC / 2], uint32_t (&pa)[kC / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < kC / 16; ++kk) {
    pa[kk][0] = mma::pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
    pa[kk][1] = mma::pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
    pa[kk][2] = mma::pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
    pa[kk][3] = mma::pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
  }
}
__device__ __forceinline__ void rescale_o(float (&o_acc)[kDv / 2], const float (&corr)[2]) {
#pragma unroll
  for (int j = 0; j < kDv / 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) o_acc[4 * j + i] *= corr[i >> 1];
}
// The epilogue's first half: O / l (this thread's fragment) staged as bf16 into o_s for 16-byte stores, and the
// lse of each valid row (lse points at row 0 of the chunk, rows ld apart).
__device__ __forceinline__ void stage_o_and_lse(char* o_s, const float (&o_acc)[kDv / 2], const float (&row_sum)[2],
                                                const float (&row_max)[2], int row_lo, int tq, int q_rows,
                                                float* lse, int64_t ld) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float l = mma::quad_sum(row_sum[h]), inv = 1.f / l;
    const int row = row_lo + 8 * h;
#pragma unroll
    for (int j = 0; j < kDv / 8; ++j)
      mma::store_pair<kDv>(o_s, row, 8 * j + 2 * tq, o_acc[4 * j + 2 * h] * inv, o_acc[4 * j + 2 * h + 1] * inv);
    if (tq == 0 && row < q_rows) lse[row * ld] = (row_max[h] + __log2f(l)) * sa::kLn2;
  }
}
__device__ __forceinline__ void fence_pa(uint32_t (&pa)[kC / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < kC / 16; ++kk) wg::fence_regs(pa[kk]);
}

template <VArr kV>
__global__ void __launch_bounds__(kThreads) fwd_wgmma(const sa::Geometry g, const sa::FwdPtrs p) {
  extern __shared__ __align__(1024) char smem[];
  char* const q_s = smem;
  char* const k_s = smem + kQBytes;          // two buffers
  char* const v_s = k_s + 2 * kKBytes;       // two buffers
  const int per_chunk = g.Ha * g.B;
  const int qc = g.NC - 1 - int(blockIdx.x) / per_chunk;
  const auto [a, b, r, warp, lane, gq, tq, ldqk, ldv, head_qk, head_v] = sa::tc_place<kDk, kDv>(g, per_chunk);
  const bf* const q = static_cast<const bf*>(p.q) + head_qk;
  const bf* const k = static_cast<const bf*>(p.k) + head_qk;
  const bf* const v = static_cast<const bf*>(p.v) + head_v;
  const int32_t* const list = g.chunks + (int64_t(b) * g.Hr + r) * g.NC;
  const int n_tiles = 1 + g.prefix[(int64_t(b) * g.Hr + r) * (g.NC + 1) + qc];
  const int q_rows = min(kC, g.T - qc * kC);

  const uint32_t qb = ptx::smem_addr(q_s), kb0 = ptx::smem_addr(k_s), vb0 = ptx::smem_addr(v_s);
  auto load_kv = [&](int t, int buf) {
    const int c = t == 0 ? qc : list[t - 1];
    const int rows = min(kC, g.T - c * kC);
    load_rows<kDk>(kb0 + buf * kKBytes, k + int64_t(c) * kC * ldqk, ldqk, rows, QkPiece{});
    load_rows<kDv>(vb0 + buf * kVBytes, v + int64_t(c) * kC * ldv, ldv, rows, VPiece<kV>{});
  };
  load_rows<kDk>(qb, q + int64_t(qc) * kC * ldqk, ldqk, q_rows, QkPiece{});
  load_kv(0, 0);
  ptx::cp_async_commit();

  const float sl2 = g.scale * sa::kLog2e;
  const int row_lo = 16 * warp + gq;  // this thread's rows: row_lo (h = 0) and row_lo + 8 (h = 1)
  float o_acc[kDv / 2], s[kC / 2];
#pragma unroll
  for (int i = 0; i < kDv / 2; ++i) o_acc[i] = 0.f;
#pragma unroll
  for (int i = 0; i < kC / 2; ++i) s[i] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

  for (int t = 0; t < n_tiles; ++t) {
    if (t + 1 < n_tiles) {
      load_kv(t + 1, (t + 1) & 1);
      ptx::cp_async_commit();
      ptx::cp_async_wait<1>();
    } else {
      ptx::cp_async_wait<0>();
    }
    wg::fence_proxy_async_smem();  // this thread's cp.async writes -> visible to wgmma (async proxy)
    __syncthreads();
    const uint32_t kb = kb0 + (t & 1) * kKBytes, vb = vb0 + (t & 1) * kVBytes;

    // S = Q K^T (64 x 64), both from shared memory, K K-major.
    wg::fence_regs(s);
    wg::fence();
#pragma unroll
    for (int ks = 0; ks < kDk / 16; ++ks)
      wg::wgmma_ss<kC, 0, 0>(s, wg::smem_desc(qb + ks * kQkStep, kQkLbo, kQkSbo, wg::Swizzle::kNone),
                             wg::smem_desc(kb + ks * kQkStep, kQkLbo, kQkSbo, wg::Swizzle::kNone), ks > 0);
    wg::commit_group();
    wg::wait_group<0>();
    wg::fence_regs(s);

    // Online softmax per row (a row's 64 scores live on the 4 threads of a quad); the first tile's correction is
    // 2^-inf = 0 (row 0 sees key 0: its max is finite).
    float corr[2];
    tile_softmax(s, t == 0, row_lo, tq, sl2, row_max, row_sum, corr);
    rescale_o(o_acc, corr);

    // O += P V: P (bf16) in the A-register fragment, V N-major from shared memory.
    uint32_t pa[kC / 16][4];
    pack_p(s, pa);
    wg::fence_regs(o_acc);
    fence_pa(pa);
    wg::fence();
#pragma unroll
    for (int kk = 0; kk < kC / 16; ++kk)
      wg::wgmma_rs<kDv, 1>(o_acc, pa[kk],
                           wg::smem_desc(vb + kk * VDesc<kV>::kStep, VDesc<kV>::kLbo, VDesc<kV>::kSbo,
                                         wg::Swizzle::kNone),
                           true);
    wg::commit_group();
    wg::wait_group<0>();
    wg::fence_regs(o_acc);
    fence_pa(pa);
    __syncthreads();  // buffer t & 1 is refilled by the next iteration's copy
  }

  // Epilogue: O / l staged through shared memory (V buffer 0) for 16-byte stores; lse per row.
  char* const o_s = v_s;
  stage_o_and_lse(o_s, o_acc, row_sum, row_max, row_lo, tq, q_rows, p.lse + (int64_t(b) * g.T + qc * kC) * g.Ha + a,
                  g.Ha);
  __syncthreads();
  bf* const o = static_cast<bf*>(p.o) + head_v + int64_t(qc) * kC * ldv;
  mma::store_tile<kC, kDv, kThreads>(o_s, o, ldv, q_rows);
}

template <VArr kV>
void lab_fwd(const sa::Geometry& g, const sa::FwdPtrs& p, cudaStream_t s) {
  NATSL_CHECK(g.C == kC && g.Dk == kDk && g.Dv == kDv, "lab: chunk 64, Dk 64, Dv 128 only");
  auto* kern = fwd_wgmma<kV>;
  NATSL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  const int64_t blocks = int64_t(g.NC) * g.Ha * g.B;
  kern<<<unsigned(blocks), kThreads, kSmem, s>>>(g, p);
  NATSL_CUDA_CHECK_LAUNCH();
}

// ---- version 2: TMA loads by a producer warp, mbarrier stages, 128-byte swizzle ----
// The same computation; what changes is how K/V arrive. A fifth warp (threads 128 .. 159) is the producer: its
// first thread issues, per tile, the bulk tensor copies (TMA) of the K tile (one 64 x 64 box) and the V tile
// (two 64-key x 64-column boxes) into stage t % STAGES, plus Q with the first tile, each completing on the
// stage's `full` mbarrier (arrive.expect_tx with the byte count); it waits on the stage's `empty` mbarrier
// (one arrival per consumer warp) before refilling it. The copies use CU_TENSOR_MAP_SWIZZLE_128B over 2-D maps
// [B T rows, Ha D columns] (gdn::tensor_map_2d, as the GDN state passes; box coordinates (a D (+ 64), b T + 64 c),
// so T must be a multiple of 64), which is the probe's sw128 arrangement: K-major Q/K: SBO 1024, a k-step
// +32 bytes; N-major V: SBO 1024, LBO 8192 (the second 64-column box), a k-step +2048 bytes; every tile
// 1024-byte aligned (descriptor base_offset 0). The consumer warpgroup waits on `full` (parity (t / STAGES) & 1)
// instead of cp.async + __syncthreads, and once its P V product of a tile is complete each warp arrives on
// `empty`. No proxy fence is needed: TMA writes and wgmma reads are both async-proxy operations, ordered
// through the mbarrier. The epilogue (as version 1) stages O in stage 0's V buffer after a barrier among the
// 128 consumer threads (named barrier 1; the producer warp has left).
// OVERLAP (FA3's intra-warpgroup overlap; 3 stages): the S product of tile t and the P V product of tile t - 1
// are issued together (two commit groups); wait_group 1 waits for S only, the softmax of tile t runs while the
// tensor cores do P_{t-1} V_{t-1}; then wait_group 0, O is rescaled by tile t's correction and P_t packed into
// the A registers (which the previous product read until then), and stage t - 1 is released. Without OVERLAP
// (2 stages) the loop is version 1's: S, wait, softmax, P V, wait.
constexpr int kTmaThreads = kThreads + 32;
constexpr int kVBox = kC * 64 * 2;  // one 64-key x 64-column swizzled box of V (8 KiB)
constexpr int kStageBytes = kKBytes + kVBytes;
static_assert(kQBytes % 1024 == 0 && kKBytes % 1024 == 0 && kStageBytes % 1024 == 0, "1024-byte aligned tiles");
template <int STAGES>
constexpr int tma_bar_off() {
  return kQBytes + STAGES * kStageBytes;
}
template <int STAGES>
constexpr int tma_smem() {  // + 1024 bytes of alignment slack, the 2 STAGES mbarriers
  return 1024 + tma_bar_off<STAGES>() + 2 * STAGES * 8;
}

struct TmaMaps {
  CUtensorMap q, k, v;
};

constexpr uint32_t kSwLbo = 16, kSwSbo = 1024, kSwQkStep = 32, kSwVLbo = kVBox, kSwVStep = 16 * 128;
// Issues S = Q K^T (no wgmma.fence: the caller fences).
__device__ __forceinline__ void issue_qk(float (&s)[kC / 2], uint32_t qb, uint32_t kb) {
#pragma unroll
  for (int ks = 0; ks < kDk / 16; ++ks)
    wg::wgmma_ss<kC, 0, 0>(s, wg::smem_desc(qb + ks * kSwQkStep, kSwLbo, kSwSbo, wg::Swizzle::k128B),
                           wg::smem_desc(kb + ks * kSwQkStep, kSwLbo, kSwSbo, wg::Swizzle::k128B), ks > 0);
}
// Issues O += P V (no wgmma.fence).
__device__ __forceinline__ void issue_pv(float (&o_acc)[kDv / 2], const uint32_t (&pa)[kC / 16][4], uint32_t vb) {
#pragma unroll
  for (int kk = 0; kk < kC / 16; ++kk)
    wg::wgmma_rs<kDv, 1>(o_acc, pa[kk], wg::smem_desc(vb + kk * kSwVStep, kSwVLbo, kSwSbo, wg::Swizzle::k128B),
                         true);
}

template <int STAGES, bool OVERLAP>
__global__ void __launch_bounds__(kTmaThreads) fwd_wgmma_tma(const __grid_constant__ TmaMaps maps,
                                                              const sa::Geometry g, const sa::FwdPtrs p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* const sm = smem_raw + ((1024u - (ptx::smem_addr(smem_raw) & 1023u)) & 1023u);
  unsigned char* const q_s = sm;
  auto k_at = [&](int s) { return sm + kQBytes + s * kStageBytes; };
  auto v_at = [&](int s) { return sm + kQBytes + s * kStageBytes + kKBytes; };
  uint64_t* const full = reinterpret_cast<uint64_t*>(sm + tma_bar_off<STAGES>());
  uint64_t* const empty = full + STAGES;
  const int per_chunk = g.Ha * g.B;
  const int qc = g.NC - 1 - int(blockIdx.x) / per_chunk;
  const auto [a, b, r, warp, lane, gq, tq, ldqk, ldv, head_qk, head_v] = sa::tc_place<kDk, kDv>(g, per_chunk);
  const int32_t* const list = g.chunks + (int64_t(b) * g.Hr + r) * g.NC;
  const int n_tiles = 1 + g.prefix[(int64_t(b) * g.Hr + r) * (g.NC + 1) + qc];
  const int q_rows = min(kC, g.T - qc * kC);

  if (threadIdx.x == 0) {
    for (int i = 0; i < STAGES; ++i) {
      ptx::mbar_init_count(full + i, 1);
      ptx::mbar_init_count(empty + i, kThreads / 32);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();  // the last CTA-wide barrier: the producer warp leaves below

  if (threadIdx.x >= kThreads) {  // producer warp: one thread issues every copy
    if (threadIdx.x == kThreads) {
      const int row0 = b * g.T;
      for (int t = 0; t < n_tiles; ++t) {
        const int s = t % STAGES;
        if (t >= STAGES) ptx::mbar_wait_parity(empty + s, uint32_t(t / STAGES - 1) & 1u);
        const int c = t == 0 ? qc : list[t - 1];
        ptx::mbar_arrive_expect(full + s, uint32_t(kKBytes + kVBytes + (t == 0 ? kQBytes : 0)));
        if (t == 0) ptx::tma_load_2d(q_s, &maps.q, a * kDk, row0 + qc * kC, full + s);
        ptx::tma_load_2d(k_at(s), &maps.k, a * kDk, row0 + c * kC, full + s);
        ptx::tma_load_2d(v_at(s), &maps.v, a * kDv, row0 + c * kC, full + s);
        ptx::tma_load_2d(v_at(s) + kVBox, &maps.v, a * kDv + 64, row0 + c * kC, full + s);
      }
    }
    return;
  }

  const float sl2 = g.scale * sa::kLog2e;
  const int row_lo = 16 * warp + gq;  // this thread's rows: row_lo (h = 0) and row_lo + 8 (h = 1)
  float o_acc[kDv / 2], s[kC / 2], corr[2];
  uint32_t pa[kC / 16][4];
#pragma unroll
  for (int i = 0; i < kDv / 2; ++i) o_acc[i] = 0.f;
#pragma unroll
  for (int i = 0; i < kC / 2; ++i) s[i] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  const uint32_t qb = ptx::smem_addr(q_s);
  auto kb_at = [&](int t) { return ptx::smem_addr(k_at(t % STAGES)); };
  auto vb_at = [&](int t) { return ptx::smem_addr(v_at(t % STAGES)); };
  auto wait_full = [&](int t) { ptx::mbar_wait_parity(full + t % STAGES, uint32_t(t / STAGES) & 1u); };
  auto release = [&](int t) {  // this warp is done with tile t's stage
    __syncwarp();
    if (lane == 0) ptx::mbar_arrive1(empty + t % STAGES);
  };

  if constexpr (!OVERLAP) {
    for (int t = 0; t < n_tiles; ++t) {
      wait_full(t);
      wg::fence_regs(s);
      wg::fence();
      issue_qk(s, qb, kb_at(t));
      wg::commit_group();
      wg::wait_group<0>();
      wg::fence_regs(s);
      tile_softmax(s, t == 0, row_lo, tq, sl2, row_max, row_sum, corr);
      rescale_o(o_acc, corr);
      pack_p(s, pa);
      wg::fence_regs(o_acc);
      fence_pa(pa);
      wg::fence();
      issue_pv(o_acc, pa, vb_at(t));
      wg::commit_group();
      wg::wait_group<0>();
      wg::fence_regs(o_acc);
      fence_pa(pa);
      release(t);
    }
  } else {
    // Tile 0: S, softmax, P (O is still 0: no product yet).
    wait_full(0);
    wg::fence_regs(s);
    wg::fence();
    issue_qk(s, qb, kb_at(0));
    wg::commit_group();
    wg::wait_group<0>();
    wg::fence_regs(s);
    tile_softmax(s, true, row_lo, tq, sl2, row_max, row_sum, corr);
    pack_p(s, pa);
    for (int t = 1; t < n_tiles; ++t) {
      wait_full(t);
      wg::fence_regs(s);
      wg::fence_regs(o_acc);
      fence_pa(pa);
      wg::fence();
      issue_qk(s, qb, kb_at(t));
      wg::commit_group();
      issue_pv(o_acc, pa, vb_at(t - 1));  // P_{t-1} V_{t-1}, running while tile t's softmax is computed
      wg::commit_group();
      wg::wait_group<1>();  // S_t done (groups complete in order)
      wg::fence_regs(s);
      tile_softmax(s, false, row_lo, tq, sl2, row_max, row_sum, corr);
      wg::wait_group<0>();  // P_{t-1} V_{t-1} done: O and the A registers are free
      wg::fence_regs(o_acc);
      fence_pa(pa);
      release(t - 1);
      rescale_o(o_acc, corr);
      pack_p(s, pa);
    }
    wg::fence_regs(o_acc);
    fence_pa(pa);
    wg::fence();
    issue_pv(o_acc, pa, vb_at(n_tiles - 1));
    wg::commit_group();
    wg::wait_group<0>();
    wg::fence_regs(o_acc);
    fence_pa(pa);
    release(n_tiles - 1);
  }

  // Epilogue as version 1, staged in stage 0's V buffer (every copy has completed and been consumed); the
  // barriers are among the 128 consumer threads only.
  ptx::compute_sync<kThreads>();
  char* const o_s = reinterpret_cast<char*>(v_at(0));
  stage_o_and_lse(o_s, o_acc, row_sum, row_max, row_lo, tq, q_rows, p.lse + (int64_t(b) * g.T + qc * kC) * g.Ha + a,
                  g.Ha);
  ptx::compute_sync<kThreads>();
  bf* const o = static_cast<bf*>(p.o) + head_v + int64_t(qc) * kC * ldv;
  mma::store_tile<kC, kDv, kThreads>(o_s, o, ldv, q_rows);
  (void)head_qk;
  (void)ldqk;
}

template <int STAGES, bool OVERLAP>
void lab_fwd_tma(const sa::Geometry& g, const sa::FwdPtrs& p, cudaStream_t s) {
  NATSL_CHECK(g.C == kC && g.Dk == kDk && g.Dv == kDv, "lab: chunk 64, Dk 64, Dv 128 only");
  NATSL_CHECK(g.T % kC == 0 && int64_t(g.B) * g.T < (int64_t(1) << 31), "lab (TMA): T must be a multiple of 64");
  namespace gdn = natsl::kernels::cuda::gdn;
  const int64_t rows = int64_t(g.B) * g.T;
  TmaMaps maps;
  maps.q = gdn::tensor_map_2d(static_cast<const natsl::bf16*>(p.q), rows, int64_t(g.Ha) * kDk, int64_t(g.Ha) * kDk,
                              kC, 64, CU_TENSOR_MAP_SWIZZLE_128B);
  maps.k = gdn::tensor_map_2d(static_cast<const natsl::bf16*>(p.k), rows, int64_t(g.Ha) * kDk, int64_t(g.Ha) * kDk,
                              kC, 64, CU_TENSOR_MAP_SWIZZLE_128B);
  maps.v = gdn::tensor_map_2d(static_cast<const natsl::bf16*>(p.v), rows, int64_t(g.Ha) * kDv, int64_t(g.Ha) * kDv,
                              kC, 64, CU_TENSOR_MAP_SWIZZLE_128B);
  auto* kern = fwd_wgmma_tma<STAGES, OVERLAP>;
  NATSL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, tma_smem<STAGES>()));
  const int64_t blocks = int64_t(g.NC) * g.Ha * g.B;
  kern<<<unsigned(blocks), kTmaThreads, tma_smem<STAGES>(), s>>>(maps, g, p);
  NATSL_CUDA_CHECK_LAUNCH();
}

// ---- host ----

void on_alarm(int) {
  const char msg[] = "attention_wgmma lab: still running after 300 s: a kernel hangs; FAILED\n";
  (void)!write(2, msg, sizeof(msg) - 1);
  _exit(1);
}

// Query-key pairs computed (own chunk causal, selected chunks whole): experiments/bench/bench_attention.cu's.
double visible_pairs(const SparseAttentionIndex& idx, int64_t T, int64_t Ha) {
  const std::vector<int32_t> pre = idx.prefix.to_vector<int32_t>();
  const int64_t B = idx.batch(), Hr = idx.router_heads(), NC = idx.num_chunks(), C = idx.chunk_size;
  double pairs = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < Hr; ++r)
      for (int64_t qc = 0; qc < NC; ++qc) {
        const int64_t rows = std::min(C, T - qc * C);
        pairs += double(rows) * (rows + 1) / 2 + double(rows) * C * pre[size_t((b * Hr + r) * (NC + 1) + qc)];
      }
  return pairs * double(Ha / Hr);
}

struct Diff {
  double max_diff = 0, max_ref = 0, rel = 0;
  int64_t nonfinite = 0, nonfinite_ref = 0;
};
// o: max |x - ref| over max |ref|; lse (per_elem): max |x - ref| / max(1, |ref|). Non-finite x (and ref)
// counted, not compared.
Diff compare(const Tensor& ref, const Tensor& x, bool per_elem) {
  const std::vector<float> r = ref.to(DType::f32).to_vector<float>(), y = x.to(DType::f32).to_vector<float>();
  Diff d;
  for (size_t i = 0; i < r.size(); ++i) {
    if (!std::isfinite(r[i])) ++d.nonfinite_ref;
    if (!std::isfinite(y[i])) ++d.nonfinite;
    if (!std::isfinite(r[i]) || !std::isfinite(y[i])) continue;
    const double e = std::fabs(double(y[i]) - double(r[i]));
    d.max_diff = std::max(d.max_diff, e);
    d.max_ref = std::max(d.max_ref, double(std::fabs(r[i])));
    if (per_elem) d.rel = std::max(d.rel, e / std::max(1.0, double(std::fabs(r[i]))));
  }
  if (!per_elem) d.rel = d.max_ref > 0 ? d.max_diff / d.max_ref : d.max_diff;
  return d;
}

void poison(const Tensor& t, cudaStream_t s) {  // 0xFF bytes: NaN in bf16 and f32
  NATSL_CUDA_CHECK(cudaMemsetAsync(t.data_ptr(), 0xFF, t.nbytes(), s));
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 30;
  int64_t only_b = 0;
  std::string v_layout = "both";
  bool no_tma = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    if (key == "--reps") reps = std::atoi(argv[i + 1]);
    else if (key == "--B") only_b = std::atoll(argv[i + 1]);
    else if (key == "--v-layout") v_layout = argv[i + 1];
    else if (key == "--tma") no_tma = std::string(argv[i + 1]) == "off";
    else {
      std::fprintf(stderr, "usage: natsl_lab_attention_wgmma [--reps N] [--B N] [--v-layout kfast|mnfast|both|none] "
                   "[--tma on|off]\n");
      return 2;
    }
  }
  std::signal(SIGALRM, on_alarm);
  alarm(120);
  cudaDeviceProp prop{};
  NATSL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  if (prop.major != 9 || prop.minor != 0) {
    std::fprintf(stderr, "attention_wgmma lab: needs an sm_90 GPU (H100/H200) for its sm_90a code; this is %s\n",
                 prop.name);
    return 1;
  }
  const Device dev = Device::cuda(0);
  cudaStream_t st = activate(0);
  Generator gen(2026);
  const int64_t T = 4096, Ha = 12, Hr = 6, NC = T / kC;
  const double tol_o = 2e-2, tol_lse = 1e-3;
  struct Lab {
    const char* name;
    void (*fn)(const sa::Geometry&, const sa::FwdPtrs&, cudaStream_t);
  };
  std::vector<Lab> labs;
  if (v_layout == "kfast" || v_layout == "both") labs.push_back({"wgmma V nosw-kfast", lab_fwd<VArr::kKFast>});
  if (v_layout == "mnfast" || v_layout == "both") labs.push_back({"wgmma V nosw-mnfast", lab_fwd<VArr::kMnFast>});
  if (!no_tma) {
    labs.push_back({"wgmma TMA sw128", lab_fwd_tma<2, false>});
    labs.push_back({"wgmma TMA sw128 overlap", lab_fwd_tma<3, true>});
  }

  std::printf("chunk-selected attention fwd, bf16, T %lld, Ha %lld, Hr %lld, Dk %d, Dv %d, chunk %d (%s timing, "
              "%d reps, %s)\n",
              (long long)T, (long long)Ha, (long long)Hr, kDk, kDv, kC, bench::timing_method(), reps, prop.name);
  std::printf("%-26s %-16s %9s %8s %9s %10s %10s  %s\n", "kernel", "shape", "ms", "TFLOP/s", "lab/prod", "o rel err",
              "lse err", "check");
  bool all_ok = true;
  std::vector<int64_t> batches = only_b > 0 ? std::vector<int64_t>{only_b} : std::vector<int64_t>{2, 8};
  for (int64_t B : batches)
    for (double fraction : {0.6, 1.0}) {
      auto rnd = [&](const Shape& s) {
        Tensor t = Tensor::empty(s, DType::bf16, dev);
        normal_(t, gen, 0.0, 1.0);
        return t;
      };
      Tensor q = rnd({B, T, Ha, kDk}), k = rnd({B, T, Ha, kDk}), v = rnd({B, T, Ha, kDv});
      Tensor u = Tensor::empty({B, NC, Hr}, DType::f32, dev);
      uniform_(u, gen, 0.0, 1.0);
      std::vector<float> m = u.to_vector<float>();
      for (float& x : m) x = x < fraction ? 1.f : 0.f;
      const Tensor mask = Tensor::from_vector(m, u.shape(), DType::f32, dev);
      const SparseAttentionIndex idx = sparse_attention_index(mask, kC);
      SparseAttentionArgs args;
      args.scale = 1.0 / std::sqrt(double(kDk));
      Tensor o_ref = Tensor::empty(v.shape(), DType::bf16, dev), lse_ref = Tensor::empty({B, T, Ha}, DType::f32, dev);
      Tensor o = Tensor::empty(v.shape(), DType::bf16, dev), lse = Tensor::empty({B, T, Ha}, DType::f32, dev);
      const double fl = 2.0 * double(kDk + kDv) * visible_pairs(idx, T, Ha);
      char shape[64];
      std::snprintf(shape, sizeof shape, "B%lld sel %.2f", (long long)B, fraction);

      auto prod = [&] { sparse_attention_fwd(args, idx, q, k, v, o_ref, lse_ref); };
      poison(o_ref, st);
      poison(lse_ref, st);
      prod();
      NATSL_CUDA_CHECK(cudaStreamSynchronize(st));
      const double t_prod = bench::median_ms(prod, reps, st);
      std::printf("%-26s %-16s %9.4f %8.1f %9s %10s %10s\n", "production (mma.sync)", shape, t_prod,
                  fl / t_prod / 1e9, "", "", "");

      const sa::Geometry g{int(B), int(T), int(Ha), int(Hr), int(Ha / Hr), kDk, kDv, int(NC), kC, float(args.scale),
                           idx.chunks.data<int32_t>(), idx.prefix.data<int32_t>()};
      const sa::FwdPtrs fp{q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data<float>()};
      for (const Lab& lab : labs) {
        std::printf("%-26s %-16s ", lab.name, shape);  // before the run: a crash or hang names its kernel
        std::fflush(stdout);
        poison(o, st);
        poison(lse, st);
        lab.fn(g, fp, st);
        NATSL_CUDA_CHECK(cudaStreamSynchronize(st));
        const Diff d_o = compare(o_ref, o, false), d_l = compare(lse_ref, lse, true);
        const bool ok = d_o.nonfinite == 0 && d_l.nonfinite == 0 && d_o.nonfinite_ref == 0 && d_l.nonfinite_ref == 0 &&
                        d_o.rel <= tol_o && d_l.rel <= tol_lse;
        all_ok = all_ok && ok;
        const double t = bench::median_ms([&] { lab.fn(g, fp, st); }, reps, st);
        std::printf("%9.4f %8.1f %9.3f %10.2e %10.2e  %s", t, fl / t / 1e9, t / t_prod, d_o.rel, d_l.rel,
                    ok ? "ok" : "MISMATCH");
        if (d_o.nonfinite || d_l.nonfinite)
          std::printf(" (non-finite: o %lld, lse %lld)", (long long)d_o.nonfinite, (long long)d_l.nonfinite);
        if (d_o.nonfinite_ref || d_l.nonfinite_ref)
          std::printf(" (non-finite in production's output: o %lld, lse %lld)", (long long)d_o.nonfinite_ref,
                      (long long)d_l.nonfinite_ref);
        std::printf("\n");
      }
    }
  std::printf("attention_wgmma lab: %s (tolerances: o %.0e of max|o|, lse %.0e)\n", all_ok ? "all ok" : "FAILED",
              tol_o, tol_lse);
  return all_ok ? 0 : 1;
}
