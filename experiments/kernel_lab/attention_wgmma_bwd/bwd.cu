// Kernel lab: the Hopper (wgmma + TMA) backward of NAtS-L's chunk-selected causal attention, against production's
// mma.sync backward (kernels/cuda/sparse_attention_bwd.cu, docs/attention-kernels.md §7). The forward's wgmma
// version (sparse_attention_fwd_wgmma.sm90a.cu) gives the mma.sync bits at 0.62-0.81x the time; the backward is
// ~2.4x the forward's time in a natsl-340m step (13.1 ms of 239), and issue 18 asks both at <= cuDNN's time.
// Written 2026-12-07 without a GPU to run it: its first run is the next device session's (`WHAT=lab
// LAB_ONLY=attention_wgmma_bwd`).
//
// First run (H100, 2026-12-07): dk, dv bit for bit, 0.56-0.95x production's time on small grids but 1.26x / 1.32x at
// natsl-340m's B8 (selection 0.6 / 1.0): one consumer warpgroup a CTA at 225 registers is one CTA an SM, so an SM
// has one warpgroup to hide the dependent chain S -> P -> dS -> dQ. The 2-warpgroup kernel (2wg) adds the second;
// written 2026-12-07 without a GPU to run it.
//
// The same KV-stationary schedule and arithmetic as production. A work item is a (key chunk c, head a, batch b),
// item = c * B Ha + b Ha + a; it visits query tile i = 0 (its own chunk, causal; skipped with drop_own) and, when c is
// selected for the head's router head, every later query chunk c + i. A consumer warpgroup takes one item (the 64
// keys of the chunk are the wgmma M = 64 rows, 16 per warp), a producer warp feeds it:
//   1wg   one item a CTA (blockIdx.x), 160 threads: the consumer warpgroup (warps 0-3) and the producer warp (4).
//   2cta  the same kernel with __launch_bounds__(160, 2).
//   2wg   two items a CTA (2 blockIdx.x and 2 blockIdx.x + 1; the grid halves, and with an odd count the last CTA's
//         second warpgroup idles), 384 threads: consumer warpgroups 0 and 1, producer warpgroup 2 (warp 8 feeds item
//         0, warp 9 item 1; warps 10, 11 leave). Every item has its own K, V, stages, dS tile, mbarriers and named
//         barrier (1 + its warpgroup, 128 threads), so the two pipelines share nothing but the SM; a warpgroup's
//         arithmetic per item is 1wg's (the same device functions), so dK / dV keep production's bits. setmaxnreg
//         moves registers from the producer warpgroup (168 -> 40) to the consumers (168 -> 232).
//   shared memory  per item: K [64 x Dk] and V [64 x Dv] once; kStages (2) stages of Q [64 x Dk], dO [64 x Dv] (TMA
//                  boxes of 64 x 64, 128-byte swizzle, 3-D maps over [B, T, Ha D]: rows past T are zeros) and lse,
//                  D [64] f32 each; the dS tile [64 queries x 64 keys] bf16 in the same swizzle; then per item its
//                  mbarriers (kv_full, full[2], empty[2]: counts 1, 1, 4) and 4 dm sums. One item: 82 KiB at Dk 64,
//                  106 KiB at Dk 128 (Dv 128); a CTA of two with alignment and barriers: 165 / 213 KiB, under 227.
//   producer       lane 0: K and V (kv barrier, expect_tx of their bytes), then per tile t the Q and dO boxes into
//                  stage t % 2 (full, expect_tx of their bytes) once the 4 consumer warps have freed it (empty, parity
//                  t / 2 - 1 from t = 2 on); every lane loads 2 rows' lse and D (strided by Ha in global memory: no
//                  bulk copy) into the stage, zero past T, __syncwarp, then lane 0's arrive publishes them with the
//                  copies (release, cumulative). Rows past T: Q = dO = 0 and lse = D = 0, so they add nothing (as
//                  production). An item with no tile (drop_own, not selected) loads nothing and waits for nothing.
//   per tile       S^T = K Q^T  (wgmma.m64n64k16 ss, both K-major: A = K, B = Q), dP^T = V dO^T (same, over Dv);
//                  P^T = 2^(scale log2e S^T - log2e lse[query]) (0 where key > query on the own chunk),
//                  dS^T = P^T (dP^T - D[query]); dm += dS^T off the diagonal;
//                  dV += P^T dO and dK += dS^T Q (wgmma rs: P^T / dS^T packed to bf16 as the A fragment; B = dO /
//                  Q N-major, as V in the forward);
//                  dS^T written transposed into the dS tile ([query][key], K-major for the next product), a proxy
//                  fence and the warpgroup's named barrier, then dQ = dS K (wgmma ss: A = dS K-major, B = K N-major;
//                  2wg at Dk 128: two passes of 64 columns) added into dq_acc with f32 atomics (production's default,
//                  non-deterministic order); after the first wait the 4 warps arrive on empty; the named barrier
//                  again before the next tile's dS is written.
//   epilogue       dK (x scale) and dV staged through the item's stage 0 Q / dO buffers (production's swizzled
//                  staging) and stored with 16-byte writes; dm_part[b, c, a] = the warpgroup's fixed-order sum (0
//                  unless selected).
// Registers (ptxas -v, sm_90a), Dk 64 / Dv 128: dK 32 + dV 64 accumulators live throughout, S^T and dP^T 32 each,
// dQ 32. 1wg: 227, no spill, one CTA an SM. 2cta: 168, spills 516 bytes, ptxas serialises its wgmma (warning
// C7512): not a candidate. 2wg: 168 at entry (384 threads), producer 40, consumers 232, no spill, no
// serialisation; "16 barriers" as ptxas counts a named barrier with a register id. 24 / 240 is the same budget,
// but the producer spills at 24. Dk 128 (correctness only, not natsl-340m's shape): 1wg 255 with a 4-byte spill,
// 2wg's consumers spill 116 bytes at 232 even with dQ in two passes (dK 64 + dV 64 + S^T 32 + dP^T 32 live).
//
// main: random bf16 q, k, v, dout (normal), o and lse from production's forward, Ha 12, Hr 6: a partial last chunk
// (T 4000), drop_own, Dk 128 (T 2000), an odd item count (Ha 3, Hr 1, B 1, T 4000: 189 items, pairs across chunks),
// then natsl-340m's NAtS-L shape (Dk 64, Dv 128, T 4096) at B2 and B8, selection 0.6 and 1.0. Production's
// kernels::sparse_attention_bwd (default: atomic dq, timed once a case) against each lab build, both outputs
// poisoned with NaN first: dk, dv bit for bit, dq (atomic order on both sides) to relative RMS 1e-2 and 2e-2 of
// max |dq|, dm to 1e-3 (differing elements counted). Timing: the lab kernel plus its delta and dq-store kernels
// against production's whole backward call. Each case and build re-arms a 120 s alarm whose handler names it and
// exits 1 (a deadlocked mbarrier protocol cannot hold the GPU). Exit 1 on a mismatch.
//   natsl_lab_attention_wgmma_bwd [--reps N] [--B N] [--variant 1wg|2cta|2wg|all]   (default all)
#include <cuda.h>
#include <cuda_bf16.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "core/philox.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "experiments/bench/bench_timing.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/ptx_sm90.cuh"
#include "kernels/cuda/sparse_attention.cuh"
#include "kernels/cuda/tma_map.h"
#include "kernels/cuda/wgmma.cuh"
#include "kernels/sparse_attention.h"

