// Tensor-core backward of chunk-selected causal attention (FlashAttention-2's KV-stationary schedule,
// docs/attention-kernels.md §4 and §7). One CTA per (key chunk c, head, batch) holds K_c and V_c; its 4
// warps own 16 keys each. It visits the query chunks that see chunk c: its own (causal mask; skipped with
// drop_own_chunk_grad) and, when c is selected for the head's router head, every later query chunk. Per
// query tile (Q, dO, lse and D copied one tile ahead with cp.async):
//   S^T = K Q^T,  P^T = exp(scale S^T - lse),  dP^T = V dO^T,  dS^T = P^T (dP^T - D)
//   dV += P^T dO,  dK += dS^T Q,  dQ += dS K  (dS through shared memory; f32 atomics into dq_acc)
//   dm  += sum of dS^T over the off-diagonal tiles (the router gradient of chunk c)
// dQ uses atomics (FA2's choice) rather than a second, Q-stationary pass: that would recompute S and dP
// (2 more of the 7 products). The price is a run-to-run order of f32 additions in dq, unless dq_turn is
// given (kernels/determinism.h): then the CTAs add into a query chunk's dq in ascending key-chunk order
// (the CTA of key chunk c is contribution number prefix[c] of every query chunk it visits: the selected
// chunks before it come first), waiting on a per-(b, head, query chunk) counter. CTAs are dispatched in
// ascending c, so every CTA waited on is already resident or done. dK, dV are written once per CTA; dm is
// reduced in the CTA and written to dm_part[b, c, head] (summed over the G heads of a router head in a fixed
// order afterwards, so dm is deterministic either way).
#include "core/cuda_check.h"
#include "kernels/chunk.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/sparse_attention.cuh"

