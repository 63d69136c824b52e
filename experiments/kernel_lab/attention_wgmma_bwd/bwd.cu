// Kernel lab: the Hopper (wgmma + TMA) backward of NAtS-L's chunk-selected causal attention, against production's
// mma.sync backward (kernels/cuda/sparse_attention_bwd.cu, docs/attention-kernels.md §7). The forward's wgmma
// version (sparse_attention_fwd_wgmma.sm90a.cu) gives the mma.sync bits at 0.62-0.81x the time; the backward is
// ~2.4x the forward's time in a natsl-340m step (13.1 ms of 239), and issue 18 asks both at <= cuDNN's time.
// Written 2026-12-07 without a GPU to run it: its first run is the next device session's (`WHAT=lab
// LAB_ONLY=attention_wgmma_bwd`).
//
// The same KV-stationary schedule and arithmetic as production: one CTA per (key chunk c, head a, batch b),
// blockIdx.x = c * B Ha + b Ha + a; it visits query tile i = 0 (its own chunk, causal; skipped with drop_own) and,
// when c is selected for the head's router head, every later query chunk c + i. 160 threads: one consumer
// warpgroup (warps 0-3: the 64 keys of the chunk are the wgmma M = 64 rows, 16 per warp) and a producer warp (4).
//   shared memory  K [64 x Dk] and V [64 x Dv] once; kStages stages of Q [64 x Dk], dO [64 x Dv] (TMA boxes of
//                  64 x 64, 128-byte swizzle, 3-D maps over [B, T, Ha D]: rows past T are zeros) and lse, D [64]
//                  f32 each; the dS tile [64 queries x 64 keys] bf16 in the same swizzle; mbarriers.
//   producer       lane 0: K and V (kv barrier), then per tile the Q and dO boxes (full[s], expect_tx); every lane
//                  loads 2 rows' lse and D (strided by Ha in global memory: no bulk copy) into the stage, zero
//                  past T, __syncwarp, then lane 0's arrive publishes them with the copies (release, cumulative).
//                  Rows past T: Q = dO = 0 and lse = D = 0, so they add nothing (as production).
//   per tile       S^T = K Q^T  (wgmma.m64n64k16 ss, both K-major: A = K, B = Q), dP^T = V dO^T (same, over Dv);
//                  P^T = 2^(scale log2e S^T - log2e lse[query]) (0 where key > query on the own chunk),
//                  dS^T = P^T (dP^T - D[query]); dm += dS^T off the diagonal;
//                  dV += P^T dO and dK += dS^T Q (wgmma rs: P^T / dS^T packed to bf16 as the A fragment; B = dO /
//                  Q N-major, as V in the forward);
//                  dS^T written transposed into the dS tile ([query][key], K-major for the next product), a proxy
//                  fence and a barrier of the 128 consumers, then dQ = dS K (wgmma ss: A = dS K-major, B = K
//                  N-major) added into dq_acc with f32 atomics (production's default, non-deterministic order).
//   epilogue       dK (x scale) and dV staged through stage 0's Q / dO buffers (production's swizzled staging) and
//                  stored with 16-byte writes; dm_part[b, c, a] = the CTA's fixed-order sum (0 unless selected).
// Registers (Dk 64, Dv 128): dK 32 + dV 64 accumulators live throughout, S^T and dP^T 32 each, dQ 32: ptxas takes
// 225 (no spill), so one CTA of 160 threads an SM. The 2-CTA build (launch bounds) gets 168 (10 warps an SM: 3 on
// one sub-partition), spills 444 bytes and ptxas serialises its wgmma (warning C7512): timed to see the cost, not a
// candidate as it stands; two consumer warpgroups with setmaxnreg are the next variant.
//
// main: random bf16 q, k, v, dout (normal), o and lse from production's forward, Ha 12, Hr 6: a partial last chunk
// (T 4000), drop_own, Dk 128 (T 2000), then natsl-340m's NAtS-L shape (Dk 64, Dv 128, T 4096) at B2 and B8, selection
// 0.6 and 1.0. Production's kernels::sparse_attention_bwd (default: atomic dq) against the lab kernel, both outputs
// poisoned with NaN first: dk, dv bit for bit, dq (atomic order on both sides) to relative RMS 1e-2 and 2e-2 of
// max |dq|, dm to 1e-3 (differing elements counted). Timing: the lab kernel plus its delta / dq-store / dm kernels against
// production's whole backward call. Exit 1 on a mismatch.
//   natsl_lab_attention_wgmma_bwd [--reps N] [--B N]
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

