// Sequential forward state pass of the CUDA GDN kernels: the kernel around state_fwd_body
// (gdn/state_fwd.cuh), its launch configurations and the choice among them, and the chunk-parallel output
// kernel of the split layout (GdnPlan::split).
#include <algorithm>

#include "kernels/cuda/gdn/state_fwd.cuh"

namespace natsl::kernels::cuda::gdn {
namespace {

// MINB: CTAs per SM the register allocation must allow (2: the one-stage occ2 layout, whose
// ~111 KB of shared memory lets two CTAs share an SM).
template <class D, int KT, int STAGES, bool OUT, int VW, bool BULK, int MINB = 1>
__global__ void __launch_bounds__(4 * VW, MINB) state_fwd_kernel(StateFwdParams<D> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  state_fwd_body<D, KT, STAGES, OUT, VW, BULK>(p, blockIdx.x, blockIdx.y, blockIdx.z, smem_raw);
}

template <class D, int KT, int STAGES, bool OUT, bool BULK>
constexpr int smem_of() {
  return BULK ? state_fwd_smem_bulk<D, KT, STAGES, OUT>() : state_fwd_smem<D, KT, STAGES, OUT>();
}

template <class D, int KT, int STAGES, bool OUT, int VW, bool BULK, int MINB = 1>
void launch(const Plan& pl, const StateFwdParams<D>& p) {
  launch_smem(state_fwd_kernel<D, KT, STAGES, OUT, VW, BULK, MINB>,
              dim3(unsigned(pl.s.N), unsigned(pl.s.HV), unsigned(pl.s.V / VW)), 4 * VW,
              smem_of<D, KT, STAGES, OUT, BULK>(), MINB, pl.stream, p);
}

// The requested number of stages, or the most below it that fits in shared memory.
template <class D, int KT, bool OUT, int VW, bool BULK>
void launch_stages(const Plan& pl, const StateFwdParams<D>& p, int stages) {
  const int avail = max_smem_per_block(pl.dev.index);
  constexpr int kSm90Max = 227 * 1024;  // layouts that cannot fit any GPU this code targets are not built
  if constexpr (smem_of<D, KT, 4, OUT, BULK>() <= kSm90Max)
    if (stages >= 4 && smem_of<D, KT, 4, OUT, BULK>() <= avail) return launch<D, KT, 4, OUT, VW, BULK>(pl, p);
  if constexpr (smem_of<D, KT, 3, OUT, BULK>() <= kSm90Max)
    if (stages >= 3 && smem_of<D, KT, 3, OUT, BULK>() <= avail) return launch<D, KT, 3, OUT, VW, BULK>(pl, p);
  if (stages >= 2 && smem_of<D, KT, 2, OUT, BULK>() <= avail) return launch<D, KT, 2, OUT, VW, BULK>(pl, p);
  NATSL_CHECK((smem_of<D, KT, 1, OUT, BULK>() <= avail), "gdn state pass: K = ", pl.s.K,
              " needs more shared memory than this GPU has");
  launch<D, KT, 1, OUT, VW, BULK>(pl, p);
}

// ---- warp-specialised pass (GdnPlan::ws) ----
// The compute warps of the plain pass also issue the next chunk's 16-byte cp.async (60 KB per step at K = 128),
// and the measured step time is about the sum of a loads-only and a compute-only pass: the issue stalls the
// warps that should be computing. Here one extra warp only loads: it fills stage s with chunk ci once the compute
// warps have released it (mbarrier empty[s], one arrival per compute warp), and its cp.async completions arrive
// on full[s] (cp.async.mbarrier.arrive.noinc, one per producer lane). The compute warps synchronise among
// themselves with named barrier 1.
__device__ __forceinline__ void cp_async_arrive_noinc(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// load_tile_n for one warp (lane = 0..31).
template <class E, int COLS>
__device__ __forceinline__ void load_tile_warp(E* s, const E* g, int64_t gld, int rows_valid, int lane) {
  constexpr int per_row = COLS * int(sizeof(E)) / 16, epp = 16 / int(sizeof(E));
  for (int idx = lane; idx < kC * per_row; idx += 32) {
    const int r = idx / per_row, pc = idx % per_row;
    const bool ok = r < rows_valid;
    cp_async16(s + r * kLd<E> + pc * epp, ok ? g + r * gld + pc * epp : g, ok);
  }
}

template <class D, int KT, int STAGES, bool OUT>
constexpr int ws_smem() {
  return state_fwd_smem<D, KT, STAGES, OUT>() + 2 * STAGES * 8;
}

template <class D, int KT, int STAGES, bool OUT, int VW>
__global__ void __launch_bounds__(4 * VW + 32, 1) state_fwd_ws_kernel(StateFwdParams<D> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int NTH = 4 * VW;  // compute threads; the producer warp comes after them
  constexpr int ST = state_fwd_stage_tiles<KT, OUT>();
  constexpr int TE = kC * kLd<D>;
  D* base = reinterpret_cast<D*>(smem_raw);
  D* Hs = base + STAGES * ST * TE;
  float* G = reinterpret_cast<float*>(Hs + (KT + 2) * TE);
  uint64_t* full = reinterpret_cast<uint64_t*>(G + STAGES * kC);
  uint64_t* empty = full + STAGES;
  const int n = blockIdx.x, hv = blockIdx.y, c0 = blockIdx.z * VW;
  const SeqInfo si = p.seqs[n];
  const int nch = si.nchunks;
  init_stage_barriers<STAGES>(full, empty, 32, NTH / 32);

  if (threadIdx.x >= NTH) {  // producer
    const int lane = threadIdx.x - NTH, h = hv / (p.HV / p.H);
    const int64_t qk_ld = int64_t(p.H) * p.K;
    for (int ci = 0; ci < nch; ++ci) {
      const int s = ci % STAGES;
      if (ci >= STAGES) mbar_wait_parity(empty + s, uint32_t(ci / STAGES - 1) & 1u);
      const int c = si.first_chunk + ci, row0 = si.row0 + kC * ci, len = min(kC, si.len - kC * ci);
      const int64_t tile_id = int64_t(c) * p.HV + hv;
      D* st = base + s * ST * TE;
      const D* kq = p.k + int64_t(row0) * qk_ld + int64_t(h) * p.K;
      const D* qq = p.q + int64_t(row0) * qk_ld + int64_t(h) * p.K;
#pragma unroll
      for (int kt = 0; kt < KT; ++kt) {
        load_tile_warp<D, 64>(st + kt * TE, p.w + tile_id * kC * p.K + kt * kC, p.K, kC, lane);
        load_tile_warp<D, 64>(st + (KT + kt) * TE, kq + kt * kC, qk_ld, len, lane);
        if constexpr (OUT) load_tile_warp<D, 64>(st + (2 * KT + kt) * TE, qq + kt * kC, qk_ld, len, lane);
      }
      load_tile_warp<D, VW>(st + (OUT ? 3 : 2) * KT * TE, p.u + tile_id * kC * p.V + c0, p.V, kC, lane);
      if constexpr (OUT) load_tile_warp<D, 64>(st + (3 * KT + 1) * TE, p.p + tile_id * kC * kC, kC, kC, lane);
      if (lane < 16) cp_async16(G + s * kC + 4 * lane, p.gam + tile_id * kC + 4 * lane, true);
      cp_async_arrive_noinc(full + s);
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    return;
  }

  const Frag f;
  Acc hacc[KT];
  load_state<KT>(hacc, f, p.h0 ? p.h0 + (int64_t(n) * p.HV + hv) * p.K * p.V : nullptr, p.V, c0);
  for (int ci = 0; ci < nch; ++ci) {
    const int s = ci % STAGES;
    mbar_wait_parity(full + s, uint32_t(ci / STAGES) & 1u);
    state_fwd_step<D, KT, OUT, VW>(p, hacc, base + s * ST * TE, Hs, G + s * kC, si.first_chunk + ci, si.row0 + kC * ci,
                               min(kC, si.len - kC * ci), hv, c0, [] { compute_sync<NTH>(); });
    release_stage(empty + s, false);
  }
  if (p.ht) {
#pragma unroll
    for (int kt = 0; kt < KT; ++kt)
      acc_to_global<float>(hacc[kt], f, p.ht + ((int64_t(n) * p.HV + hv) * p.K + kt * kC) * p.V + c0, p.V, kC);
  }
}

template <class D, int KT, int STAGES, bool OUT, int VW>
void launch_ws(const Plan& pl, const StateFwdParams<D>& p) {
  launch_smem(state_fwd_ws_kernel<D, KT, STAGES, OUT, VW>, dim3(unsigned(pl.s.N), unsigned(pl.s.HV), unsigned(pl.s.V / VW)),
              4 * VW + 32, ws_smem<D, KT, STAGES, OUT>(), 1, pl.stream, p);
}

// The requested number of stages (at least 2), or the most below it that fits; false when even 2 do not.
template <class D, int KT, bool OUT, int VW>
bool launch_ws_stages(const Plan& pl, const StateFwdParams<D>& p, int stages) {
  const int avail = max_smem_per_block(pl.dev.index);
  constexpr int kSm90Max = 227 * 1024;
  if constexpr (ws_smem<D, KT, 4, OUT>() <= kSm90Max)
    if (stages >= 4 && ws_smem<D, KT, 4, OUT>() <= avail) return launch_ws<D, KT, 4, OUT, VW>(pl, p), true;
  if constexpr (ws_smem<D, KT, 3, OUT>() <= kSm90Max)
    if (stages >= 3 && ws_smem<D, KT, 3, OUT>() <= avail) return launch_ws<D, KT, 3, OUT, VW>(pl, p), true;
  if constexpr (ws_smem<D, KT, 2, OUT>() <= kSm90Max)
    if (ws_smem<D, KT, 2, OUT>() <= avail) return launch_ws<D, KT, 2, OUT, VW>(pl, p), true;
  return false;
}

// Bulk copies and the warp-specialised pass only for bf16 (the f32 path exists for exact checks).
template <class D, int KT, bool OUT, int VW>
void launch_bulk(const Plan& pl, const StateFwdParams<D>& p, StateLayout lay) {
  if constexpr (std::is_same_v<D, bf16> && OUT)
    if (lay.tma && launch_state_fwd_tma(pl, p, lay.tma_vw, lay.tma_stages)) return;
  // Two CTAs per SM: one stage (no prefetch inside a CTA; the other CTA's step overlaps its loads).
  if constexpr (smem_of<D, KT, 1, OUT, false>() <= 113 * 1024)
    if (lay.occ2 && 2 * (smem_of<D, KT, 1, OUT, false>() + 1024) <= max_smem_per_sm(pl.dev.index))
      return launch<D, KT, 1, OUT, VW, false, 2>(pl, p);
  if constexpr (std::is_same_v<D, bf16>) {
    // The warp-specialised pass wants a stage to fill while one is computed: at least 2.
    if (lay.ws && launch_ws_stages<D, KT, OUT, VW>(pl, p, std::max(lay.stages, 2))) return;
    if (lay.bulk) return launch_stages<D, KT, OUT, VW, true>(pl, p, lay.stages);
  }
  launch_stages<D, KT, OUT, VW, false>(pl, p, lay.stages);
}

template <class D, int KT, bool OUT>
void launch_vw(const Plan& pl, const StateFwdParams<D>& p, StateLayout lay) {
  if (lay.vw == 32) return launch_bulk<D, KT, OUT, 32>(pl, p, lay);
  launch_bulk<D, KT, OUT, 64>(pl, p, lay);
}

template <class D, bool OUT>
void launch_kt(const Plan& pl, const StateFwdParams<D>& p, StateLayout lay) {
  if (lay.split && !OUT) lay.stages = lay.split_stages;
  dispatch_kt<D>(pl.s.K, "gdn state pass", [&](auto kt) { launch_vw<D, decltype(kt)::value, OUT>(pl, p, lay); });
}

// ---- split layout: the output of every chunk at once from the stored states ----
//   o = scale diag(e) Q h_n + p v_new   per (chunk, v head, 64 columns of V); 8 warps, one 64x64 tile.
template <class D>
struct ChunkOutParams {
  const D *q, *h, *vnew, *p;
  const float* gam;
  D* o;
  const ChunkInfo* chunks;
  int H, HV, K, V;
  float scale;
};

template <class D, int KT>
constexpr int chunk_out_smem() {
  return (2 * KT + 2) * kTileBytes<D> + kC * 4;
}

// One output tile (64 tokens x 64 columns of V) from shared tiles: a = scale diag(e) Q h + p v_new, Q and h as
// KT 64x64 tiles, G the chunk's gamma row, rows >= len zero.
template <class D, int KT>
__device__ __forceinline__ void chunk_out_tile(Acc& a, const Frag& f, const D* Qs, const D* Hs, const D* Ps,
                                               const D* Vn, const float* G, int len, float scale) {
  constexpr int TE = kC * kLd<D>;
  zero(a);
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) tile_mma<false, false>(a, Qs + kt * TE, Hs + kt * TE);
  scale_rows_exp(a, f, G, len, scale);
  tile_mma<false, false>(a, Ps, Vn);
}

template <class D, int KT>
__global__ void __launch_bounds__(kThreads) chunk_out_kernel(ChunkOutParams<D> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int TE = kC * kLd<D>;
  D* Qs = reinterpret_cast<D*>(smem_raw);
  D* Hs = Qs + KT * TE;
  D* Ps = Hs + KT * TE;
  D* Vs = Ps + TE;
  float* G = reinterpret_cast<float*>(Vs + TE);
  const int c = blockIdx.x, hv = blockIdx.y, c0 = blockIdx.z * kC, h = hv / (p.HV / p.H);
  const ChunkInfo ci = p.chunks[c];
  const int64_t qk_ld = int64_t(p.H) * p.K, tile_id = int64_t(c) * p.HV + hv;
#pragma unroll
  for (int kt = 0; kt < KT; ++kt) {
    load_tile<D>(Qs + kt * TE, p.q + int64_t(ci.row0) * qk_ld + int64_t(h) * p.K + kt * kC, qk_ld, ci.len);
    load_tile<D>(Hs + kt * TE, p.h + (tile_id * p.K + kt * kC) * p.V + c0, p.V, kC);
  }
  load_tile<D>(Ps, p.p + tile_id * kC * kC, kC, kC);
  load_tile<D>(Vs, p.vnew + tile_id * kC * p.V + c0, p.V, kC);
  load_row64(G, p.gam + tile_id * kC);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  const Frag f;
  Acc a;
  chunk_out_tile<D, KT>(a, f, Qs, Hs, Ps, Vs, G, ci.len, p.scale);
  D* og = p.o + (int64_t(ci.row0) * p.HV + hv) * p.V + c0;
  const int64_t o_ld = int64_t(p.HV) * p.V;
  if constexpr (std::is_same_v<D, bf16>) acc_to_global_staged<D>(a, f, Qs, og, o_ld, ci.len, kThreads);
  else acc_to_global<D>(a, f, og, o_ld, ci.len);
}

// The same output with one CTA per (chunk, v head) looping over the V tiles (the default of the split layout): Q and P are
// read once per chunk instead of once per V tile (at K = 128, V = 256: ~470 MB moved instead of ~690), the
// next tile's h and v_new loading while this one computes. Same products in the same order: the same bits.
template <class D, int KT>
constexpr int chunk_out2_smem() {
  return (KT + 1 + 2 * (KT + 1) + 1) * kTileBytes<D> + kC * 4;
}

template <class D, int KT>
__global__ void __launch_bounds__(kThreads) chunk_out2_kernel(ChunkOutParams<D> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int TE = kC * kLd<D>;
  D* Qs = reinterpret_cast<D*>(smem_raw);
  D* Ps = Qs + KT * TE;
  D* buf = Ps + TE;                  // two buffers of (KT h tiles, the v_new tile)
  D* stage = buf + 2 * (KT + 1) * TE;  // the staging tile of the stores
  float* G = reinterpret_cast<float*>(stage + TE);
  const int c = blockIdx.x, hv = blockIdx.y, h = hv / (p.HV / p.H);
  const ChunkInfo ci = p.chunks[c];
  const int64_t qk_ld = int64_t(p.H) * p.K, tile_id = int64_t(c) * p.HV + hv;
  const int VT = p.V / kC;
  auto load_vtile = [&](int vt, int b) {
    D* Hs = buf + b * (KT + 1) * TE;
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) load_tile<D>(Hs + kt * TE, p.h + (tile_id * p.K + kt * kC) * p.V + vt * kC, p.V, kC);
    load_tile<D>(Hs + KT * TE, p.vnew + tile_id * kC * p.V + vt * kC, p.V, kC);
    cp_async_commit();
  };
#pragma unroll
  for (int kt = 0; kt < KT; ++kt)
    load_tile<D>(Qs + kt * TE, p.q + int64_t(ci.row0) * qk_ld + int64_t(h) * p.K + kt * kC, qk_ld, ci.len);
  load_tile<D>(Ps, p.p + tile_id * kC * kC, kC, kC);
  load_row64(G, p.gam + tile_id * kC);
  cp_async_commit();
  load_vtile(0, 0);
  const Frag f;
  D* og = p.o + int64_t(ci.row0) * p.HV * p.V + int64_t(hv) * p.V;
  const int64_t o_ld = int64_t(p.HV) * p.V;
  for (int vt = 0; vt < VT; ++vt) {
    // The buffer refilled here was read by step vt - 1, which every thread finished (the store's barriers).
    if (vt + 1 < VT) {
      load_vtile(vt + 1, (vt + 1) & 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const D* Hs = buf + (vt & 1) * (KT + 1) * TE;
    Acc a;
    chunk_out_tile<D, KT>(a, f, Qs, Hs, Ps, Hs + KT * TE, G, ci.len, p.scale);
    if constexpr (std::is_same_v<D, bf16>) acc_to_global_staged<D>(a, f, stage, og + vt * kC, o_ld, ci.len, kThreads);
    else {
      acc_to_global<D>(a, f, og + vt * kC, o_ld, ci.len);
      __syncthreads();
    }
  }
}

template <class D, int KT>
void launch_chunk_out(const Plan& pl, const ChunkOutParams<D>& p) {
  // One CTA per (chunk, head) unless the plan asks for one per V tile (BENCHMARKS.md, kernel history).
  if (!pl.tune.out_per_vtile && chunk_out2_smem<D, KT>() <= max_smem_per_block(pl.dev.index))
    return launch_smem(chunk_out2_kernel<D, KT>, dim3(unsigned(pl.s.NC), unsigned(pl.s.HV)), kThreads,
                       chunk_out2_smem<D, KT>(), 1, pl.stream, p);
  launch_smem(chunk_out_kernel<D, KT>, dim3(unsigned(pl.s.NC), unsigned(pl.s.HV), unsigned(pl.s.V / kC)), kThreads,
              chunk_out_smem<D, KT>(), 1, pl.stream, p);
}

template <class D>
void run_chunk_out(const Plan& pl, const GdnArgs& args, const GdnInputs& in, const PrepOut& pr, const Tensor& h,
                   const Tensor& vnew, const Tensor& o) {
  ChunkOutParams<D> p{};
  p.q = in.q.data<D>();
  p.h = h.data<D>();
  p.vnew = vnew.data<D>();
  p.p = pr.p.data<D>();
  p.gam = pr.gam.data<float>();
  p.o = o.data<D>();
  p.chunks = pl.chunks();
  set_sizes(p, pl.s, args);
  dispatch_kt<D>(pl.s.K, "gdn output", [&](auto kt) { launch_chunk_out<D, decltype(kt)::value>(pl, p); });
}

}  // namespace

StateLayout state_layout(const Plan& pl, int ctas_per_vtile64) {
  StateLayout lay;
  int sms = 0;
  NATSL_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, pl.dev.index));
  // Each step of the pass is latency bound (about the same time for 64 or 32 columns, one CTA per SM at two
  // stages), so narrower tiles pay when the 32-column CTAs still fit in one wave.
  const bool one_wave = 2 * ctas_per_vtile64 <= sms;
  if (one_wave) lay.vw = 32;
  const GdnPlan& t = pl.tune;
  const int vw = t.vtile, st = t.stages;
  if (vw == 32 || vw == 64) lay.vw = vw;
  if (st == 1 || st == 2) lay.stages = st;
  if (pl.s.V % lay.vw != 0) lay.vw = 64;
  lay.l2pf = std::max(0, t.l2pf);
  // The plain fused pass is faster than the split at both benchmark shapes (BENCHMARKS.md, kernel history).
  lay.split = t.split;
  const int ss = t.split_stages;
  if (ss >= 2 && ss <= 4) lay.split_stages = ss;
  lay.bulk = t.fwd_bulk;
  lay.ws = t.ws;
  // Two CTAs per SM pay where one per SM leaves a second, partial wave, and cost where one wave holds them all.
  lay.occ2 = t.occ2.value_or(ctas_per_vtile64 > sms);
  lay.tma = t.tma;
  const int tst = t.tma_stages;
  if (tst >= 1 && tst <= 3) lay.tma_stages = tst;
  if (lay.tma && vw != 64) lay.tma_vw = 32;
  // The backward's passes on tensor-copied tiles pay where the reverse pass at V tile 32 is one wave; elsewhere
  // they tie with the cp.async passes. ctas_per_vtile64 counts both passes' CTAs for the joint launch, which is
  // the reverse pass's count at V tile 32.
  const int rev32 = int(int64_t(pl.s.N) * pl.s.HV * (pl.s.V / 32));
  const bool bwd_one_wave = pl.s.V % 32 == 0 && rev32 <= sms;
  lay.bwd_tma = t.bwd_tma.value_or(bwd_one_wave);
  if (bwd_one_wave) {
    lay.bwd_tma_vw = 32;
    lay.bwd_tma_stages = 2 * int(int64_t(pl.s.N) * pl.s.HV * (pl.s.V / kC)) == ctas_per_vtile64 ? 1 : 2;
  }
  const int bvw = t.bwd_tma_vtile, bst = t.bwd_tma_stages;
  if (bvw == 32 || bvw == 64) lay.bwd_tma_vw = bvw;
  if (bst >= 1 && bst <= 3) lay.bwd_tma_stages = bst;
  return lay;
}

void run_state_fwd(const Plan& pl, const GdnArgs& args, const GdnInputs& in, const PrepOut& pr,
                   const StateFwdOut& out) {
  const GdnShape& s = pl.s;
  if (s.N == 0) return;
  StateLayout lay = state_layout(pl, int(s.N * s.HV * (s.V / kC)));
  const bool split = out.o.defined() && lay.split;
  if (!out.o.defined()) lay.split = lay.bulk = lay.ws = false;  // the backward's h, v_new pass keeps its layout
  NATSL_CUDA_DISPATCH_FLOAT(in.q.dtype(), "gdn state pass", T, [&] {
    if (split) {
      // The pass stores h_n and v_new, then the output of every chunk is computed at once.
      Tensor h = Tensor::empty({s.NC, s.HV, s.K, s.V}, in.q.dtype(), pl.dev);
      Tensor vnew = Tensor::empty({s.NC, s.HV, kC, s.V}, in.q.dtype(), pl.dev);
      StateFwdParams<T> p = state_fwd_params<T>(pl, args, in, pr, StateFwdOut{Tensor(), out.ht, h, vnew});
      p.l2pf = lay.l2pf;
      launch_kt<T, false>(pl, p, lay);
      run_chunk_out<T>(pl, args, in, pr, h, vnew, out.o);
      return;
    }
    StateFwdParams<T> p = state_fwd_params<T>(pl, args, in, pr, out);
    if (p.o) {
      p.l2pf = lay.l2pf;
      launch_kt<T, true>(pl, p, lay);
    } else {
      launch_kt<T, false>(pl, p, lay);
    }
  });
}

}  // namespace natsl::kernels::cuda::gdn