namespace natsl::kernels::cuda::sparse_attn {
namespace {

using namespace mma;
using bf = __nv_bfloat16;
constexpr int kC = kChunk;
static_assert(kC == 64, "the sparse-attention tiles assume 64-token chunks");

template <int DK, int DV>
struct BwdCfg {
  static constexpr int kThreads = 128;
  static constexpr int kKBytes = kC * DK * 2, kVBytes = kC * DV * 2, kQBytes = kC * DK * 2, kDOBytes = kC * DV * 2;
  static constexpr int kDSBytes = kC * kC * 2, kRowBytes = kC * 4;
  // K | V | Q x2 | dO x2 | dS^T | lse x2 | D x2
  static constexpr int kOffV = kKBytes, kOffQ = kOffV + kVBytes, kOffDO = kOffQ + 2 * kQBytes;
  static constexpr int kOffDS = kOffDO + 2 * kDOBytes, kOffLse = kOffDS + kDSBytes, kOffD = kOffLse + 2 * kRowBytes;
  static constexpr int kSmem = kOffD + 2 * kRowBytes;
};

// ORDERED: the deterministic dq path (p.dq_turn set); a separate instantiation, so that the default kernel
// carries none of its code (kept in, it pushed the Dk 64 / Dv 128 kernel over 255 registers into spills).
template <int DK, int DV, bool ORDERED>
__global__ void __launch_bounds__(128) bwd_kernel(const Geometry g, const BwdPtrs p) {
  using Cfg = BwdCfg<DK, DV>;
  constexpr int NT = Cfg::kThreads;
  extern __shared__ __align__(128) char smem[];

  // Heaviest work first: a selected early chunk is seen by every later query chunk.
  const int per_chunk = g.Ha * g.B;
  const int c = int(blockIdx.x) / per_chunk;
  const auto [a, b, r, warp, lane, gq, tq, ldqk, ldv, head_qk, head_v] = tc_place<DK, DV>(g, per_chunk);
  const int64_t head_row = int64_t(b) * g.T * g.Ha + a;  // lse/D index of token 0; token t at + t * Ha
  const int32_t* pre = g.prefix + (int64_t(b) * g.Hr + r) * (g.NC + 1);
  const bool selected = pre[c + 1] > pre[c];
  // Query tile i visits query chunk c + i: i = 0 the own chunk (diagonal), i >= 1 the later chunks.
  const int first = p.drop_own ? 1 : 0;
  const int n_q = 1 + (selected ? g.NC - 1 - c : 0);
  const int k_rows = min(kC, g.T - c * kC);

  const uint32_t kb = smem_addr(smem), vb = smem_addr(smem + Cfg::kOffV);
  const uint32_t dsb = smem_addr(smem + Cfg::kOffDS);
  const float* const lse_s = reinterpret_cast<const float*>(smem + Cfg::kOffLse);
  const float* const d_s = reinterpret_cast<const float*>(smem + Cfg::kOffD);

  auto load_q = [&](int i, int buf) {
    const int qc = c + i;
    const int rows = min(kC, g.T - qc * kC);
    const bf* q = static_cast<const bf*>(p.q) + head_qk + int64_t(qc) * kC * ldqk;
    const bf* dout = static_cast<const bf*>(p.dout) + head_v + int64_t(qc) * kC * ldv;
    load_tile_async<kC, DK, NT>(smem_addr(smem + Cfg::kOffQ + buf * Cfg::kQBytes), q, ldqk, rows);
    load_tile_async<kC, DV, NT>(smem_addr(smem + Cfg::kOffDO + buf * Cfg::kDOBytes), dout, ldv, rows);
    // Rows past T read as zeros: with Q = dO = 0 and lse = D = 0 they add nothing anywhere.
    const int tid = int(threadIdx.x);
    const int64_t at = head_row + (int64_t(qc) * kC + (tid & 63)) * g.Ha;
    const bool valid = (tid & 63) < rows;
    if (tid < 64) cp_async4(smem_addr(smem + Cfg::kOffLse + buf * Cfg::kRowBytes + tid * 4), valid ? p.lse + at : p.lse, valid);
    else cp_async4(smem_addr(smem + Cfg::kOffD + buf * Cfg::kRowBytes + (tid - 64) * 4), valid ? p.delta + at : p.delta, valid);
  };

  float dk_acc[DK / 8][4], dv_acc[DV / 8][4];
  zero_frags(dk_acc);
  zero_frags(dv_acc);
  float dm_part = 0.f;
  const float sl2 = g.scale * kLog2e;
  const int key0 = warp * 16;  // this warp's keys within the chunk

  if (first < n_q) {
    const bf* k = static_cast<const bf*>(p.k) + head_qk + int64_t(c) * kC * ldqk;
    const bf* v = static_cast<const bf*>(p.v) + head_v + int64_t(c) * kC * ldv;
    load_tile_async<kC, DK, NT>(kb, k, ldqk, k_rows);
    load_tile_async<kC, DV, NT>(vb, v, ldv, k_rows);
    load_q(first, 0);
    cp_async_commit();
  }

  for (int i = first; i < n_q; ++i) {
    const int buf = (i - first) & 1;
    if (i + 1 < n_q) {
      load_q(i + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bool diag = i == 0;
    const int qc = c + i;
    const uint32_t qb = smem_addr(smem + Cfg::kOffQ + buf * Cfg::kQBytes);
    const uint32_t dob = smem_addr(smem + Cfg::kOffDO + buf * Cfg::kDOBytes);
    const float* lse_t = lse_s + buf * kC;
    const float* d_t = d_s + buf * kC;

    // S^T = K_w Q^T (16 keys x 64 queries).
    float st[8][4];
    zero_frags(st);
    mma_abt_16x64<DK>(st, kb, key0, qb, lane);
    // P^T = exp(scale S^T - lse), causal on the diagonal tile.
    for_each_frag_col(tq, [&](int j, int e, int qrow) {
      const float l2 = lse_t[qrow] * kLog2e;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float pe = fast_exp2(st[j][2 * h + e] * sl2 - l2);
        st[j][2 * h + e] = diag && key0 + gq + 8 * h > qrow ? 0.f : pe;
      }
    });
    // dP^T = V_w dO^T.
    float dpt[8][4];
    zero_frags(dpt);
    mma_abt_16x64<DV>(dpt, vb, key0, dob, lane);
    // dS^T = P^T (dP^T - D), kept in dpt.
    for_each_frag_col(tq, [&](int j, int e, int qrow) {
      const float d = d_t[qrow];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float ds = st[j][2 * h + e] * (dpt[j][2 * h + e] - d);
        dpt[j][2 * h + e] = ds;
        if (!diag) dm_part += ds;
      }
    });
    // dV += P^T dO and dK += dS^T Q (k-step kk = queries 16kk .. 16kk + 15).
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t pa[4], da[4];
      c_to_a(st, kk, pa);
      mma_ab_kstep<DV>(dv_acc, pa, dob, kk, lane);
      c_to_a(dpt, kk, da);
      mma_ab_kstep<DK>(dk_acc, da, qb, kk, lane);
    }
    // dS^T to shared memory ([key][query]) for the dQ product, which needs all 64 keys per query.
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        store_pair<kC>(smem + Cfg::kOffDS, key0 + gq + 8 * h, j * 8 + 2 * tq, dpt[j][2 * h], dpt[j][2 * h + 1]);
    if (ORDERED && threadIdx.x == 0) {  // ordered dq: wait until the earlier key chunks have added
      const volatile int* turn = p.dq_turn + (int64_t(b) * g.Ha + a) * g.NC + qc;
      const int rank = pre[c];
      while (*turn != rank) __nanosleep(64);
      __threadfence();
    }
    __syncthreads();
    // dQ (16 queries of this warp x DK, 64 columns at a time) = dS K, added into dq_acc.
    const int qw = warp * 16;
#pragma unroll
    for (int np = 0; np < DK / 64; ++np) {
      float dq[8][4];
      zero_frags(dq);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        uint32_t da[4];
        ldmatrix_x4_trans(da, dsb + Swizzled<kC>::offset(kk * 16 + (lane & 7) + ((lane >> 4) << 3), qw / 8 + ((lane >> 3) & 1)));
#pragma unroll
        for (int jp = 0; jp < 4; ++jp) {
          uint32_t bk[4];
          ldmatrix_x4_trans(bk, kb + Swizzled<DK>::offset(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), np * 8 + jp * 2 + (lane >> 4)));
          mma_bf16(dq[2 * jp], da, bk[0], bk[1]);
          mma_bf16(dq[2 * jp + 1], da, bk[2], bk[3]);
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int tok = qc * kC + qw + gq + 8 * h;
        if (tok < g.T) {
          float* dst = p.dq_acc + (head_row + int64_t(tok) * g.Ha) * DK + np * 64 + 2 * tq;
#pragma unroll
          for (int j = 0; j < 8; ++j) atomicAdd(reinterpret_cast<float2*>(dst + j * 8), make_float2(dq[j][2 * h], dq[j][2 * h + 1]));
        }
      }
    }
    if (ORDERED) {  // hand the query chunk's dq to the next key chunk
      __threadfence();
      __syncthreads();
      if (threadIdx.x == 0) atomicAdd(p.dq_turn + (int64_t(b) * g.Ha + a) * g.NC + c + i, 1);
    }
    __syncthreads();  // the next iteration refills this tile's buffers and dS
  }