using namespace natsl;
using namespace natsl::kernels;

namespace {

namespace sa = natsl::kernels::cuda::sparse_attn;
namespace mma = natsl::kernels::cuda::mma;
namespace ptx = natsl::kernels::cuda::ptx;
namespace wg = natsl::kernels::cuda::wg;
using bf = __nv_bfloat16;

constexpr int kC = 64, kConsumers = 128, kThreads = kConsumers + 32, kThreads2 = 3 * kConsumers, kStages = 2;
constexpr int kBox = kC * 64 * 2;  // one swizzled box: 64 rows x 64 bf16 columns
constexpr uint32_t kSbo = 1024, kKmLbo = 16, kKmStep = 32, kNmStep = 16 * 128;

struct Maps {
  CUtensorMap q, k, v, dout;
};

// K-major operand (rows x D, D / 64 boxes) of a wgmma over D: k-step ks at box ks / 4, +32 bytes inside it.
__device__ __forceinline__ uint64_t kmajor(uint32_t base, int ks) {
  return wg::smem_desc(base + uint32_t(ks / 4) * kBox + uint32_t(ks % 4) * kKmStep, kKmLbo, kSbo, wg::Swizzle::k128B);
}
// N-major B operand (64 k-rows x N columns in N / 64 boxes): k-step kk = rows 16 kk .. 16 kk + 15.
__device__ __forceinline__ uint64_t nmajor(uint32_t base, int kk) {
  return wg::smem_desc(base + uint32_t(kk) * kNmStep, kBox, kSbo, wg::Swizzle::k128B);
}

// The 4 A-register fragments (k-steps over the 64 columns) of a 64 x 64 accumulator, rounded to bf16.
__device__ __forceinline__ void pack_a(const float (&s)[kC / 2], uint32_t (&pa)[kC / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < kC / 16; ++kk) {
    pa[kk][0] = mma::pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
    pa[kk][1] = mma::pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
    pa[kk][2] = mma::pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
    pa[kk][3] = mma::pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
  }
}
__device__ __forceinline__ void fence_a(uint32_t (&pa)[kC / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < kC / 16; ++kk) wg::fence_regs(pa[kk]);
}

// Byte offset of element (row, col) of a 64 x 64 bf16 tile in the 128-byte swizzle (rows of 128 bytes, 16-byte
// chunk c of row r at chunk c ^ (r % 8); the tile 1024-byte aligned): mma_sm80.cuh's Swizzled<64>.
__device__ __forceinline__ uint32_t sw64(int row, int col) {
  return uint32_t(row * 128 + (((col >> 3) ^ (row & 7)) << 4) + (col & 7) * 2);
}

// One work item's shared memory (K, V, the stages, the dS tile; kItemBytes, a multiple of 1024) and its barrier
// block (kv_full, full[kStages], empty[kStages], then the 4 consumer warps' dm sums): a CTA of n items holds n
// item regions, then n barrier blocks.
template <int DK, int DV>
struct Cfg {
  static constexpr int kKBytes = kC * DK * 2, kVBytes = kC * DV * 2;
  static constexpr int kQBytes = kC * DK * 2, kDOBytes = kC * DV * 2;
  static constexpr int kStageBytes = kQBytes + kDOBytes + 1024;  // Q | dO | lse, D (64 f32 each; 1 KiB keeps alignment)
  static constexpr int kOffV = kKBytes, kOffStages = kOffV + kVBytes;
  static constexpr int kOffDS = kOffStages + kStages * kStageBytes;  // 1024-aligned: every part is a multiple
  static constexpr int kItemBytes = kOffDS + kC * kC * 2;
  static constexpr int kBarBytes = (1 + 2 * kStages) * 8 + 4 * 4;
  static constexpr int smem(int items) { return 1024 + items * (kItemBytes + kBarBytes); }
  static_assert(kStageBytes % 1024 == 0 && kOffDS % 1024 == 0 && kItemBytes % 1024 == 0, "1024-byte aligned tiles");
  static_assert(kBarBytes % 8 == 0, "8-byte aligned mbarriers");
};

// Item `i` of a CTA's `items` in shared memory (sm 1024-byte aligned).
template <int DK, int DV>
struct ItemSmem {
  using Cf = Cfg<DK, DV>;
  unsigned char* base;
  uint64_t* bar;
  __device__ ItemSmem(unsigned char* sm, int items, int i)
      : base(sm + i * Cf::kItemBytes), bar(reinterpret_cast<uint64_t*>(sm + items * Cf::kItemBytes + i * Cf::kBarBytes)) {}
  __device__ unsigned char* k() const { return base; }
  __device__ unsigned char* v() const { return base + Cf::kOffV; }
  __device__ unsigned char* stage(int s) const { return base + Cf::kOffStages + s * Cf::kStageBytes; }
  __device__ unsigned char* q(int s) const { return stage(s); }
  __device__ unsigned char* dout(int s) const { return stage(s) + Cf::kQBytes; }
  __device__ float* lse(int s) const { return reinterpret_cast<float*>(stage(s) + Cf::kQBytes + Cf::kDOBytes); }
  __device__ float* d(int s) const { return lse(s) + kC; }
  __device__ unsigned char* ds() const { return base + Cf::kOffDS; }
  __device__ uint64_t* kv_full() const { return bar; }
  __device__ uint64_t* full(int s) const { return bar + 1 + s; }
  __device__ uint64_t* empty(int s) const { return bar + 1 + kStages + s; }
  __device__ float* dm_warp() const { return reinterpret_cast<float*>(bar + 1 + 2 * kStages); }
  // One thread: the item's mbarriers (the caller fences and publishes them with a CTA barrier).
  __device__ void init_barriers() const {
    ptx::mbar_init_count(kv_full(), 1);
    for (int i = 0; i < kStages; ++i) {
      ptx::mbar_init_count(full(i), 1);
      ptx::mbar_init_count(empty(i), kConsumers / 32);
    }
  }
};

// Work item `item` = c * B Ha + b Ha + a: key chunk c of head a in batch b, and the query tiles it visits: i = 0 (its
// own chunk, causal; skipped with drop_own) and, when c is selected for the head's router head, every later chunk.
struct Work {
  int c, a, b, first, n_q, k_rows;
  bool selected;
  int64_t head_row;  // lse / D index of token 0; token t at + t Ha
};
__device__ __forceinline__ Work work_of(const sa::Geometry& g, bool drop_own, int item) {
  const int per_chunk = g.Ha * g.B;
  Work w;
  w.c = item / per_chunk;
  w.a = (item % per_chunk) % g.Ha;
  w.b = (item % per_chunk) / g.Ha;
  const int32_t* pre = g.prefix + (int64_t(w.b) * g.Hr + w.a / g.G) * (g.NC + 1);
  w.selected = pre[w.c + 1] > pre[w.c];
  w.first = drop_own ? 1 : 0;
  w.n_q = 1 + (w.selected ? g.NC - 1 - w.c : 0);
  w.k_rows = min(kC, g.T - w.c * kC);
  w.head_row = int64_t(w.b) * g.T * g.Ha + w.a;
  return w;
}

// The producer of one item, a whole warp: lane 0 loads K and V (kv barrier), then per tile the Q and dO boxes
// (full[s], expect_tx) once the consumers have freed the stage (empty[s]); every lane loads 2 rows' lse and D (zero
// past T), __syncwarp, then lane 0's arrive publishes them with the copies (release, cumulative).
template <int DK, int DV>
__device__ __forceinline__ void produce(const Maps& maps, const sa::Geometry& g, const sa::BwdPtrs& p, const Work& w,
                                        const ItemSmem<DK, DV>& it, int lane) {
  using Cf = Cfg<DK, DV>;
  if (w.first >= w.n_q) return;
  if (lane == 0) {
    ptx::mbar_arrive_expect(it.kv_full(), uint32_t(Cf::kKBytes + Cf::kVBytes));
    for (int i = 0; i < DK / 64; ++i)
      ptx::tma_load_3d(it.k() + i * kBox, &maps.k, w.a * DK + 64 * i, w.c * kC, w.b, it.kv_full());
    for (int i = 0; i < DV / 64; ++i)
      ptx::tma_load_3d(it.v() + i * kBox, &maps.v, w.a * DV + 64 * i, w.c * kC, w.b, it.kv_full());
  }
  for (int i = w.first; i < w.n_q; ++i) {
    const int t = i - w.first, s = t % kStages, qc = w.c + i;
    if (t >= kStages) ptx::mbar_wait_parity(it.empty(s), uint32_t(t / kStages - 1) & 1u);
    for (int row = lane; row < kC; row += 32) {  // lse and D of the tile's rows (zero past T)
      const int tok = qc * kC + row;
      const bool ok = tok < g.T;
      it.lse(s)[row] = ok ? p.lse[w.head_row + int64_t(tok) * g.Ha] : 0.f;
      it.d(s)[row] = ok ? p.delta[w.head_row + int64_t(tok) * g.Ha] : 0.f;
    }
    __syncwarp();
    if (lane == 0) {
      ptx::mbar_arrive_expect(it.full(s), uint32_t(Cf::kQBytes + Cf::kDOBytes));
      for (int j = 0; j < DK / 64; ++j)
        ptx::tma_load_3d(it.q(s) + j * kBox, &maps.q, w.a * DK + 64 * j, qc * kC, w.b, it.full(s));
      for (int j = 0; j < DV / 64; ++j)
        ptx::tma_load_3d(it.dout(s) + j * kBox, &maps.dout, w.a * DV + 64 * j, qc * kC, w.b, it.full(s));
    }
  }
}

// Rows [0, valid_rows) of a swizzled 64 x D tile to global memory with 16-byte stores, by the 128 threads of one
// consumer warpgroup (tid 0..127): mma::store_tile with the thread index given.
template <int D>
__device__ __forceinline__ void store_tile_wg(const char* tile, bf* g, int64_t ld, int valid_rows, int tid) {
  constexpr int kChunks = D / 8;
  static_assert(kC * kChunks % kConsumers == 0, "tile copy must split evenly over the warpgroup");
#pragma unroll
  for (int k = 0; k < kC * kChunks / kConsumers; ++k) {
    const int idx = k * kConsumers + tid, row = idx / kChunks, ch = idx % kChunks;
    if (row < valid_rows)
      *reinterpret_cast<uint4*>(g + row * ld + ch * 8) =
          *reinterpret_cast<const uint4*>(tile + mma::Swizzled<D>::offset(row, ch));
  }
}

// The consumer of one item, a whole warpgroup (tid 0..127, its barrier named bar_id): the per-tile products of the
// header, then dm_part and the dK / dV epilogue. DQ_N: dQ = dS K in Dk / DQ_N passes of N = DQ_N columns (DK: one
// pass, the 1-warpgroup kernel; 64: the 2-warpgroup one at Dk 128, 32 fewer live registers). dK and dV do not
// depend on it; dQ's columns are the same sums over the same k-steps.
template <int DK, int DV, int DQ_N>
__device__ __forceinline__ void consume(const sa::Geometry& g, const sa::BwdPtrs& p, const Work& w,
                                        const ItemSmem<DK, DV>& it, int tid, int bar_id) {
  static_assert(DK % DQ_N == 0 && DQ_N % 64 == 0, "dQ passes of whole 64-column boxes");
  const int warp = tid / 32, lane = tid % 32, gq = lane >> 2, tq = lane & 3;
  float dk_acc[DK / 2], dv_acc[DV / 2];
#pragma unroll
  for (int i = 0; i < DK / 2; ++i) dk_acc[i] = 0.f;
#pragma unroll
  for (int i = 0; i < DV / 2; ++i) dv_acc[i] = 0.f;
  float dm_part = 0.f;
  const float sl2 = g.scale * sa::kLog2e;
  const int key_lo = 16 * warp + gq;  // this thread's keys: key_lo (h = 0) and key_lo + 8 (h = 1)
  const uint32_t kb = ptx::smem_addr(it.k()), vb = ptx::smem_addr(it.v()), dsb = ptx::smem_addr(it.ds());

  if (w.first < w.n_q) ptx::mbar_wait_parity(it.kv_full(), 0);
  for (int i = w.first; i < w.n_q; ++i) {
    const int t = i - w.first, s = t % kStages, qc = w.c + i;
    const bool diag = i == 0;
    ptx::mbar_wait_parity(it.full(s), uint32_t(t / kStages) & 1u);
    const uint32_t qb = ptx::smem_addr(it.q(s)), dob = ptx::smem_addr(it.dout(s));
    const float* lse_t = it.lse(s);
    const float* d_t = it.d(s);

    // S^T = K Q^T and dP^T = V dO^T (64 keys x 64 queries each), two commit groups, both waited for.
    float st[kC / 2], dpt[kC / 2];
#pragma unroll
    for (int e = 0; e < kC / 2; ++e) st[e] = dpt[e] = 0.f;
    wg::fence_regs(st);
    wg::fence_regs(dpt);
    wg::fence();
#pragma unroll
    for (int ks = 0; ks < DK / 16; ++ks) wg::wgmma_ss<kC, 0, 0>(st, kmajor(kb, ks), kmajor(qb, ks), ks > 0);
    wg::commit_group();
#pragma unroll
    for (int ks = 0; ks < DV / 16; ++ks) wg::wgmma_ss<kC, 0, 0>(dpt, kmajor(vb, ks), kmajor(dob, ks), ks > 0);
    wg::commit_group();
    wg::wait_group<0>();
    wg::fence_regs(st);
    wg::fence_regs(dpt);

    // P^T and dS^T on the fragment: element 4 j + 2 h + e is (key key_lo + 8 h, query 8 j + 2 tq + e).
#pragma unroll
    for (int j = 0; j < kC / 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int qrow = 8 * j + 2 * tq + e;
        const float l2 = lse_t[qrow] * sa::kLog2e, d = d_t[qrow];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int x = 4 * j + 2 * h + e;
          const float pe = mma::fast_exp2(st[x] * sl2 - l2);
          st[x] = diag && key_lo + 8 * h > qrow ? 0.f : pe;
          const float ds = st[x] * (dpt[x] - d);
          dpt[x] = ds;
          if (!diag) dm_part += ds;
        }
      }
    uint32_t pa[kC / 16][4], da[kC / 16][4];
    pack_a(st, pa);
    pack_a(dpt, da);

    // dV += P^T dO, dK += dS^T Q (A in registers, B N-major: the queries are the k dimension).
    wg::fence_regs(dv_acc);
    wg::fence_regs(dk_acc);
    fence_a(pa);
    fence_a(da);
    wg::fence();
#pragma unroll
    for (int kk = 0; kk < kC / 16; ++kk) wg::wgmma_rs<DV, 1>(dv_acc, pa[kk], nmajor(dob, kk), true);
#pragma unroll
    for (int kk = 0; kk < kC / 16; ++kk) wg::wgmma_rs<DK, 1>(dk_acc, da[kk], nmajor(qb, kk), true);
    wg::commit_group();

    // dS (queries x keys) into the swizzled tile, K-major for dQ = dS K: element (query, key) at sw64(query, key).
#pragma unroll
    for (int j = 0; j < kC / 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          *reinterpret_cast<__nv_bfloat16*>(it.ds() + sw64(8 * j + 2 * tq + e, key_lo + 8 * h)) =
              __float2bfloat16_rn(dpt[4 * j + 2 * h + e]);
    wg::fence_proxy_async_smem();  // these st.shared -> visible to wgmma's reads
    ptx::compute_sync<kConsumers>(bar_id);

    // dQ = dS K (64 queries x Dk): A = dS K-major over the keys, B = K N-major (pass n: columns n DQ_N ..).
#pragma unroll
    for (int n = 0; n < DK / DQ_N; ++n) {
      float dq[DQ_N / 2];
#pragma unroll
      for (int e = 0; e < DQ_N / 2; ++e) dq[e] = 0.f;
      wg::fence_regs(dq);
      wg::fence();
#pragma unroll
      for (int ks = 0; ks < kC / 16; ++ks)
        wg::wgmma_ss<DQ_N, 0, 1>(dq, kmajor(dsb, ks), nmajor(kb + uint32_t(n * (DQ_N / 64)) * kBox, ks), ks > 0);
      wg::commit_group();
      wg::wait_group<0>();  // (pass 0) dV, dK and dQ done: the stage and the A registers are free
      wg::fence_regs(dq);
      if (n == 0) {
        wg::fence_regs(dv_acc);
        wg::fence_regs(dk_acc);
        fence_a(pa);
        fence_a(da);
        __syncwarp();
        if (lane == 0) ptx::mbar_arrive1(it.empty(s));
      }
      // dq_acc += dQ (this thread's rows: queries key_lo, key_lo + 8 of the tile; columns n DQ_N + 8 j + 2 tq + e).
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int tok = qc * kC + key_lo + 8 * h;
        if (tok < g.T) {
          float* dst = p.dq_acc + (w.head_row + int64_t(tok) * g.Ha) * DK + n * DQ_N + 2 * tq;
#pragma unroll
          for (int j = 0; j < DQ_N / 8; ++j)
            atomicAdd(reinterpret_cast<float2*>(dst + 8 * j), make_float2(dq[4 * j + 2 * h], dq[4 * j + 2 * h + 1]));
        }
      }
    }
    ptx::compute_sync<kConsumers>(bar_id);  // every thread's dQ products have read the dS tile before the next one is written
  }

