// Reverse sequential state pass of the CUDA GDN backward (gdn-algorithm.md §4 steps 2-3), one CTA per
// (sequence, v head, 64 columns of V), the running gradient dh in f32 registers. Per chunk n, last first:
//   dh[n]  := dh                                   (stored: the gradient of the state leaving chunk n)
//   dv2    = m_n diag(exp(gam_L - gam)) K dh + p^T dO           (total dL/dv_new; stored)
//   dh     = e_L dh + Q^T diag(scale e) dO - w^T dv2            (= dL/dh_n)
// p (from the prep kernel) already holds scale and the causal decay mask, so p^T dO is dv_local.
// The pass does not read h or v_new, so the backward can run it in the same launch as the forward recompute
// that stores them (run_state_fwd_bwd: blocks of either role side by side, twice the CTAs in flight).
// Tiles arrive by cp.async (16 bytes a thread) or, with GdnPlan::bwd_bulk, by one warp issuing a bulk copy
// (cp.async.bulk, sm_90) per 128-byte tile row, all completing on one mbarrier per stage. dh[n] and dv2 leave
// either straight from the accumulators (4-byte stores; GdnPlan::bwd_store_staged = false) or, by default, from the shared
// tiles the pass writes anyway (DHs, and -dv2 with the sign bits flipped back) in 16-byte pieces. With
// GdnPlan::bwd_l2pf = n > 0 the tiles of the chunk n steps beyond the one being loaded are also asked into L2
// (cp.async.bulk.prefetch.L2, one instruction per contiguous range), so the per-step loads hit L2.

#include "kernels/cuda/gdn/bwd.cuh"
#include "kernels/cuda/gdn/state_fwd.cuh"
#include "kernels/cuda/gdn/tma.cuh"

