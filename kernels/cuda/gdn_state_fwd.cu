// Sequential forward state pass of the CUDA GDN kernels (gdn-algorithm.md §3 steps 3-4), per chunk n:
//   v_new = u - w h_n                                   (h_n rounded to D for the tensor cores)
//   o     = scale diag(e) Q h_n + p v_new               (forward only: the output kernel fused in)
//   h_n+1 = e_L h_n + m_n K^T diag(exp(gam_L - gam)) v_new
// The next chunk's tiles are prefetched with cp.async while this one computes (two stages where shared
// memory allows).
#include "kernels/cuda/gdn_plan.cuh"

namespace natsl::kernels::cuda::gdn {
namespace {

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
};

template <class D, int KT, bool OUT>
constexpr int stage_tiles() {
  return KT * (OUT ? 3 : 2) + (OUT ? 2 : 1);
}
template <class D, int KT, int STAGES, bool OUT>
constexpr int state_fwd_smem() {
  return (STAGES * stage_tiles<D, KT, OUT>() + KT + 2) * kTileBytes<D> + STAGES * kC * 4;
}

template <class D, int KT, int STAGES, bool OUT>
__global__ void __launch_bounds__(kThreads, 1) state_fwd_kernel(StateFwdParams<D> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int ST = stage_tiles<D, KT, OUT>();
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

  const int n = blockIdx.x, hv = blockIdx.y, vt = blockIdx.z, h = hv / (p.HV / p.H);
  const SeqInfo si = p.seqs[n];
  const int64_t qk_ld = int64_t(p.H) * p.K;
  const Frag f;

  Acc hacc[KT];
#pragma unroll
  for (int kt = 0; kt < KT; ++kt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        hacc[kt][nt][e] = p.h0 ? p.h0[((int64_t(n) * p.HV + hv) * p.K + kt * kC + f.row(e)) * p.V + vt * kC +
                                      f.col(nt, e)]
                               : 0.f;

  auto issue = [&](int ci, int s) {
    const int c = si.first_chunk + ci, row0 = si.row0 + kC * ci, len = min(kC, si.len - kC * ci);
    const int64_t tile_id = int64_t(c) * p.HV + hv;
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) {
      load_tile<D>(Wt(s, kt), p.w + tile_id * kC * p.K + kt * kC, p.K, kC);
      load_tile<D>(Kt(s, kt), p.k + int64_t(row0) * qk_ld + int64_t(h) * p.K + kt * kC, qk_ld, len);
      if constexpr (OUT) load_tile<D>(Qt(s, kt), p.q + int64_t(row0) * qk_ld + int64_t(h) * p.K + kt * kC, qk_ld, len);
    }
    load_tile<D>(Ut(s), p.u + tile_id * kC * p.V + vt * kC, p.V, kC);
    if constexpr (OUT) load_tile<D>(Pt(s), p.p + tile_id * kC * kC, kC, kC);
    load_row64(G + s * kC, p.gam + tile_id * kC);
    cp_async_commit();
  };

  const int nch = si.nchunks;
  if (nch > 0) issue(0, 0);
  for (int ci = 0; ci < nch; ++ci) {
    const int s = STAGES == 2 ? (ci & 1) : 0;
    if (STAGES == 1 && ci > 0) {
      __syncthreads();
      issue(ci, 0);
    }
    cp_async_wait<0>();
    __syncthreads();
    if (STAGES == 2 && ci + 1 < nch) issue(ci + 1, s ^ 1);

    const int c = si.first_chunk + ci, row0 = si.row0 + kC * ci, len = min(kC, si.len - kC * ci);
    const int64_t tile_id = int64_t(c) * p.HV + hv;
    const float* g = G + s * kC;
    const float gL = g[len - 1], eL = __expf(gL);
    const float m = p.mask ? p.mask[int64_t(c) * p.HV + hv] : 1.f;

    // 1. the state entering the chunk, as D, for the tensor cores
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) {
      acc_to_tile<D>(hacc[kt], f, Hs + kt * TE);
      if constexpr (!OUT) acc_to_global<D>(hacc[kt], f, p.h_out + (tile_id * p.K + kt * kC) * p.V + vt * kC, p.V, kC);
    }
    __syncthreads();

    // 2. v_new = u - w h_n, and the inter-chunk output term q h_n
    Acc av, ao;
    zero(av);
    if constexpr (OUT) zero(ao);
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) {
      tile_mma<false, false>(av, Wt(s, kt), Hs + kt * TE);
      if constexpr (OUT) tile_mma<false, false>(ao, Qt(s, kt), Hs + kt * TE);
    }
    const D* U = Ut(s);
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const float2 uu = load2<D>(U + f.row(2 * hh) * ld + f.col(nt, 0));
        av[nt][2 * hh] = uu.x - av[nt][2 * hh];
        av[nt][2 * hh + 1] = uu.y - av[nt][2 * hh + 1];
      }
    acc_to_tile<D>(av, f, Vn);
    acc_to_tile<D>(av, f, Vs, [&](int i, int, float x) { return i < len ? m * __expf(gL - g[i]) * x : 0.f; });
    if constexpr (!OUT) acc_to_global<D>(av, f, p.vnew_out + tile_id * kC * p.V + vt * kC, p.V, kC);
    __syncthreads();

    // 3. h_n+1 = e_L h_n + K^T (m exp(gam_L - gam) v_new)
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) {
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) hacc[kt][nt][e] *= eL;
      tile_mma<true, false>(hacc[kt], Kt(s, kt), Vs);
    }

    // 4. o = scale e_i (q h_n)_i + p v_new
    if constexpr (OUT) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int i = f.row(2 * hh);
        const float sc = i < len ? p.scale * __expf(g[i]) : 0.f;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          ao[nt][2 * hh] *= sc;
          ao[nt][2 * hh + 1] *= sc;
        }
      }
      tile_mma<false, false>(ao, Pt(s), Vn);
      acc_to_global<D>(ao, f, p.o + (int64_t(row0) * p.HV + hv) * p.V + vt * kC, int64_t(p.HV) * p.V, len);
    }
  }
  if (p.ht) {
#pragma unroll
    for (int kt = 0; kt < KT; ++kt)
      acc_to_global<float>(hacc[kt], f, p.ht + ((int64_t(n) * p.HV + hv) * p.K + kt * kC) * p.V + vt * kC, p.V, kC);
  }
}