  // Router gradient of chunk c for this head: the warpgroup's fixed-order sum (zero unless selected).
  if (p.dm_part != nullptr) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) dm_part += __shfl_xor_sync(0xffffffffu, dm_part, o);
    float* const dm_warp = it.dm_warp();
    if (lane == 0) dm_warp[warp] = dm_part;
    ptx::compute_sync<kConsumers>(bar_id);
    if (tid == 0)
      p.dm_part[(int64_t(w.b) * g.NC + w.c) * g.Ha + w.a] =
          w.selected ? ((dm_warp[0] + dm_warp[1]) + dm_warp[2]) + dm_warp[3] : 0.f;
  }

  // dK (x scale) and dV staged in stage 0's Q / dO buffers (every copy is consumed), 16-byte stores.
  ptx::compute_sync<kConsumers>(bar_id);
  char* const dk_s = reinterpret_cast<char*>(it.q(0));
  char* const dv_s = reinterpret_cast<char*>(it.dout(0));
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int key = key_lo + 8 * h;
#pragma unroll
    for (int n = 0; n < DK / 8; ++n)
      mma::store_pair<DK>(dk_s, key, 8 * n + 2 * tq, dk_acc[4 * n + 2 * h] * g.scale, dk_acc[4 * n + 2 * h + 1] * g.scale);