constexpr int kC = 64, kConsumers = 128, kThreads = kConsumers + 32, kStages = 2;
constexpr int kBox = kC * 64 * 2;  // one swizzled box: 64 rows x 64 bf16 columns
constexpr uint32_t kSbo = 1024, kKmLbo = 16, kKmStep = 32, kNmStep = 16 * 128;

template <int DK, int DV>
struct Cfg {
  static constexpr int kKBytes = kC * DK * 2, kVBytes = kC * DV * 2;
  static constexpr int kQBytes = kC * DK * 2, kDOBytes = kC * DV * 2;
  static constexpr int kStageBytes = kQBytes + kDOBytes + 1024;  // Q | dO | lse, D (64 f32 each; 1 KiB keeps alignment)
  static constexpr int kOffV = kKBytes, kOffStages = kOffV + kVBytes;
  static constexpr int kOffDS = kOffStages + kStages * kStageBytes;  // 1024-aligned: every part is a multiple
  static constexpr int kOffBar = kOffDS + kC * kC * 2;
  static constexpr int kSmem = 1024 + kOffBar + (1 + 2 * kStages) * 8 + 4 * 4;
  static_assert(kStageBytes % 1024 == 0 && kOffDS % 1024 == 0, "1024-byte aligned swizzled tiles");
};

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