namespace natsl::kernels::cuda::gdn {
namespace {

template <class D>
struct StateBwdParams {
  const D *q, *k, *w, *p, *dout;
  const float *gam, *mask, *dht;
  float* dh0;
  D *dh_out, *dv2_out;
  const SeqInfo* seqs;
  int H, HV, K, V;
  float scale;
  int staged;  // store dh, dv2 from the shared tiles
  int l2pf;    // L2 prefetch distance in chunks (0: none)
};

template <int KT>
constexpr int stage_tiles() {
  return 3 * KT + 2;
}
// Tiles, the per-stage gamma rows and one mbarrier per stage (used by the bulk-copy variant).
template <class D, int KT, int STAGES>
constexpr int state_bwd_smem() {
  return (STAGES * stage_tiles<KT>() + KT + 2) * kTileBytes<D> + STAGES * kC * 4 + STAGES * 8;
}

// The mbarrier and bulk-copy primitives are gdn/state_fwd.cuh's (mbar_init1, mbar_arrive_expect,
// mbar_wait_parity, bulk_g2s).
// One row of a tile: bulk-copied when valid, else zeroed by ordinary stores (the readers see it after the
// barrier that precedes them).
template <class D, int COLS>
__device__ __forceinline__ void bulk_row(D* dst, const D* src, bool valid, uint64_t* bar) {
  constexpr uint32_t bytes = COLS * sizeof(D);
  if (valid) {
    bulk_g2s(dst, src, bytes, bar);
  } else {
#pragma unroll
    for (uint32_t i = 0; i < bytes / 16; ++i) reinterpret_cast<uint4*>(dst)[i] = make_uint4(0, 0, 0, 0);
  }
}

// Where the reverse step finds its chunk's tiles (K, Q, W, P, dO) and how they are laid out; PaddedBwdStage: the
// padded tiles of stage_tiles, one after the other (cp.async and per-row bulk loads).
template <class D, int KT>
struct PaddedBwdStage {
  using LT = PaddedTile<D>;  // K, Q, W, P
  using LO = PaddedTile<D>;  // dO
  static constexpr int TE = kC * kLd<D>;
  const D* base;
  __device__ __forceinline__ const D* K(int kt) const { return base + kt * TE; }
  __device__ __forceinline__ const D* Q(int kt) const { return base + (KT + kt) * TE; }
  __device__ __forceinline__ const D* W(int kt) const { return base + (2 * KT + kt) * TE; }
  __device__ __forceinline__ const D* P() const { return base + 3 * KT * TE; }
  __device__ __forceinline__ const D* dO() const { return P() + TE; }
};

// One chunk step of the reverse pass (steps 1-3 above) on the chunk's tiles (view st) and gamma row g; DHs, NDV2,
// DOe are the padded tiles the step writes; sync() is the barrier among the NTH threads that run it.
template <class D, int KT, int VW, int NTH, class Stage, class Sync>
__device__ __forceinline__ void state_bwd_step_on(const StateBwdParams<D>& p, Acc (&dacc)[KT], const Stage& st, D* DHs,
                                                  D* NDV2, D* DOe, const float* g, int c, int len, int hv, int c0,
                                                  Sync sync) {
  using LT = typename Stage::LT;
  using LO = typename Stage::LO;
  using LP = PaddedTile<D>;
  constexpr int TE = kC * kLd<D>;
  constexpr int ld = kLd<D>;
  const Frag f;
  const int64_t tile_id = int64_t(c) * p.HV + hv;
  const float gL = g[len - 1], eL = __expf(gL);
  const float m = p.mask ? p.mask[tile_id] : 1.f;

  // 1. dh[n]
  state_to_tiles<D, KT, VW, NTH, true>(p, &StateBwdParams<D>::dh_out, dacc, f, DHs, tile_id, c0, sync);

  // 2. dv2 = m diag(exp(gam_L - gam)) K dh + p^T dO
  Acc a;
  zero(a);
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) tile_mma<false, false, D, LT, LP>(a, st.K(kt), DHs + kt * TE);
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int i = f.row(2 * hh);
    const float r = i < len ? m * __expf(gL - g[i]) : 0.f;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      a[nt][2 * hh] *= r;
      a[nt][2 * hh + 1] *= r;
    }
  }
  tile_mma<true, false, D, LT, LO>(a, st.P(), st.dO());
  if (!p.staged) acc_to_global<D>(a, f, p.dv2_out + tile_id * kC * p.V + c0, p.V, kC);
  acc_to_tile<D>(a, f, NDV2, [](int, int, float x) { return -x; });
  {
    const D* dO = st.dO();
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int i = f.row(2 * hh), j = f.col(nt, 0);
        const float sc = i < len ? p.scale * __expf(g[i]) : 0.f;
        const float2 x = load2<D>(dO + LO::off(i, j));
        store2<D>(DOe + i * ld + j, sc * x.x, sc * x.y);
      }
  }
  sync();
  if (p.staged) tile_store_n<D, VW, NTH>(NDV2, p.dv2_out + tile_id * kC * p.V + c0, p.V, true);

  // 3. dh = e_L dh + Q^T diag(scale e) dO - w^T dv2
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
    scale_acc(dacc[kt], eL);
    tile_mma<true, false, D, LT, LP>(dacc[kt], st.Q(kt), DOe);
    tile_mma<true, false, D, LT, LP>(dacc[kt], st.W(kt), NDV2);
  }
}