#pragma unroll
    for (int n = 0; n < DV / 8; ++n) mma::store_pair<DV>(dv_s, key, 8 * n + 2 * tq, dv_acc[4 * n + 2 * h], dv_acc[4 * n + 2 * h + 1]);
  }
  ptx::compute_sync<kConsumers>(bar_id);
  const int64_t ldqk = int64_t(g.Ha) * DK, ldv = int64_t(g.Ha) * DV;
  store_tile_wg<DK>(dk_s, static_cast<bf*>(p.dk) + w.head_row * DK + int64_t(w.c) * kC * ldqk, ldqk, w.k_rows, tid);
  store_tile_wg<DV>(dv_s, static_cast<bf*>(p.dv) + w.head_row * DV + int64_t(w.c) * kC * ldv, ldv, w.k_rows, tid);
}

__device__ __forceinline__ unsigned char* align1024(unsigned char* raw) {
  return raw + ((1024u - (ptx::smem_addr(raw) & 1023u)) & 1023u);
}

// One warpgroup: one item a CTA (blockIdx.x), 160 threads: consumer warpgroup (warps 0-3) and producer warp (4).
// MIN_BLOCKS: 1 (227 registers, one CTA an SM) or 2 (168 registers with spills: two CTAs an SM).
template <int DK, int DV, int MIN_BLOCKS>
__global__ void __launch_bounds__(kThreads, MIN_BLOCKS) bwd_wgmma_kernel(const __grid_constant__ Maps maps, const sa::Geometry g,
                                                             const sa::BwdPtrs p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const ItemSmem<DK, DV> it(align1024(smem_raw), 1, 0);
  const Work w = work_of(g, p.drop_own, int(blockIdx.x));
  if (threadIdx.x == 0) {
    it.init_barriers();
    ptx::fence_mbarrier_init();
  }
  __syncthreads();  // the last CTA-wide barrier: the producer warp leaves below
  if (threadIdx.x >= kConsumers) {
    produce<DK, DV>(maps, g, p, w, it, int(threadIdx.x) % 32);
    return;
  }
  consume<DK, DV, DK>(g, p, w, it, int(threadIdx.x), 1);
}