  // Router gradient of chunk c for this head (zero unless selected): reduced over the CTA in a fixed order.
  if (p.dm_part != nullptr) {
    __shared__ float dm_warp[4];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) dm_part += __shfl_xor_sync(0xffffffffu, dm_part, o);
    if (lane == 0) dm_warp[warp] = dm_part;
    __syncthreads();
    if (threadIdx.x == 0)
      p.dm_part[(int64_t(b) * g.NC + c) * g.Ha + a] =
          selected ? ((dm_warp[0] + dm_warp[1]) + dm_warp[2]) + dm_warp[3] : 0.f;
  }

  // dK (times scale) and dV staged in the Q / dO buffers, then stored with 16-byte writes.
  char* const dk_s = smem + Cfg::kOffQ;
  char* const dv_s = smem + Cfg::kOffDO;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int key = key0 + gq + 8 * h;
#pragma unroll
    for (int n = 0; n < DK / 8; ++n)
      store_pair<DK>(dk_s, key, n * 8 + 2 * tq, dk_acc[n][2 * h] * g.scale, dk_acc[n][2 * h + 1] * g.scale);
#pragma unroll
    for (int n = 0; n < DV / 8; ++n) store_pair<DV>(dv_s, key, n * 8 + 2 * tq, dv_acc[n][2 * h], dv_acc[n][2 * h + 1]);
  }
  __syncthreads();
  store_tile<kC, DK, NT>(dk_s, static_cast<bf*>(p.dk) + head_qk + int64_t(c) * kC * ldqk, ldqk, k_rows);
  store_tile<kC, DV, NT>(dv_s, static_cast<bf*>(p.dv) + head_v + int64_t(c) * kC * ldv, ldv, k_rows);
}

template <int DK, int DV>
void launch(const Geometry& g, const BwdPtrs& p, cudaStream_t s) {
  using Cfg = BwdCfg<DK, DV>;
  auto* kern = p.dq_turn != nullptr ? bwd_kernel<DK, DV, true> : bwd_kernel<DK, DV, false>;
  NATSL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmem));
  const int64_t blocks = int64_t(g.NC) * g.Ha * g.B;
  kern<<<unsigned(blocks), Cfg::kThreads, Cfg::kSmem, s>>>(g, p);
  NATSL_CUDA_CHECK_LAUNCH();
}

}  // namespace

void tc_bwd(const Geometry& g, const BwdPtrs& p, cudaStream_t s) {
  if (g.B == 0 || g.T == 0 || g.Ha == 0) return;
  if (g.Dk == 64) {
    if (g.Dv == 64) launch<64, 64>(g, p, s);
    else if (g.Dv == 128) launch<64, 128>(g, p, s);
    else launch<64, 256>(g, p, s);
  } else {
    if (g.Dv == 64) launch<128, 64>(g, p, s);
    else if (g.Dv == 128) launch<128, 128>(g, p, s);
    else launch<128, 256>(g, p, s);
  }
}

}  // namespace natsl::kernels::cuda::sparse_attn