template <class D, int KT, int STAGES, int VW, bool BULK>
__device__ __forceinline__ void state_bwd_body(const StateBwdParams<D>& p, int n, int hv, int vt,
                                               unsigned char* smem_raw) {
  constexpr int NTH = 4 * VW;
  constexpr int ST = stage_tiles<KT>();
  constexpr int TE = kC * kLd<D>;
  constexpr int ld = kLd<D>;
  D* base = reinterpret_cast<D*>(smem_raw);
  D* DHs = base + STAGES * ST * TE;
  D* NDV2 = DHs + KT * TE;  // -dv2
  D* DOe = NDV2 + TE;       // diag(scale e) dO
  float* G = reinterpret_cast<float*>(DOe + TE);
  uint64_t* bar = reinterpret_cast<uint64_t*>(G + STAGES * kC);
  auto Kt = [&](int s, int kt) { return base + (s * ST + kt) * TE; };
  auto Qt = [&](int s, int kt) { return base + (s * ST + KT + kt) * TE; };
  auto Wt = [&](int s, int kt) { return base + (s * ST + 2 * KT + kt) * TE; };
  auto Pt = [&](int s) { return base + (s * ST + 3 * KT) * TE; };
  auto DOt = [&](int s) { return Pt(s) + TE; };

  const int h = hv / (p.HV / p.H);
  const SeqInfo si = p.seqs[n];
  const int64_t qk_ld = int64_t(p.H) * p.K, v_ld = int64_t(p.HV) * p.V;
  const int c0 = vt * VW;  // first V column of this CTA
  const Frag f;

  Acc dacc[KT];
  load_state<KT>(dacc, f, p.dht ? p.dht + (int64_t(n) * p.HV + hv) * p.K * p.V : nullptr, p.V, c0);

  if constexpr (BULK) {
    if (threadIdx.x == 0) {
#pragma unroll
      for (int s = 0; s < STAGES; ++s) mbar_init1(bar + s);
      fence_mbarrier_init();
    }
    __syncthreads();
  }

  auto issue = [&](int ci, int s) {
    const int c = si.first_chunk + ci, row0 = si.row0 + kC * ci, len = min(kC, si.len - kC * ci);
    const int64_t tile_id = int64_t(c) * p.HV + hv;
    if constexpr (BULK) {
      if (threadIdx.x >= 32) return;  // one warp issues the copies
      const int lane = threadIdx.x;
      constexpr uint32_t row = kC * sizeof(D);
      const uint32_t bytes = uint32_t(len) * (2 * KT * row + VW * sizeof(D)) + (KT + 1) * kC * row + kC * 4;
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      if (lane == 0) mbar_arrive_expect(bar + s, bytes);
      __syncwarp();
      const D* kq0 = p.k + int64_t(row0) * qk_ld + int64_t(h) * p.K;
      const D* q0 = p.q + int64_t(row0) * qk_ld + int64_t(h) * p.K;
      const D* w0 = p.w + tile_id * kC * p.K;
      const D* p0 = p.p + tile_id * kC * kC;
      const D* do0 = p.dout + int64_t(row0) * v_ld + int64_t(hv) * p.V + c0;
      for (int r = lane; r < kC; r += 32) {
        const bool ok = r < len;
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
          bulk_row<D, 64>(Kt(s, kt) + r * ld, kq0 + r * qk_ld + kt * kC, ok, bar + s);
          bulk_row<D, 64>(Qt(s, kt) + r * ld, q0 + r * qk_ld + kt * kC, ok, bar + s);
          bulk_row<D, 64>(Wt(s, kt) + r * ld, w0 + int64_t(r) * p.K + kt * kC, true, bar + s);
        }
        bulk_row<D, 64>(Pt(s) + r * ld, p0 + r * kC, true, bar + s);
        bulk_row<D, VW>(DOt(s) + r * ld, do0 + r * v_ld, ok, bar + s);
      }
      if (lane == 0) bulk_g2s(G + s * kC, p.gam + tile_id * kC, kC * 4, bar + s);
    } else {
#pragma unroll
      for (int kt = 0; kt < KT; ++kt) {
        load_tile_n<D, 64, NTH>(Kt(s, kt), p.k + int64_t(row0) * qk_ld + int64_t(h) * p.K + kt * kC, qk_ld, len);
        load_tile_n<D, 64, NTH>(Qt(s, kt), p.q + int64_t(row0) * qk_ld + int64_t(h) * p.K + kt * kC, qk_ld, len);
        load_tile_n<D, 64, NTH>(Wt(s, kt), p.w + tile_id * kC * p.K + kt * kC, p.K, kC);
      }
      load_tile_n<D, 64, NTH>(Pt(s), p.p + tile_id * kC * kC, kC, kC);
      load_tile_n<D, VW, NTH>(DOt(s), p.dout + int64_t(row0) * v_ld + int64_t(hv) * p.V + c0, v_ld, len);
      load_row64(G + s * kC, p.gam + tile_id * kC);
      cp_async_commit();
    }
  };

  // L2 prefetch of chunk ci's tiles: K and Q rows by threads 0..63, dO row pieces by 64..127, the
  // contiguous W and P tiles and gamma by thread 0.
  auto prefetch = [&](int ci) {
    const int c = si.first_chunk + ci, row0 = si.row0 + kC * ci, len = min(kC, si.len - kC * ci);
    const int64_t tile_id = int64_t(c) * p.HV + hv;
    const int t = threadIdx.x;
    if (t < kC) prefetch_qk_row<true>(p, t, row0, len, qk_ld, h);
    else if (t < 2 * kC) {
      if (t - kC < len) prefetch_l2(p.dout + int64_t(row0 + t - kC) * v_ld + int64_t(hv) * p.V + c0, VW * int(sizeof(D)));
    }
    if (t == 0) {
      prefetch_l2(p.w + tile_id * kC * p.K, kC * p.K * int(sizeof(D)));
      prefetch_l2(p.p + tile_id * kC * kC, kC * kC * int(sizeof(D)));
      prefetch_l2(p.gam + tile_id * kC, kC * 4);
    }
  };
  auto issue_pf = [&](int ci, int s) {
    issue(ci, s);
    if (p.l2pf > 0 && ci - p.l2pf >= 0) prefetch(ci - p.l2pf);
  };

  const int nch = si.nchunks;
  if (nch > 0) issue_pf(nch - 1, 0);
  for (int it = 0; it < nch; ++it) {
    const int ci = nch - 1 - it;
    const int s = STAGES == 2 ? (it & 1) : 0;
    if (STAGES == 1 && it > 0) {
      __syncthreads();
      issue_pf(ci, 0);
    }
    if constexpr (BULK) mbar_wait_parity(bar + s, uint32_t(it / STAGES) & 1u);
    else cp_async_wait<0>();
    __syncthreads();
    if (STAGES == 2 && ci > 0) issue_pf(ci - 1, s ^ 1);

    state_bwd_step_on<D, KT, VW, NTH>(p, dacc, PaddedBwdStage<D, KT>{base + s * ST * TE}, DHs, NDV2, DOe, G + s * kC,
                                      si.first_chunk + ci, min(kC, si.len - kC * ci), hv, c0, [] { __syncthreads(); });
  }
  if (p.dh0) {
#pragma unroll
    for (int kt = 0; kt < KT; ++kt)
      acc_to_global<float>(dacc[kt], f, p.dh0 + ((int64_t(n) * p.HV + hv) * p.K + kt * kC) * p.V + c0, p.V, kC);
  }
}