// MIN_BLOCKS: 1 (225 registers, one CTA an SM) or 2 (168 registers with spills: two CTAs an SM).
template <int DK, int DV, int MIN_BLOCKS>
__global__ void __launch_bounds__(kThreads, MIN_BLOCKS) bwd_wgmma_kernel(const __grid_constant__ Maps maps, const sa::Geometry g,
                                                             const sa::BwdPtrs p) {
  using Cf = Cfg<DK, DV>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* const sm = smem_raw + ((1024u - (ptx::smem_addr(smem_raw) & 1023u)) & 1023u);
  unsigned char* const k_s = sm;
  unsigned char* const v_s = sm + Cf::kOffV;
  auto stage = [&](int s) { return sm + Cf::kOffStages + s * Cf::kStageBytes; };
  auto q_at = [&](int s) { return stage(s); };
  auto do_at = [&](int s) { return stage(s) + Cf::kQBytes; };
  auto lse_at = [&](int s) { return reinterpret_cast<float*>(stage(s) + Cf::kQBytes + Cf::kDOBytes); };
  auto d_at = [&](int s) { return lse_at(s) + kC; };
  unsigned char* const ds_s = sm + Cf::kOffDS;
  uint64_t* const kv_full = reinterpret_cast<uint64_t*>(sm + Cf::kOffBar);
  uint64_t* const full = kv_full + 1;
  uint64_t* const empty = full + kStages;
  float* const dm_warp = reinterpret_cast<float*>(empty + kStages);

  const int per_chunk = g.Ha * g.B;
  const int c = int(blockIdx.x) / per_chunk;
  const auto [a, b, r, warp, lane, gq, tq, ldqk, ldv, head_qk, head_v] = sa::tc_place<DK, DV>(g, per_chunk);
  const int64_t head_row = int64_t(b) * g.T * g.Ha + a;  // lse / D index of token 0; token t at + t Ha
  const int32_t* pre = g.prefix + (int64_t(b) * g.Hr + r) * (g.NC + 1);
  const bool selected = pre[c + 1] > pre[c];
  const int first = p.drop_own ? 1 : 0;
  const int n_q = 1 + (selected ? g.NC - 1 - c : 0);
  const int k_rows = min(kC, g.T - c * kC);

  if (threadIdx.x == 0) {
    ptx::mbar_init_count(kv_full, 1);
    for (int i = 0; i < kStages; ++i) {
      ptx::mbar_init_count(full + i, 1);
      ptx::mbar_init_count(empty + i, kConsumers / 32);
    }
    ptx::fence_mbarrier_init();
  }
  __syncthreads();  // the last CTA-wide barrier: the producer warp leaves below

  if (threadIdx.x >= kConsumers) {  // producer warp
    if (first >= n_q) return;
    if (lane == 0) {
      ptx::mbar_arrive_expect(kv_full, uint32_t(Cf::kKBytes + Cf::kVBytes));
      for (int i = 0; i < DK / 64; ++i) ptx::tma_load_3d(k_s + i * kBox, &maps.k, a * DK + 64 * i, c * kC, b, kv_full);
      for (int i = 0; i < DV / 64; ++i) ptx::tma_load_3d(v_s + i * kBox, &maps.v, a * DV + 64 * i, c * kC, b, kv_full);
    }
    for (int i = first; i < n_q; ++i) {
      const int t = i - first, s = t % kStages, qc = c + i;
      if (t >= kStages) ptx::mbar_wait_parity(empty + s, uint32_t(t / kStages - 1) & 1u);
      for (int row = lane; row < kC; row += 32) {  // lse and D of the tile's rows (zero past T)
        const int tok = qc * kC + row;
        const bool ok = tok < g.T;
        lse_at(s)[row] = ok ? p.lse[head_row + int64_t(tok) * g.Ha] : 0.f;
        d_at(s)[row] = ok ? p.delta[head_row + int64_t(tok) * g.Ha] : 0.f;
      }
      __syncwarp();
      if (lane == 0) {
        ptx::mbar_arrive_expect(full + s, uint32_t(Cf::kQBytes + Cf::kDOBytes));
        for (int j = 0; j < DK / 64; ++j)
          ptx::tma_load_3d(q_at(s) + j * kBox, &maps.q, a * DK + 64 * j, qc * kC, b, full + s);
        for (int j = 0; j < DV / 64; ++j)
          ptx::tma_load_3d(do_at(s) + j * kBox, &maps.dout, a * DV + 64 * j, qc * kC, b, full + s);
      }
    }
    return;
  }

  float dk_acc[DK / 2], dv_acc[DV / 2];
#pragma unroll
  for (int i = 0; i < DK / 2; ++i) dk_acc[i] = 0.f;
#pragma unroll
  for (int i = 0; i < DV / 2; ++i) dv_acc[i] = 0.f;
  float dm_part = 0.f;
  const float sl2 = g.scale * sa::kLog2e;
  const int key_lo = 16 * warp + gq;  // this thread's keys: key_lo (h = 0) and key_lo + 8 (h = 1)
  const uint32_t kb = ptx::smem_addr(k_s), vb = ptx::smem_addr(v_s), dsb = ptx::smem_addr(ds_s);

  if (first < n_q) ptx::mbar_wait_parity(kv_full, 0);
  for (int i = first; i < n_q; ++i) {
    const int t = i - first, s = t % kStages, qc = c + i;
    const bool diag = i == 0;
    ptx::mbar_wait_parity(full + s, uint32_t(t / kStages) & 1u);
    const uint32_t qb = ptx::smem_addr(q_at(s)), dob = ptx::smem_addr(do_at(s));
    const float* lse_t = lse_at(s);
    const float* d_t = d_at(s);

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
          *reinterpret_cast<__nv_bfloat16*>(ds_s + sw64(8 * j + 2 * tq + e, key_lo + 8 * h)) =
              __float2bfloat16_rn(dpt[4 * j + 2 * h + e]);
    wg::fence_proxy_async_smem();  // these st.shared -> visible to wgmma's reads
    ptx::compute_sync<kConsumers>();

    // dQ = dS K (64 queries x Dk): A = dS K-major over the keys, B = K N-major.
    float dq[DK / 2];
#pragma unroll
    for (int e = 0; e < DK / 2; ++e) dq[e] = 0.f;
    wg::fence_regs(dq);
    wg::fence();
#pragma unroll
    for (int ks = 0; ks < kC / 16; ++ks) wg::wgmma_ss<DK, 0, 1>(dq, kmajor(dsb, ks), nmajor(kb, ks), ks > 0);
    wg::commit_group();
    wg::wait_group<0>();  // dV, dK and dQ done: the stage, the A registers and the dS tile are free
    wg::fence_regs(dq);
    wg::fence_regs(dv_acc);
    wg::fence_regs(dk_acc);
    fence_a(pa);
    fence_a(da);
    __syncwarp();
    if (lane == 0) ptx::mbar_arrive1(empty + s);
    // dq_acc += dQ (this thread's rows: queries key_lo, key_lo + 8 of the tile; columns 8 j + 2 tq + e).
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int tok = qc * kC + key_lo + 8 * h;
      if (tok < g.T) {
        float* dst = p.dq_acc + (head_row + int64_t(tok) * g.Ha) * DK + 2 * tq;
#pragma unroll
        for (int j = 0; j < DK / 8; ++j)
          atomicAdd(reinterpret_cast<float2*>(dst + 8 * j), make_float2(dq[4 * j + 2 * h], dq[4 * j + 2 * h + 1]));
      }
    }
    ptx::compute_sync<kConsumers>();  // every thread's dQ product has read the dS tile before the next one is written
  }

  // Router gradient of chunk c for this head: the CTA's fixed-order sum (zero unless selected).
  if (p.dm_part != nullptr) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) dm_part += __shfl_xor_sync(0xffffffffu, dm_part, o);
    if (lane == 0) dm_warp[warp] = dm_part;
    ptx::compute_sync<kConsumers>();
    if (threadIdx.x == 0)
      p.dm_part[(int64_t(b) * g.NC + c) * g.Ha + a] =
          selected ? ((dm_warp[0] + dm_warp[1]) + dm_warp[2]) + dm_warp[3] : 0.f;
  }

  // dK (x scale) and dV staged in stage 0's Q / dO buffers (every copy is consumed), 16-byte stores.
  ptx::compute_sync<kConsumers>();
  char* const dk_s = reinterpret_cast<char*>(q_at(0));
  char* const dv_s = reinterpret_cast<char*>(do_at(0));
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int key = key_lo + 8 * h;
#pragma unroll
    for (int n = 0; n < DK / 8; ++n)
      mma::store_pair<DK>(dk_s, key, 8 * n + 2 * tq, dk_acc[4 * n + 2 * h] * g.scale, dk_acc[4 * n + 2 * h + 1] * g.scale);
