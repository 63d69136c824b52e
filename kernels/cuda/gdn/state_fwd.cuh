#pragma once
// Body of the sequential forward state pass (gdn-algorithm.md §3 steps 3-4), shared by its own kernel
// (gdn/state_fwd.cu) and the backward's joint launch with the reverse pass (gdn/state_bwd.cu). Per chunk n:
//   v_new = u - w h_n                                   (h_n rounded to D for the tensor cores)
//   o     = scale diag(e) Q h_n + p v_new               (OUT: the output kernel fused in)
//   h_n+1 = e_L h_n + m_n K^T diag(exp(gam_L - gam)) v_new
// One CTA per (sequence, v head, VW columns of V) with VW/16 warps (VW = 64: 8 warps, VW = 32: 4 warps, each
// warp owning 16 rows x 32 columns of every accumulator). The tiles of the next STAGES - 1 chunks are in
// flight (cp.async) while this one computes (STAGES = 1: none); with l2pf > 0 the chunk l2pf further ahead is
// also prefetched into L2 (one bulk prefetch per contiguous range).
#include "kernels/cuda/gdn/call.cuh"
#include "kernels/cuda/gdn/store.cuh"
#include "kernels/cuda/ptx_sm90.cuh"

namespace natsl::kernels::cuda::gdn {

template <class D>
struct StateFwdParams {
  const D *q, *k, *w, *u, *p;
  const float *gam, *h0, *mask;
  D* o;
  float* ht;
  D *h_out, *vnew_out;
  const SeqInfo* seqs;
  int H, HV, K, V;
  float scale;
  int staged;  // without an output: h_n and v_new leave from their shared tiles in 16-byte pieces (else 4-byte stores)
  int l2pf;  // L2 prefetch distance in chunks beyond the cp.async stages (0: none)
};

// The inputs both state passes read (P: StateFwdParams or StateBwdParams): q, k, prep's w, p and gamma, the mask.
template <class D, class P>
void set_state_inputs(P& p, const GdnInputs& in, const PrepOut& pr) {
  p.q = in.q.data<D>();
  p.k = in.k.data<D>();
  p.w = pr.w.data<D>();
  p.p = pr.p.data<D>();
  p.gam = pr.gam.data<float>();
  p.mask = data_or_null<float>(in.mask);
}

template <class D>
StateFwdParams<D> state_fwd_params(const Plan& pl, const GdnArgs& args, const GdnInputs& in, const PrepOut& pr,
                                   const StateFwdOut& out) {
  StateFwdParams<D> p{};
  set_state_inputs<D>(p, in, pr);
  p.u = pr.u.data<D>();
  p.h0 = data_or_null<float>(in.h0);
  p.o = data_or_null<D>(out.o);
  p.ht = data_or_null<float>(out.ht);
  p.h_out = data_or_null<D>(out.h);
  p.vnew_out = data_or_null<D>(out.vnew);
  p.seqs = pl.seq_infos();
  set_sizes(p, pl.s, args);
  p.staged = pl.tune.fwd_store_staged;
  return p;
}

template <int KT, bool OUT>
constexpr int state_fwd_stage_tiles() {
  return KT * (OUT ? 3 : 2) + (OUT ? 2 : 1);
}
template <class D, int KT, int STAGES, bool OUT>
constexpr int state_fwd_smem() {
  return (STAGES * state_fwd_stage_tiles<KT, OUT>() + KT + 2) * kTileBytes<D> + STAGES * kC * 4;
}

// The bulk-copy layout adds one mbarrier per stage after the gamma rows.
template <class D, int KT, int STAGES, bool OUT>
constexpr int state_fwd_smem_bulk() {
  return state_fwd_smem<D, KT, STAGES, OUT>() + STAGES * 8;
}

// ---- bulk copies (cp.async.bulk, sm_90): one instruction per contiguous tile row, completing on an mbarrier
// (the PTX in ptx_sm90.cuh) ----
using ptx::bulk_g2s;
using ptx::compute_sync;
using ptx::fence_mbarrier_init;
using ptx::mbar_arrive1;
using ptx::mbar_arrive_expect;
using ptx::mbar_init1;
using ptx::mbar_init_count;
using ptx::mbar_wait_parity;
// The full / empty mbarrier pair of each stage of a warp-specialised kernel: full[i] completes on full_count
// arrivals (and the copies' bytes), empty[i] on one arrival per compute warp. Ends with the barrier that makes
// them visible to the whole CTA.
template <int STAGES>
__device__ __forceinline__ void init_stage_barriers(uint64_t* full, uint64_t* empty, int full_count, int compute_warps) {
  if (threadIdx.x == 0) {
    for (int i = 0; i < STAGES; ++i) {
      mbar_init_count(full + i, full_count);
      mbar_init_count(empty + i, compute_warps);
    }
    fence_mbarrier_init();
  }
  __syncthreads();
}
// A compute warp hands its stage back to the producer; wrote_shared: it stored into the stage with ordinary
// stores, which the copy engine's next fill must not overtake (the proxy fence).
__device__ __forceinline__ void release_stage(uint64_t* empty, bool wrote_shared) {
  if (wrote_shared) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncwarp();
  if ((threadIdx.x & 31) == 0) mbar_arrive1(empty);
}
// Where a step finds its chunk's tiles (W, K, (Q,) U, (P)) and how they are laid out. PaddedStage: the ST
// padded tiles of state_fwd_stage_tiles, one after the other (cp.async and per-row bulk loads).
template <class D, int KT, bool OUT>
struct PaddedStage {
  using LT = PaddedTile<D>;  // layout of the W, K, Q, P tiles
  using LU = PaddedTile<D>;  // layout of the U tile
  static constexpr int TE = kC * kLd<D>;
  const D* base;
  __device__ __forceinline__ const D* W(int kt) const { return base + kt * TE; }
  __device__ __forceinline__ const D* K(int kt) const { return base + (KT + kt) * TE; }
  __device__ __forceinline__ const D* Q(int kt) const { return base + (2 * KT + kt) * TE; }
  __device__ __forceinline__ const D* U() const { return base + (OUT ? 3 : 2) * KT * TE; }
  __device__ __forceinline__ const D* P() const { return U() + TE; }
};

// One chunk step of the pass (steps 1-4 above) on the chunk's tiles (the stage view st) and its gamma row g.
// sync() is the barrier among the threads that run the step (the whole CTA, or the compute warps of the
// warp-specialised kernels).
template <class D, int KT, bool OUT, int VW, class Stage, class Sync>
__device__ __forceinline__ void state_fwd_step_on(const StateFwdParams<D>& p, Acc (&hacc)[KT], const Stage& st,
                                                  D* Hs, const float* g, int c, int row0, int len, int hv, int c0,
                                                  Sync sync) {
  using LT = typename Stage::LT;
  using LU = typename Stage::LU;
  using LP = PaddedTile<D>;
  constexpr int TE = kC * kLd<D>;
  D* Vn = Hs + KT * TE;
  D* Vs = Vn + TE;
  const Frag f;
  const int64_t tile_id = int64_t(c) * p.HV + hv;
  const float gL = g[len - 1], eL = __expf(gL);
  const float m = p.mask ? p.mask[int64_t(c) * p.HV + hv] : 1.f;

  constexpr int NTH = 4 * VW;  // the threads that run the step
  // 1. the state entering the chunk, as D, for the tensor cores (and, without an output, stored)
  state_to_tiles<D, KT, VW, NTH, !OUT>(p, &StateFwdParams<D>::h_out, hacc, f, Hs, tile_id, c0, sync);

  // 2. v_new = u - w h_n, and the inter-chunk output term q h_n
  Acc av, ao;
  zero(av);
  if constexpr (OUT) zero(ao);
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
    tile_mma<false, false, D, LT, LP>(av, st.W(kt), Hs + kt * TE);
    if constexpr (OUT) tile_mma<false, false, D, LT, LP>(ao, st.Q(kt), Hs + kt * TE);
  }
  const D* U = st.U();
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const float2 uu = load2<D>(U + LU::off(f.row(2 * hh), f.col(nt, 0)));
      av[nt][2 * hh] = uu.x - av[nt][2 * hh];
      av[nt][2 * hh + 1] = uu.y - av[nt][2 * hh + 1];
    }
  if (OUT || p.staged) acc_to_tile<D>(av, f, Vn);
  // The two rows this thread holds, each scaled once: m exp(gam_L - gam_i), 0 past the chunk's end.
  const int r_lo = f.row(0), r_hi = f.row(2);
  const float s_lo = r_lo < len ? m * __expf(gL - g[r_lo]) : 0.f, s_hi = r_hi < len ? m * __expf(gL - g[r_hi]) : 0.f;
  acc_to_tile<D>(av, f, Vs, [&](int i, int, float x) { return (i == r_lo ? s_lo : s_hi) * x; });
  if constexpr (!OUT)
    if (!p.staged) acc_to_global<D>(av, f, p.vnew_out + tile_id * kC * p.V + c0, p.V, kC);
  sync();
  if constexpr (!OUT)
    if (p.staged) tile_store_n<D, VW, NTH>(Vn, p.vnew_out + tile_id * kC * p.V + c0, p.V, false);

  // 3. h_n+1 = e_L h_n + K^T (m exp(gam_L - gam) v_new)
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
    scale_acc(hacc[kt], eL);
    tile_mma<true, false, D, LT, LP>(hacc[kt], st.K(kt), Vs);
  }

  // 4. o = scale e_i (q h_n)_i + p v_new
  if constexpr (OUT) {
    scale_rows_exp(ao, f, g, len, p.scale);
    tile_mma<false, false, D, LT, LP>(ao, st.P(), Vn);
    acc_to_global<D>(ao, f, p.o + (int64_t(row0) * p.HV + hv) * p.V + c0, int64_t(p.HV) * p.V, len);
  }
}