// MINB: CTAs per SM the register allocation must allow (2 with the occ2 layout: one stage, ~111 KB each).
template <class D, int KT, int STAGES, int VW, bool BULK, int MINB = 1>
__global__ void __launch_bounds__(4 * VW, MINB) state_bwd_kernel(StateBwdParams<D> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  state_bwd_body<D, KT, STAGES, VW, BULK>(p, blockIdx.x, blockIdx.y, blockIdx.z, smem_raw);
}

// Both backward state passes in one launch: blockIdx.z < V / VW runs the reverse pass (the longer one, so it
// is scheduled first), the rest the forward recompute storing h and v_new.
template <class D, int KT, int STAGES, int VW, bool BULK, int MINB = 1>
__global__ void __launch_bounds__(4 * VW, MINB) state_joint_kernel(StateBwdParams<D> pb, StateFwdParams<D> pf) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int nvt = pb.V / VW;
  if (int(blockIdx.z) < nvt)
    state_bwd_body<D, KT, STAGES, VW, BULK>(pb, blockIdx.x, blockIdx.y, blockIdx.z, smem_raw);
  else state_fwd_body<D, KT, STAGES, false, VW>(pf, blockIdx.x, blockIdx.y, blockIdx.z - nvt, smem_raw);
}

// ---- both passes on tensor-copied tiles (GdnPlan::bwd_tma; bf16, K <= 128) ----
// As the forward's tensor-copy pass (gdn/state_fwd_tma.cu): one producer thread issues each chunk's copies into a
// stage (gdn/tma.cuh), the compute warps run the same step functions on a swizzled-tile view, zeroing the rows past
// a partial chunk's end that the cp.async loads would have zero-filled (the same sums, bit for bit).
struct JointMaps {
  CUtensorMap w, k, q, u, p, dout;
};