// Two warpgroups: two items a CTA (2 blockIdx.x + 0 / 1; past the last item, warpgroup 1 of the last CTA idles),
// 384 threads: consumer warpgroups 0 and 1 (item 0 / 1, named barriers 1 / 2), producer warpgroup 2 (warp 8 feeds
// item 0, warp 9 item 1, each through its item's own stages and mbarriers; warps 10, 11 leave). The producer
// warpgroup gives registers back (168 -> 40), the consumers take them (168 -> 232). 24 / 240 would be the same
// budget, but the producer spills at 24 (48-60 bytes); Dk 64's consumer needs 227.
// setmaxnreg.inc waits for the CTA's pool: asking more than the entry allocation (65536 / 384 rounded down to 8 =
// 168 a thread) would hang.
constexpr int kEntryRegs2 = 65536 / kThreads2 / 8 * 8, kProducerRegs = 40, kConsumerRegs = 232;
static_assert(kConsumers * kProducerRegs + 2 * kConsumers * kConsumerRegs <= kThreads2 * kEntryRegs2,
              "setmaxnreg: the warpgroups' registers exceed what __launch_bounds__(384, 1) allocates");
template <int DK, int DV>
__global__ void __launch_bounds__(kThreads2, 1) bwd_wgmma_2wg_kernel(const __grid_constant__ Maps maps, const sa::Geometry g,
                                                                     const sa::BwdPtrs p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* const sm = align1024(smem_raw);
  const int wgi = int(threadIdx.x) / kConsumers, n_items = g.NC * g.Ha * g.B;
  if (threadIdx.x == 0) {
    ItemSmem<DK, DV>(sm, 2, 0).init_barriers();
    ItemSmem<DK, DV>(sm, 2, 1).init_barriers();
    ptx::fence_mbarrier_init();
  }
  __syncthreads();  // the only CTA-wide barrier: the producer warps leave below
  if (wgi == 2) {
    ptx::setmaxnreg_dec<kProducerRegs>();
    const int pw = int(threadIdx.x) / 32 - 8, item = 2 * int(blockIdx.x) + pw;
    if (pw < 2 && item < n_items)
      produce<DK, DV>(maps, g, p, work_of(g, p.drop_own, item), ItemSmem<DK, DV>(sm, 2, pw), int(threadIdx.x) % 32);
    return;
  }
  ptx::setmaxnreg_inc<kConsumerRegs>();
  const int item = 2 * int(blockIdx.x) + wgi;
  if (item >= n_items) return;
  consume<DK, DV, 64>(g, p, work_of(g, p.drop_own, item), ItemSmem<DK, DV>(sm, 2, wgi), int(threadIdx.x) % kConsumers,
                      1 + wgi);
}