#pragma unroll
    for (int n = 0; n < DV / 8; ++n) mma::store_pair<DV>(dv_s, key, 8 * n + 2 * tq, dv_acc[4 * n + 2 * h], dv_acc[4 * n + 2 * h + 1]);
  }
  ptx::compute_sync<kConsumers>();
  mma::store_tile<kC, DK, kConsumers>(dk_s, static_cast<bf*>(p.dk) + head_qk + int64_t(c) * kC * ldqk, ldqk, k_rows);
  mma::store_tile<kC, DV, kConsumers>(dv_s, static_cast<bf*>(p.dv) + head_v + int64_t(c) * kC * ldv, ldv, k_rows);
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

// The lab's whole backward: delta, zeroed dq_acc, the kernel, dq = scale dq_acc. dm_part [B, NC, Ha] per head.
template <int DK, int DV, int MIN_BLOCKS>
void lab_bwd(const sa::Geometry& g, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
             const Tensor& lse, const Tensor& dout, const Tensor& delta, const Tensor& dq_acc, const Tensor& dq,
             const Tensor& dk, const Tensor& dv, const Tensor& dm_part, bool drop_own, cudaStream_t s) {
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
  auto* kern = bwd_wgmma_kernel<DK, DV, MIN_BLOCKS>;
  NATSL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, Cf::kSmem));
  kern<<<unsigned(int64_t(g.NC) * g.Ha * g.B), kThreads, Cf::kSmem, s>>>(maps, g, p);
  NATSL_CUDA_CHECK_LAUNCH();
  const int64_t n = rows * DK;
  dq_store_kernel<<<unsigned(std::min<int64_t>((n + 255) / 256, 65535)), 256, 0, s>>>(
      dq_acc.data<float>(), static_cast<bf*>(dq.data_ptr()), n, g.scale);
  NATSL_CUDA_CHECK_LAUNCH();
}