// The reverse pass's view of a stage: K in tiles 0..KT-1, Q in KT..2KT-1, W in 2KT..3KT-1, P in 3KT, dO dense.
template <int KT, int VW>
struct TmaBwdStage : TmaTiles<KT, 2, 0, 1> {
  using LO = DenseTile<VW>;
  __device__ __forceinline__ const bf16* dO() const { return this->dense(); }
};

// blockIdx.z < V / VW: the reverse pass; above (only when launched with the forward's CTAs): the forward
// recompute storing h and v_new (its stage view is the forward's TmaStage, the Q and P tiles left empty).
template <int KT, int STAGES, int VW>
__global__ void __launch_bounds__(4 * VW + 32, 1)
    state_joint_tma_kernel(const __grid_constant__ JointMaps maps, StateBwdParams<bf16> pb, StateFwdParams<bf16> pf) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int NTH = 4 * VW;  // compute threads; the producer warp comes after them
  constexpr int SB = tma_stage_bytes<KT, VW>(), TE = kC * kLd<bf16>;
  constexpr uint32_t kRevTx = tma_gamma_offset<KT, VW>() + kC * 4;
  constexpr uint32_t kFwdTx = 2 * KT * kSwTileBytes + kC * VW * int(sizeof(bf16)) + kC * 4;
  unsigned char* sm = tma_align(smem_raw);
  bf16* work = reinterpret_cast<bf16*>(sm + STAGES * SB);  // KT + 2 padded tiles the steps write
  uint64_t* full = reinterpret_cast<uint64_t*>(sm + STAGES * SB + (KT + 2) * kTileBytes<bf16>);
  uint64_t* empty = full + STAGES;
  auto tile_at = [&](int s, int i) { return sm + s * SB + i * kSwTileBytes; };
  auto gam_at = [&](int s) { return reinterpret_cast<float*>(sm + s * SB + tma_gamma_offset<KT, VW>()); };
  const int nvt = pb.V / VW;
  const bool rev = int(blockIdx.z) < nvt;
  const int n = blockIdx.x, hv = blockIdx.y, c0 = (rev ? int(blockIdx.z) : int(blockIdx.z) - nvt) * VW;
  const int h = hv / (pb.HV / pb.H);
  const SeqInfo si = pb.seqs[n];
  const int nch = si.nchunks;
  init_stage_barriers<STAGES>(full, empty, 1, NTH / 32);

  if (threadIdx.x >= NTH) {  // producer: one thread issues every copy
    if (threadIdx.x == NTH) {
      for (int it = 0; it < nch; ++it) {
        const int s = it % STAGES, ci = rev ? nch - 1 - it : it;
        if (it >= STAGES) mbar_wait_parity(empty + s, uint32_t(it / STAGES - 1) & 1u);
        const int row0 = si.row0 + kC * ci, tile_row = (si.first_chunk + ci) * pb.HV * kC + hv * kC;
        uint64_t* bar = full + s;
        mbar_arrive_expect(bar, rev ? kRevTx : kFwdTx);
        if (rev) {
#pragma unroll
          for (int kt = 0; kt < KT; ++kt) {
            tma_load_2d(tile_at(s, kt), &maps.k, h * pb.K + kt * kC, row0, bar);
            tma_load_2d(tile_at(s, KT + kt), &maps.q, h * pb.K + kt * kC, row0, bar);
            tma_load_2d(tile_at(s, 2 * KT + kt), &maps.w, kt * kC, tile_row, bar);
          }
          tma_load_2d(tile_at(s, 3 * KT), &maps.p, 0, tile_row, bar);
          tma_load_2d(tile_at(s, 3 * KT + 1), &maps.dout, hv * pb.V + c0, row0, bar);
        } else {
#pragma unroll
          for (int kt = 0; kt < KT; ++kt) {
            tma_load_2d(tile_at(s, kt), &maps.w, kt * kC, tile_row, bar);
            tma_load_2d(tile_at(s, KT + kt), &maps.k, h * pb.K + kt * kC, row0, bar);
          }
          tma_load_2d(tile_at(s, 3 * KT + 1), &maps.u, c0, tile_row, bar);
        }
        bulk_g2s(gam_at(s), pb.gam + int64_t(tile_row), kC * 4, bar);
      }
    }
    return;
  }

  const Frag f;
  Acc acc[KT];
  const float* init = rev ? pb.dht : pf.h0;
  load_state<KT>(acc, f, init ? init + (int64_t(n) * pb.HV + hv) * pb.K * pb.V : nullptr, pb.V, c0);
  for (int it = 0; it < nch; ++it) {
    const int s = it % STAGES, ci = rev ? nch - 1 - it : it, len = min(kC, si.len - kC * ci);
    mbar_wait_parity(full + s, uint32_t(it / STAGES) & 1u);
    const bf16* st = reinterpret_cast<const bf16*>(tile_at(s, 0));
    // The steps' first barrier orders the zeroing before the tiles are read.
    if (rev) {
      if (len < kC) {
        zero_tile_rows<NTH>(tile_at(s, 0), 2 * KT, kC * 2, len);          // K, Q
        zero_tile_rows<NTH>(tile_at(s, 3 * KT + 1), 1, VW * 2, len);      // dO
      }
      state_bwd_step_on<bf16, KT, VW, NTH>(pb, acc, TmaBwdStage<KT, VW>{st}, work, work + KT * TE,
                                           work + (KT + 1) * TE, gam_at(s), si.first_chunk + ci, len, hv, c0,
                                           [] { compute_sync<NTH>(); });
    } else {
      if (len < kC) zero_tile_rows<NTH>(tile_at(s, KT), KT, kC * 2, len);  // K
      state_fwd_step_on<bf16, KT, false, VW>(pf, acc, TmaStage<KT, VW>{st}, work, gam_at(s), si.first_chunk + ci,
                                         si.row0 + kC * ci, len, hv, c0, [] { compute_sync<NTH>(); });
    }
    release_stage(empty + s, /*wrote_shared=*/len < kC);  // the zeroed rows
  }
  float* const fin = rev ? pb.dh0 : pf.ht;
  if (fin) {
#pragma unroll
    for (int kt = 0; kt < KT; ++kt)
      acc_to_global<float>(acc[kt], f, fin + ((int64_t(n) * pb.HV + hv) * pb.K + kt * kC) * pb.V + c0, pb.V, kC);
  }
}