// D_i = dO_i . o_i (f32), as production's delta kernel: one warp a row.
__global__ void delta_kernel(const bf* __restrict__ o, const bf* __restrict__ dout, float* __restrict__ delta,
                             int64_t rows, int Dv) {
  const int64_t row = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  if (row >= rows) return;
  float s = 0.f;
  for (int e = int(threadIdx.x & 31); e < Dv; e += 32) s += __bfloat162float(o[row * Dv + e]) * __bfloat162float(dout[row * Dv + e]);
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
  if ((threadIdx.x & 31) == 0) delta[row] = s;
}

__global__ void dq_store_kernel(const float* __restrict__ acc, bf* __restrict__ dq, int64_t n, float scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dq[i] = __float2bfloat16_rn(acc[i] * scale);
}

// The builds timed: the 1-warpgroup kernel at one CTA an SM (1wg) and at two (2cta, spills), the 2-warpgroup one.
enum class Variant { k1wg, k2cta, k2wg };
constexpr Variant kVariants[] = {Variant::k1wg, Variant::k2cta, Variant::k2wg};
const char* variant_name(Variant v) { return v == Variant::k1wg ? "1wg" : v == Variant::k2cta ? "2cta" : "2wg"; }

// The lab's whole backward: delta, zeroed dq_acc, the kernel, dq = scale dq_acc. dm_part [B, NC, Ha] per head.
template <int DK, int DV>
void lab_bwd(Variant variant, const sa::Geometry& g, const Tensor& q, const Tensor& k, const Tensor& v,
             const Tensor& o, const Tensor& lse, const Tensor& dout, const Tensor& delta, const Tensor& dq_acc,
             const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dm_part, bool drop_own,
             cudaStream_t s) {
  using Cf = Cfg<DK, DV>;
  const int64_t rows = int64_t(g.B) * g.T * g.Ha;
  delta_kernel<<<unsigned((rows + 3) / 4), 128, 0, s>>>(static_cast<const bf*>(o.data_ptr()),
                                                        static_cast<const bf*>(dout.data_ptr()), delta.data<float>(),
                                                        rows, DV);
  NATSL_CUDA_CHECK_LAUNCH();
  NATSL_CUDA_CHECK(cudaMemsetAsync(dq_acc.data_ptr(), 0, dq_acc.nbytes(), s));
  auto map = [&](const Tensor& t, int D) {
    const int64_t cols = int64_t(g.Ha) * D;
    return kernels::cuda::tensor_map_3d(static_cast<const bf16*>(t.data_ptr()), g.B, g.T, cols, cols,
                                        int64_t(g.T) * cols, kC, 64, CU_TENSOR_MAP_SWIZZLE_128B);
  };
  Maps maps{map(q, DK), map(k, DK), map(v, DV), map(dout, DV)};
  sa::BwdPtrs p{q.data_ptr(),  k.data_ptr(),  v.data_ptr(), dout.data_ptr(), lse.data<float>(), delta.data<float>(),
                dq_acc.data<float>(), nullptr, dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), dm_part.data<float>(),
                drop_own};
  const int64_t items = int64_t(g.NC) * g.Ha * g.B;
  if (variant == Variant::k2wg) {
    static_assert(Cf::smem(2) <= 227 * 1024, "two items' K, V, stages and dS tiles exceed 227 KiB");
    auto* kern = bwd_wgmma_2wg_kernel<DK, DV>;
    NATSL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, Cf::smem(2)));
    kern<<<unsigned((items + 1) / 2), kThreads2, Cf::smem(2), s>>>(maps, g, p);
  } else {
    auto* kern = variant == Variant::k1wg ? bwd_wgmma_kernel<DK, DV, 1> : bwd_wgmma_kernel<DK, DV, 2>;
    NATSL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, Cf::smem(1)));
    kern<<<unsigned(items), kThreads, Cf::smem(1), s>>>(maps, g, p);
  }
  NATSL_CUDA_CHECK_LAUNCH();
  const int64_t n = rows * DK;
  dq_store_kernel<<<unsigned(std::min<int64_t>((n + 255) / 256, 65535)), 256, 0, s>>>(
      dq_acc.data<float>(), static_cast<bf*>(dq.data_ptr()), n, g.scale);
  NATSL_CUDA_CHECK_LAUNCH();
}