template <class D, int KT, int STAGES, bool OUT>
void launch(const Plan& pl, const StateFwdParams<D>& p) {
  constexpr int smem = state_fwd_smem<D, KT, STAGES, OUT>();
  auto kern = state_fwd_kernel<D, KT, STAGES, OUT>;
  NATSL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kern<<<dim3(unsigned(pl.s.N), unsigned(pl.s.HV), unsigned(pl.s.V / kC)), kThreads, smem, pl.stream>>>(p);
  NATSL_CUDA_CHECK_LAUNCH();
}

template <class D, int KT, bool OUT>
void launch_stages(const Plan& pl, const StateFwdParams<D>& p) {
  const int avail = max_smem_per_block(pl.dev.index);
  if (state_fwd_smem<D, KT, 2, OUT>() <= avail) return launch<D, KT, 2, OUT>(pl, p);
  NATSL_CHECK((state_fwd_smem<D, KT, 1, OUT>() <= avail), "gdn state pass: K = ", pl.s.K,
              " needs more shared memory than this GPU has");
  launch<D, KT, 1, OUT>(pl, p);
}

template <class D, bool OUT>
void launch_kt(const Plan& pl, const StateFwdParams<D>& p) {
  switch (pl.s.K) {
    case 64: return launch_stages<D, 1, OUT>(pl, p);
    case 128: return launch_stages<D, 2, OUT>(pl, p);
    case 256:
      if constexpr (std::is_same_v<D, bf16>) return launch_stages<D, 4, OUT>(pl, p);
      [[fallthrough]];
    default: NATSL_FAIL("gdn state pass: unsupported K = ", pl.s.K, " for ", dtype_name(dtype_v<D>));
  }
}

}  // namespace

void run_state_fwd(const Plan& pl, const GdnArgs& args, const GdnInputs& in, const PrepOut& pr,
                   const StateFwdOut& out) {
  const GdnShape& s = pl.s;
  if (s.N == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(in.q.dtype(), "gdn state pass", T, [&] {
    StateFwdParams<T> p{};
    p.q = in.q.data<T>();
    p.k = in.k.data<T>();
    p.w = pr.w.data<T>();
    p.u = pr.u.data<T>();
    p.p = pr.p.data<T>();
    p.gam = pr.gam.data<float>();
    p.h0 = in.h0.defined() ? in.h0.data<float>() : nullptr;
    p.mask = in.mask.defined() ? in.mask.data<float>() : nullptr;
    p.o = out.o.defined() ? out.o.data<T>() : nullptr;
    p.ht = out.ht.defined() ? out.ht.data<float>() : nullptr;
    p.h_out = out.h.defined() ? out.h.data<T>() : nullptr;
    p.vnew_out = out.vnew.defined() ? out.vnew.data<T>() : nullptr;
    p.seqs = pl.seq_infos();
    p.H = int(s.H);
    p.HV = int(s.HV);
    p.K = int(s.K);
    p.V = int(s.V);
    p.scale = float(args.scale);
    if (p.o) launch_kt<T, true>(pl, p);
    else launch_kt<T, false>(pl, p);
  });
}

}  // namespace natsl::kernels::cuda::gdn