template <class D, int KT, int STAGES, int VW>
constexpr int joint_smem() {
  return std::max(state_bwd_smem<D, KT, STAGES>(), state_fwd_smem<D, KT, STAGES, false>());
}

template <class D, int KT, int STAGES, int VW, bool BULK, int MINB = 1>
void launch(const Plan& pl, const StateBwdParams<D>& p, const StateFwdParams<D>* pf) {
  const unsigned nvt = unsigned(pl.s.V / VW);
  if (pf)
    launch_smem(state_joint_kernel<D, KT, STAGES, VW, BULK, MINB>, dim3(unsigned(pl.s.N), unsigned(pl.s.HV), 2 * nvt),
                4 * VW, joint_smem<D, KT, STAGES, VW>(), MINB, pl.stream, p, *pf);
  else
    launch_smem(state_bwd_kernel<D, KT, STAGES, VW, BULK, MINB>, dim3(unsigned(pl.s.N), unsigned(pl.s.HV), nvt), 4 * VW,
                state_bwd_smem<D, KT, STAGES>(), MINB, pl.stream, p);
}

template <class D, int KT, int STAGES, int VW>
void launch_bulk(const Plan& pl, const StateBwdParams<D>& p, const StateFwdParams<D>* pf) {
  if (pl.tune.bwd_bulk) return launch<D, KT, STAGES, VW, true>(pl, p, pf);
  launch<D, KT, STAGES, VW, false>(pl, p, pf);
}