void on_alarm(int) {
  const char msg[] = "attention_wgmma_bwd lab: still running after 120 s: a kernel hangs; FAILED\n";
  (void)!write(2, msg, sizeof(msg) - 1);
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

// One shape: production's backward against both lab builds (1 and 2 CTAs an SM); prints a row per build.
template <int DK, int DV>
bool run_case(int64_t B, int64_t T, double fraction, bool drop_own, int reps, Generator& gen, cudaStream_t st) {
  const Device dev = Device::cuda(0);
  const int64_t Ha = 12, Hr = 6, NC = (T + kC - 1) / kC;
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
  const sa::Geometry g{int(B), int(T), int(Ha), int(Hr), int(Ha / Hr), DK, DV, int(NC), kC, float(args.scale),
                       idx.chunks.data<int32_t>(), idx.prefix.data<int32_t>()};
  Tensor delta = Tensor::empty({B, T, Ha}, DType::f32, dev), dq_acc = Tensor::empty({B, T, Ha, DK}, DType::f32, dev);
  Tensor ldq = Tensor::empty(q.shape(), DType::bf16, dev), ldk = Tensor::empty(k.shape(), DType::bf16, dev);
  Tensor ldv = Tensor::empty(v.shape(), DType::bf16, dev), ldm = Tensor::empty({B, NC, Ha}, DType::f32, dev);
  bool ok_all = true;
  for (int variant = 0; variant < 2; ++variant) {
    auto lab = [&] {
      if (variant == 0) lab_bwd<DK, DV, 1>(g, q, k, v, o, lse, dout, delta, dq_acc, ldq, ldk, ldv, ldm, drop_own, st);
      else lab_bwd<DK, DV, 2>(g, q, k, v, o, lse, dout, delta, dq_acc, ldq, ldk, ldv, ldm, drop_own, st);
    };
    char shape[96];
    std::snprintf(shape, sizeof shape, "Dk%d Dv%d B%lld T%lld sel %.2f%s %s", DK, DV, (long long)B, (long long)T,
                  fraction, drop_own ? " drop_own" : "", variant == 0 ? "1cta" : "2cta");
    std::printf("%-44s ", shape);  // before the run: a hang names its case
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
    const double tp = bench::median_ms(prod, reps, st), tl = bench::median_ms(lab, reps, st);
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
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    if (key == "--reps") reps = std::atoi(argv[i + 1]);
    else if (key == "--B") only_b = std::atoll(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: natsl_lab_attention_wgmma_bwd [--reps N] [--B N]\n");
      return 2;
    }
  }
  std::signal(SIGALRM, on_alarm);
  alarm(120);
  cudaDeviceProp prop{};
  NATSL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  if (prop.major != 9 || prop.minor != 0) {
    std::fprintf(stderr, "attention_wgmma_bwd lab: needs an sm_90 GPU (H100/H200); this is %s\n", prop.name);
    return 1;
  }
  cudaStream_t st = activate(0);
  Generator gen(2027);
  std::printf("chunk-selected attention bwd, bf16, Ha 12, Hr 6 (%s timing, %d reps, %s)\n", bench::timing_method(), reps,
              prop.name);
  std::printf("%-44s %9s %9s %9s  %-10s %-10s %-10s %-10s %s\n", "shape", "prod ms", "lab ms", "lab/prod", "dk diff",
              "dv diff", "dm diff", "dq relrms", "check");
  bool all_ok = true;
  // First the small cases that reach every path: a partial last chunk (T 4000), drop_own, Dk 128 (dQ's B operand
  // over two boxes); then natsl-340m's shape at B2 and B8.
  all_ok = run_case<64, 128>(2, 4000, 0.6, false, reps, gen, st) && all_ok;
  all_ok = run_case<64, 128>(2, 4096, 0.6, true, reps, gen, st) && all_ok;
  all_ok = run_case<128, 128>(1, 2000, 0.6, false, reps, gen, st) && all_ok;
  for (int64_t B : only_b > 0 ? std::vector<int64_t>{only_b} : std::vector<int64_t>{2, 8})
    for (double fraction : {0.6, 1.0}) all_ok = run_case<64, 128>(B, 4096, fraction, false, reps, gen, st) && all_ok;
  std::printf("attention_wgmma_bwd lab: %s (dk, dv bit for bit; dq rel RMS 1e-2, max 2e-2; dm 1e-3)\n",
              all_ok ? "all ok" : "FAILED");
  return all_ok ? 0 : 1;
}