// The hang guard: each case (and each build of it) re-arms a 120 s alarm after naming itself here; the handler
// prints the name and exits 1, so a deadlocked mbarrier protocol cannot hold the GPU session.
char g_running[160] = "start-up";
void arm(const char* what) {
  std::snprintf(g_running, sizeof g_running, "%s", what);
  alarm(120);
}
void on_alarm(int) {
  const char head[] = "\nattention_wgmma_bwd lab: ", tail[] = " still running after 120 s: a kernel hangs; FAILED\n";
  size_t n = 0;
  while (n < sizeof g_running && g_running[n] != '\0') ++n;
  (void)!write(2, head, sizeof(head) - 1);
  (void)!write(2, g_running, n);
  (void)!write(2, tail, sizeof(tail) - 1);
  _exit(1);
}

void poison(const Tensor& t, cudaStream_t s) { NATSL_CUDA_CHECK(cudaMemsetAsync(t.data_ptr(), 0xFF, t.nbytes(), s)); }

struct Diff {
  double max_diff = 0, max_ref = 0, sq_diff = 0, sq_ref = 0;
  int64_t nonfinite = 0, differ = 0;
  double rel_rms() const { return sq_ref > 0 ? std::sqrt(sq_diff / sq_ref) : std::sqrt(sq_diff); }
  double rel_max() const { return max_ref > 0 ? max_diff / max_ref : max_diff; }
};
// Non-finite values on either side count (a NaN in production's output is a failure too, not skipped).
Diff compare(const Tensor& ref, const Tensor& x) {
  const std::vector<float> rv = ref.to(DType::f32).to_vector<float>(), xv = x.to(DType::f32).to_vector<float>();
  Diff d;
  for (size_t i = 0; i < rv.size(); ++i) {
    if (!std::isfinite(xv[i]) || !std::isfinite(rv[i])) {
      ++d.nonfinite;
      continue;
    }
    const double e = std::fabs(double(xv[i]) - double(rv[i]));
    d.max_diff = std::max(d.max_diff, e);
    d.max_ref = std::max(d.max_ref, double(std::fabs(rv[i])));
    d.sq_diff += e * e;
    d.sq_ref += double(rv[i]) * double(rv[i]);
    if (xv[i] != rv[i]) ++d.differ;
  }
  return d;
}