template <class D, int KT, int VW>
void launch_stages(const Plan& pl, const StateBwdParams<D>& p, const StateFwdParams<D>* pf, int stages, bool occ2) {
  const int avail = max_smem_per_block(pl.dev.index);
  // Two CTAs per SM (StateLayout::occ2): one stage, cp.async loads.
  if constexpr (joint_smem<D, KT, 1, VW>() <= 113 * 1024)
    if (occ2 && !pl.tune.bwd_bulk && 2 * (joint_smem<D, KT, 1, VW>() + 1024) <= max_smem_per_sm(pl.dev.index))
      return launch<D, KT, 1, VW, false, 2>(pl, p, pf);
  if (stages == 2 && joint_smem<D, KT, 2, VW>() <= avail) return launch_bulk<D, KT, 2, VW>(pl, p, pf);
  NATSL_CHECK((joint_smem<D, KT, 1, VW>() <= avail), "gdn reverse state pass: K = ", pl.s.K,
              " needs more shared memory than this GPU has");
  launch_bulk<D, KT, 1, VW>(pl, p, pf);
}

template <class D, int KT>
void launch_vw(const Plan& pl, const StateBwdParams<D>& p, const StateFwdParams<D>* pf, StateLayout lay) {
  if (lay.vw == 32) return launch_stages<D, KT, 32>(pl, p, pf, lay.stages, lay.occ2);
  launch_stages<D, KT, 64>(pl, p, pf, lay.stages, lay.occ2);
}

template <int KT, int STAGES, int VW>
void launch_joint_tma(const Plan& pl, const JointMaps& maps, const StateBwdParams<bf16>& pb,
                      const StateFwdParams<bf16>* pf) {
  const unsigned nvt = unsigned(pl.s.V / VW);
  launch_smem(state_joint_tma_kernel<KT, STAGES, VW>, dim3(unsigned(pl.s.N), unsigned(pl.s.HV), pf ? 2 * nvt : nvt),
              4 * VW + 32, tma_smem<KT, VW, STAGES>(), 1, pl.stream, maps, pb, pf ? *pf : StateFwdParams<bf16>{});
}

// The requested stages (1, 2 or 3), or fewer where they do not fit; false when 1 does not fit either.
template <int KT, int VW>
bool launch_joint_tma_stages(const Plan& pl, const JointMaps& maps, const StateBwdParams<bf16>& pb,
                             const StateFwdParams<bf16>* pf, int stages) {
  constexpr int kSm90Max = 227 * 1024;
  const int avail = max_smem_per_block(pl.dev.index);
  if constexpr (tma_smem<KT, VW, 3>() <= kSm90Max)
    if (stages >= 3 && tma_smem<KT, VW, 3>() <= avail) return launch_joint_tma<KT, 3, VW>(pl, maps, pb, pf), true;
  if constexpr (tma_smem<KT, VW, 2>() <= kSm90Max)
    if (stages >= 2 && tma_smem<KT, VW, 2>() <= avail) return launch_joint_tma<KT, 2, VW>(pl, maps, pb, pf), true;
  if (tma_smem<KT, VW, 1>() <= avail) return launch_joint_tma<KT, 1, VW>(pl, maps, pb, pf), true;
  return false;
}

// Both passes (pf set) or the reverse pass alone on tensor-copied tiles; false where the layout does not apply.
bool run_joint_tma(const Plan& pl, const StateBwdParams<bf16>& pb, const StateFwdParams<bf16>* pf, int vw,
                   int stages) {
  const GdnShape& s = pl.s;
  const int64_t tok_rows = s.B * s.T, tile_rows = s.NC * s.HV * kC;
  if (tok_rows >= (int64_t(1) << 31) || tile_rows >= (int64_t(1) << 31) || s.V % vw != 0) return false;
  if (s.K != 64 && s.K != 128) return false;  // K = 256 does not fit one stage with the padded work tiles
  JointMaps maps;
  maps.w = tensor_map_2d(pb.w, tile_rows, s.K, s.K, kC, kC, CU_TENSOR_MAP_SWIZZLE_128B);
  maps.k = tensor_map_2d(pb.k, tok_rows, s.H * s.K, s.H * s.K, kC, kC, CU_TENSOR_MAP_SWIZZLE_128B);
  maps.q = tensor_map_2d(pb.q, tok_rows, s.H * s.K, s.H * s.K, kC, kC, CU_TENSOR_MAP_SWIZZLE_128B);
  maps.p = tensor_map_2d(pb.p, tile_rows, kC, kC, kC, kC, CU_TENSOR_MAP_SWIZZLE_128B);
  maps.dout = tensor_map_2d(pb.dout, tok_rows, s.HV * s.V, s.HV * s.V, kC, vw, CU_TENSOR_MAP_SWIZZLE_NONE);
  maps.u = pf ? tensor_map_2d(pf->u, tile_rows, s.V, s.V, kC, vw, CU_TENSOR_MAP_SWIZZLE_NONE) : maps.dout;
  bool ok = false;
  dispatch_kt<bf16>(s.K, "gdn backward state passes", [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    if constexpr (KT <= 2) {
      ok = vw == 32 ? launch_joint_tma_stages<KT, 32>(pl, maps, pb, pf, stages)
                    : launch_joint_tma_stages<KT, 64>(pl, maps, pb, pf, stages);
    }
  });
  return ok;
}