// The step on the padded tiles starting at `stage`.
template <class D, int KT, bool OUT, int VW, class Sync>
__device__ __forceinline__ void state_fwd_step(const StateFwdParams<D>& p, Acc (&hacc)[KT], const D* stage, D* Hs,
                                               const float* g, int c, int row0, int len, int hv, int c0, Sync sync) {
  state_fwd_step_on<D, KT, OUT, VW>(p, hacc, PaddedStage<D, KT, OUT>{stage}, Hs, g, c, row0, len, hv, c0, sync);
}

// BULK: tiles arrive by bulk copies issued by warp 0 (one per tile row) instead of 16-byte cp.async by every
// thread; rows past the chunk's end are zeroed by ordinary stores.
template <class D, int KT, int STAGES, bool OUT, int VW, bool BULK = false>
__device__ __forceinline__ void state_fwd_body(const StateFwdParams<D>& p, int n, int hv, int vt,
                                               unsigned char* smem_raw) {
  constexpr int NTH = 4 * VW;
  constexpr int ST = state_fwd_stage_tiles<KT, OUT>();
  constexpr int TE = kC * kLd<D>;  // elements per tile
  constexpr int ld = kLd<D>;
  D* base = reinterpret_cast<D*>(smem_raw);
  D* Hs = base + STAGES * ST * TE;
  D* Vn = Hs + KT * TE;
  D* Vs = Vn + TE;
  float* G = reinterpret_cast<float*>(Vs + TE);
  auto Wt = [&](int s, int kt) { return base + (s * ST + kt) * TE; };
  auto Kt = [&](int s, int kt) { return base + (s * ST + KT + kt) * TE; };
  auto Qt = [&](int s, int kt) { return base + (s * ST + 2 * KT + kt) * TE; };
  auto Ut = [&](int s) { return base + (s * ST + (OUT ? 3 : 2) * KT) * TE; };
  auto Pt = [&](int s) { return Ut(s) + TE; };

  const int h = hv / (p.HV / p.H);
  const SeqInfo si = p.seqs[n];
  const int64_t qk_ld = int64_t(p.H) * p.K;
  const int c0 = vt * VW;  // first V column of this CTA
  const Frag f;

  Acc hacc[KT];
  load_state<KT>(hacc, f, p.h0 ? p.h0 + (int64_t(n) * p.HV + hv) * p.K * p.V : nullptr, p.V, c0);

  // L2 prefetch of chunk ci's tiles: K (and Q) rows by threads 0..63, this CTA's U row pieces by 64..127, the
  // contiguous W, P tiles and gam by thread 0.
  auto prefetch_chunk = [&](int ci) {
    const int c = si.first_chunk + ci, row0 = si.row0 + kC * ci, len = min(kC, si.len - kC * ci);
    const int64_t tile_id = int64_t(c) * p.HV + hv;
    const int t = threadIdx.x;
    if (t < kC) prefetch_qk_row<OUT>(p, t, row0, len, qk_ld, h);
    else if (t < 2 * kC) prefetch_l2(p.u + (tile_id * kC + (t - kC)) * p.V + c0, VW * int(sizeof(D)));
    if (t == 0) {
      prefetch_l2(p.w + tile_id * kC * p.K, kC * p.K * int(sizeof(D)));
      if constexpr (OUT) prefetch_l2(p.p + tile_id * kC * kC, kC * kC * int(sizeof(D)));
      prefetch_l2(p.gam + tile_id * kC, kC * 4);
    }
  };

  uint64_t* bar = reinterpret_cast<uint64_t*>(G + STAGES * kC);
  if constexpr (BULK) {
    if (threadIdx.x == 0) {
      for (int i = 0; i < STAGES; ++i) mbar_init1(bar + i);
      fence_mbarrier_init();
    }
    __syncthreads();
  }
  // Warp 0: lane 0 announces the stage's bytes, then the lanes copy the rows. Pieces of a row: KT W tiles,
  // KT K tiles, (OUT) KT Q tiles, the U columns, (OUT) the P tile.
  auto issue_bulk = [&](int ci, int s) {
    const int lane = threadIdx.x;
    const int c = si.first_chunk + ci, row0 = si.row0 + kC * ci, len = min(kC, si.len - kC * ci);
    const int64_t tile_id = int64_t(c) * p.HV + hv;
    constexpr int row_bytes = kC * int(sizeof(D)), u_bytes = VW * int(sizeof(D));
    constexpr int PPR = row_bytes / 16, EPP = 16 / int(sizeof(D));  // 16-byte pieces per row, elements per piece
    constexpr int QT = OUT ? KT : 0, NP = 2 * KT + QT + 1 + (OUT ? 1 : 0);
    const int nz = kC - len;
    for (int idx = lane; idx < nz * (KT + QT) * PPR; idx += 32) {  // partial chunk: zero K (and Q) rows past its end
      const int pc = idx % PPR, rest = idx / PPR, r = len + rest % nz, t = rest / nz;
      D* dst = t < KT ? Kt(s, t) : Qt(s, t - KT);
      *reinterpret_cast<uint4*>(dst + r * ld + pc * EPP) = make_uint4(0u, 0u, 0u, 0u);
    }
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    if (lane == 0)
      mbar_arrive_expect(bar + s, uint32_t(KT * kC * row_bytes + (KT + QT) * len * row_bytes + kC * u_bytes +
                                           (OUT ? kC * row_bytes : 0) + kC * 4));
    __syncwarp();
    const D* kq = p.k + int64_t(row0) * qk_ld + int64_t(h) * p.K;
    const D* qq = p.q + int64_t(row0) * qk_ld + int64_t(h) * p.K;
    const D* w0 = p.w + tile_id * kC * p.K;
    for (int idx = lane; idx < NP * kC; idx += 32) {
      const int r = idx % kC, pc = idx / kC;
      if (pc < KT) {
        bulk_g2s(Wt(s, pc) + r * ld, w0 + int64_t(r) * p.K + pc * kC, row_bytes, bar + s);
      } else if (pc < 2 * KT) {
        if (r < len) bulk_g2s(Kt(s, pc - KT) + r * ld, kq + int64_t(r) * qk_ld + (pc - KT) * kC, row_bytes, bar + s);
      } else if (pc < 2 * KT + QT) {
        if (r < len)
          bulk_g2s(Qt(s, pc - 2 * KT) + r * ld, qq + int64_t(r) * qk_ld + (pc - 2 * KT) * kC, row_bytes, bar + s);
      } else if (pc == 2 * KT + QT) {
        bulk_g2s(Ut(s) + r * ld, p.u + (tile_id * kC + r) * p.V + c0, u_bytes, bar + s);
      } else {
        bulk_g2s(Pt(s) + r * ld, p.p + (tile_id * kC + r) * kC, row_bytes, bar + s);
      }
    }
    if (lane == 0) bulk_g2s(G + s * kC, p.gam + tile_id * kC, kC * 4, bar + s);
  };

  auto issue_cp_async = [&](int ci, int s) {
    const int c = si.first_chunk + ci, row0 = si.row0 + kC * ci, len = min(kC, si.len - kC * ci);
    const int64_t tile_id = int64_t(c) * p.HV + hv;
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) {
      load_tile_n<D, 64, NTH>(Wt(s, kt), p.w + tile_id * kC * p.K + kt * kC, p.K, kC);
      load_tile_n<D, 64, NTH>(Kt(s, kt), p.k + int64_t(row0) * qk_ld + int64_t(h) * p.K + kt * kC, qk_ld, len);
      if constexpr (OUT)
        load_tile_n<D, 64, NTH>(Qt(s, kt), p.q + int64_t(row0) * qk_ld + int64_t(h) * p.K + kt * kC, qk_ld, len);
    }
    load_tile_n<D, VW, NTH>(Ut(s), p.u + tile_id * kC * p.V + c0, p.V, kC);
    if constexpr (OUT) load_tile_n<D, 64, NTH>(Pt(s), p.p + tile_id * kC * kC, kC, kC);
    load_row64(G + s * kC, p.gam + tile_id * kC);
    cp_async_commit();
  };

  auto issue = [&](int ci, int s) {
    if constexpr (BULK) {
      if (threadIdx.x < 32) issue_bulk(ci, s);
    } else {
      issue_cp_async(ci, s);
    }
    if (p.l2pf > 0 && ci + p.l2pf < si.nchunks) prefetch_chunk(ci + p.l2pf);
  };

  const int nch = si.nchunks;
  constexpr bool PIPE = STAGES >= 2;
  if constexpr (PIPE) {
#pragma unroll
    for (int i = 0; i < STAGES - 1; ++i) {
      if (i < nch) issue(i, i);
      else if constexpr (!BULK) cp_async_commit();
    }
  } else {
    if (nch > 0) issue(0, 0);
  }
  for (int ci = 0; ci < nch; ++ci) {
    const int s = PIPE ? ci % STAGES : 0;
    if (!PIPE && ci > 0) {
      __syncthreads();
      issue(ci, 0);
    }
    if constexpr (BULK) {
      mbar_wait_parity(bar + s, uint32_t(ci / STAGES) & 1u);
    } else if constexpr (PIPE) {
      cp_async_wait<(PIPE ? STAGES - 2 : 0)>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if constexpr (PIPE) {
      // The stage refilled here was read by the previous step, which every thread has finished (barrier above).
      const int nx = ci + STAGES - 1;
      if (nx < nch) issue(nx, nx % STAGES);
      else if constexpr (!BULK) cp_async_commit();
    }

    const int c = si.first_chunk + ci;
    state_fwd_step<D, KT, OUT, VW>(p, hacc, base + s * ST * TE, Hs, G + s * kC, c, si.row0 + kC * ci,
                               min(kC, si.len - kC * ci), hv, c0, [] { __syncthreads(); });
  }
  if (p.ht) {
#pragma unroll
    for (int kt = 0; kt < KT; ++kt)
      acc_to_global<float>(hacc[kt], f, p.ht + ((int64_t(n) * p.HV + hv) * p.K + kt * kC) * p.V + c0, p.V, kC);
  }
}

// The layout of the state passes resolved for one call from the caller's GdnPlan (gdn/plan.h, where each
// choice is described): auto fields are chosen from the shapes and the device. Where the tensor-copy pass does
// not apply (f32, K = 256, the split layout) the cp.async layouts run.
struct StateLayout {
  bool tma = false;
  int tma_stages = 3, tma_vw = 64;
  bool bwd_tma = false;
  int bwd_tma_stages = 2, bwd_tma_vw = 64;
  bool occ2 = false;
  int vw = 64, stages = 2;
  int l2pf = 0;
  bool split = false;
  int split_stages = 3;
  bool bulk = false;
  bool ws = false;
};
StateLayout state_layout(const Plan& pl, int ctas_per_vtile64);
// The fused forward pass on tensor-copied tiles (gdn/state_fwd_tma.cu); false where its layout does not apply
// (K = 256, 32-bit coordinates exceeded, not enough shared memory): the caller falls back.
bool launch_state_fwd_tma(const Plan& pl, const StateFwdParams<bf16>& p, int vw, int stages);

}  // namespace natsl::kernels::cuda::gdn