// One shape: production's backward (timed once) against each chosen lab build; prints a row per build.
template <int DK, int DV>
bool run_case(int64_t B, int64_t T, int64_t Ha, int64_t Hr, double fraction, bool drop_own, int reps,
              const std::vector<Variant>& variants, Generator& gen, cudaStream_t st) {
  const Device dev = Device::cuda(0);
  const int64_t NC = (T + kC - 1) / kC;
  char shape[96];
  std::snprintf(shape, sizeof shape, "Dk%d Dv%d Ha%lld/%lld B%lld T%lld sel %.2f%s", DK, DV, (long long)Ha,
                (long long)Hr, (long long)B, (long long)T, fraction, drop_own ? " drop_own" : "");
  char what[160];
  std::snprintf(what, sizeof what, "%s production", shape);
  arm(what);
  auto rnd = [&](const Shape& sh) {
    Tensor t = Tensor::empty(sh, DType::bf16, dev);
    normal_(t, gen, 0.0, 1.0);
    return t;
  };
  Tensor q = rnd({B, T, Ha, DK}), k = rnd({B, T, Ha, DK}), v = rnd({B, T, Ha, DV}), dout = rnd({B, T, Ha, DV});
  Tensor u = Tensor::empty({B, NC, Hr}, DType::f32, dev);
  uniform_(u, gen, 0.0, 1.0);
  std::vector<float> m = u.to_vector<float>();
  for (float& x : m) x = x < fraction ? 1.f : 0.f;
  const SparseAttentionIndex idx = sparse_attention_index(Tensor::from_vector(m, u.shape(), DType::f32, dev), kC);
  SparseAttentionArgs args;
  args.scale = 1.0 / std::sqrt(double(DK));
  args.drop_own_chunk_grad = drop_own;
  Tensor o = Tensor::empty(v.shape(), DType::bf16, dev), lse = Tensor::empty({B, T, Ha}, DType::f32, dev);
  sparse_attention_fwd(args, idx, q, k, v, o, lse);
  Tensor pdq = Tensor::empty(q.shape(), DType::bf16, dev), pdk = Tensor::empty(k.shape(), DType::bf16, dev);
  Tensor pdv = Tensor::empty(v.shape(), DType::bf16, dev), pdm = Tensor::empty({B, NC, Hr}, DType::f32, dev);
  auto prod = [&] { sparse_attention_bwd(args, idx, q, k, v, o, lse, dout, pdq, pdk, pdv, pdm); };
  for (const Tensor* t : {&pdq, &pdk, &pdv, &pdm}) poison(*t, st);
  prod();
  const double tp = bench::median_ms(prod, reps, st);
  const sa::Geometry g{int(B), int(T), int(Ha), int(Hr), int(Ha / Hr), DK, DV, int(NC), kC, float(args.scale),
                       idx.chunks.data<int32_t>(), idx.prefix.data<int32_t>()};
  Tensor delta = Tensor::empty({B, T, Ha}, DType::f32, dev), dq_acc = Tensor::empty({B, T, Ha, DK}, DType::f32, dev);
  Tensor ldq = Tensor::empty(q.shape(), DType::bf16, dev), ldk = Tensor::empty(k.shape(), DType::bf16, dev);
  Tensor ldv = Tensor::empty(v.shape(), DType::bf16, dev), ldm = Tensor::empty({B, NC, Ha}, DType::f32, dev);
  bool ok_all = true;
  for (const Variant variant : variants) {
    auto lab = [&] { lab_bwd<DK, DV>(variant, g, q, k, v, o, lse, dout, delta, dq_acc, ldq, ldk, ldv, ldm, drop_own, st); };
    std::snprintf(what, sizeof what, "%s %s", shape, variant_name(variant));
    arm(what);
    std::printf("%-48s %-4s ", shape, variant_name(variant));  // before the run: a hang names its case
    std::fflush(stdout);
    for (const Tensor* t : {&ldq, &ldk, &ldv, &ldm}) poison(*t, st);
    lab();
    NATSL_CUDA_CHECK(cudaStreamSynchronize(st));
    // dm: the lab's per-head parts summed over the G heads of each router head in production's order.
    const std::vector<float> part = ldm.to_vector<float>();
    std::vector<float> dm_lab(size_t(B * NC * Hr));
    const int64_t G = Ha / Hr;
    for (int64_t bb = 0; bb < B; ++bb)
      for (int64_t cc = 0; cc < NC; ++cc)
        for (int64_t rr = 0; rr < Hr; ++rr) {
          float sum = 0.f;
          for (int64_t aa = 0; aa < G; ++aa) sum += part[size_t((bb * NC + cc) * Ha + rr * G + aa)];
          dm_lab[size_t((bb * NC + cc) * Hr + rr)] = sum;
        }
    const Tensor dm_lab_t = Tensor::from_vector(dm_lab, {B, NC, Hr}, DType::f32, dev);
    const Diff e_dk = compare(pdk, ldk), e_dv = compare(pdv, ldv), e_dm = compare(pdm, dm_lab_t), e_dq = compare(pdq, ldq);
    // dk, dv: production's bits; dq: both add their tiles by atomics in a run-to-run order, so bf16 rounding apart
    // (relative RMS 1e-2, max 2e-2 of max |dq|); dm: 1e-3 (its differing elements are printed).
    const bool ok = e_dk.nonfinite + e_dv.nonfinite + e_dm.nonfinite + e_dq.nonfinite == 0 && e_dk.differ == 0 &&
                    e_dv.differ == 0 && e_dq.rel_rms() <= 1e-2 && e_dq.rel_max() <= 2e-2 &&
                    e_dm.max_diff <= 1e-3 * std::max(1.0, e_dm.max_ref);
    ok_all = ok_all && ok;
    const double tl = bench::median_ms(lab, reps, st);
    std::printf("%9.4f %9.4f %9.3f  %-10.2e %-10.2e %-10.2e %-10.2e %s", tp, tl, tl / tp, e_dk.max_diff, e_dv.max_diff,
                e_dm.max_diff, e_dq.rel_rms(), ok ? "ok" : "MISMATCH");
    if (e_dk.differ || e_dv.differ || e_dm.differ)
      std::printf(" (differ from production's bits: dk %lld, dv %lld, dm %lld elements)", (long long)e_dk.differ,
                  (long long)e_dv.differ, (long long)e_dm.differ);
    if (e_dk.nonfinite + e_dv.nonfinite + e_dq.nonfinite + e_dm.nonfinite)
      std::printf(" (non-finite: dq %lld dk %lld dv %lld dm %lld)", (long long)e_dq.nonfinite,
                  (long long)e_dk.nonfinite, (long long)e_dv.nonfinite, (long long)e_dm.nonfinite);
    std::printf("\n");
  }
  return ok_all;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 20;
  int64_t only_b = 0;
  std::vector<Variant> variants(std::begin(kVariants), std::end(kVariants));
  const char* usage = "usage: natsl_lab_attention_wgmma_bwd [--reps N] [--B N] [--variant 1wg|2cta|2wg|all]\n";
  for (int i = 1; i < argc; i += 2) {
    const std::string key = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s", usage);
      return 2;
    }
    const std::string val = argv[i + 1];
    if (key == "--reps") reps = std::atoi(val.c_str());
    else if (key == "--B") only_b = std::atoll(val.c_str());
    else if (key == "--variant" && val != "all") {
      variants.clear();
      for (const Variant v : kVariants)
        if (val == variant_name(v)) variants.push_back(v);
      if (variants.empty()) {
        std::fprintf(stderr, "%s", usage);
        return 2;
      }
    } else if (key != "--variant") {
      std::fprintf(stderr, "%s", usage);
      return 2;
    }
  }
  std::signal(SIGALRM, on_alarm);
  arm("device start-up");
  cudaDeviceProp prop{};
  NATSL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  if (prop.major != 9 || prop.minor != 0) {
    std::fprintf(stderr, "attention_wgmma_bwd lab: needs an sm_90 GPU (H100/H200); this is %s\n", prop.name);
    return 1;
  }
  cudaStream_t st = activate(0);
  Generator gen(2027);
  std::printf("chunk-selected attention bwd, bf16 (%s timing, %d reps, %s)\n", bench::timing_method(), reps, prop.name);
  std::printf("%-48s %-4s %9s %9s %9s  %-10s %-10s %-10s %-10s %s\n", "shape", "lab", "prod ms", "lab ms", "lab/prod",
              "dk diff", "dv diff", "dm diff", "dq relrms", "check");
  bool all_ok = true;
  // First the small cases that reach every path: a partial last chunk (T 4000), drop_own, Dk 128 (dQ's B operand
  // over two boxes; the 2wg kernel's dQ in two passes), an odd item count (Ha 3, B 1, 63 chunks: 189 items, the
  // last 2wg CTA's second warpgroup idle; its pairs span two chunks, so their tile counts differ); then natsl-340m's
  // shape at B2 and B8.
  all_ok = run_case<64, 128>(2, 4000, 12, 6, 0.6, false, reps, variants, gen, st) && all_ok;
  all_ok = run_case<64, 128>(2, 4096, 12, 6, 0.6, true, reps, variants, gen, st) && all_ok;
  all_ok = run_case<128, 128>(1, 2000, 12, 6, 0.6, false, reps, variants, gen, st) && all_ok;
  all_ok = run_case<64, 128>(1, 4000, 3, 1, 0.6, false, reps, variants, gen, st) && all_ok;
  for (int64_t B : only_b > 0 ? std::vector<int64_t>{only_b} : std::vector<int64_t>{2, 8})
    for (double fraction : {0.6, 1.0})
      all_ok = run_case<64, 128>(B, 4096, 12, 6, fraction, false, reps, variants, gen, st) && all_ok;
  alarm(0);
  std::printf("attention_wgmma_bwd lab: %s (dk, dv bit for bit; dq rel RMS 1e-2, max 2e-2; dm 1e-3)\n",
              all_ok ? "all ok" : "FAILED");
  return all_ok ? 0 : 1;
}