template <class D>
StateBwdParams<D> state_bwd_params(const Plan& pl, const GdnArgs& args, const GdnInputs& in, const PrepOut& pr,
                                   const Tensor& dout, const Tensor& dht, const Tensor& dh0, const Tensor& dh,
                                   const Tensor& dv2) {
  StateBwdParams<D> p{};
  set_state_inputs<D>(p, in, pr);
  p.dout = dout.data<D>();
  p.dht = data_or_null<float>(dht);
  p.dh0 = data_or_null<float>(dh0);
  p.dh_out = dh.data<D>();
  p.dv2_out = dv2.data<D>();
  p.seqs = pl.seq_infos();
  set_sizes(p, pl.s, args);
  p.staged = pl.tune.bwd_store_staged;
  p.l2pf = std::max(0, pl.tune.bwd_l2pf);
  return p;
}

template <class D>
void run_kt(const Plan& pl, const StateBwdParams<D>& p, const StateFwdParams<D>* pf, StateLayout lay) {
  if constexpr (std::is_same_v<D, bf16>)
    if (lay.bwd_tma && run_joint_tma(pl, p, pf, lay.bwd_tma_vw, lay.bwd_tma_stages)) return;
  dispatch_kt<D>(pl.s.K, "gdn reverse state pass", [&](auto kt) { launch_vw<D, decltype(kt)::value>(pl, p, pf, lay); });
}

}  // namespace

void run_state_bwd(const Plan& pl, const GdnArgs& args, const GdnInputs& in, const PrepOut& pr, const Tensor& dout,
                   const Tensor& dht, const Tensor& dh0, const Tensor& dh, const Tensor& dv2) {
  const GdnShape& s = pl.s;
  if (s.N == 0) return;
  const StateLayout lay = state_layout(pl, int(s.N * s.HV * (s.V / kC)));
  NATSL_CUDA_DISPATCH_FLOAT(in.q.dtype(), "gdn reverse state pass", T, [&] {
    run_kt<T>(pl, state_bwd_params<T>(pl, args, in, pr, dout, dht, dh0, dh, dv2), nullptr, lay);
  });
}

void run_state_fwd_bwd(const Plan& pl, const GdnArgs& args, const GdnInputs& in, const PrepOut& pr,
                       const Tensor& dout, const Tensor& dht, const Tensor& dh0, const Tensor& h, const Tensor& vnew,
                       const Tensor& dh, const Tensor& dv2) {
  const GdnShape& s = pl.s;
  if (s.N == 0) return;
  const StateLayout lay = state_layout(pl, int(2 * s.N * s.HV * (s.V / kC)));
  NATSL_CUDA_DISPATCH_FLOAT(in.q.dtype(), "gdn backward state passes", T, [&] {
    const StateFwdParams<T> pf = state_fwd_params<T>(pl, args, in, pr, StateFwdOut{Tensor(), Tensor(), h, vnew});
    run_kt<T>(pl, state_bwd_params<T>(pl, args, in, pr, dout, dht, dh0, dh, dv2), &pf, lay);
  });
}

}  // namespace natsl::kernels::cuda::gdn
