// CUDA entry points of the GDN family (kernels/gdn.h): the chunked forward and backward (stages in
// gdn/prep.cu, gdn/state_fwd.cu, gdn/state_bwd.cu, gdn/chunk_bwd.cu) and a token-by-token recurrent kernel
// for generation.
#include "kernels/cuda/gdn/bwd.cuh"
#include "kernels/cuda/gdn/state_fwd.cuh"

namespace natsl::kernels::cuda {

using namespace gdn;

void gdn_chunk_fwd(const GdnArgs& args, const GdnInputs& in, const Tensor& o, const Tensor& ht,
                   const GdnSaved& saved, const GdnPlan* plan) {
  const char* op = "gdn_chunk_fwd (cuda)";
  Plan pl = make_plan(args, in, op, plan);
  for (const Tensor* t : {&o, &ht, &saved.g_cumsum, &saved.a_inv}) check_aligned(*t, "output", op);
  if (pl.s.NC == 0) {  // no tokens: the final state is the initial one
    if (ht.defined()) {
      if (in.h0.defined()) ht.copy_(in.h0);
      else ht.zero_();
    }
    return;
  }
  PrepOut pr = run_prep(pl, args, in, saved, /*recompute=*/false);
  run_state_fwd(pl, args, in, pr, StateFwdOut{o, ht, Tensor(), Tensor()});
}

void gdn_chunk_bwd(const GdnArgs& args, const GdnInputs& in, const GdnSaved& saved, const Tensor& dout,
                   const Tensor& dht, const GdnGrads& grads, const GdnPlan* plan) {
  const char* op = "gdn_chunk_bwd (cuda)";
  Plan pl = make_plan(args, in, op, plan);
  const GdnShape& s = pl.s;
  NATSL_CHECK(s.HV == s.H, op, ": grouped v heads (HV = ", s.HV, " > H = ", s.H,
              ") are not implemented in the CUDA backward yet");
  for (const Tensor* t : {&saved.g_cumsum, &saved.a_inv, &dout, &dht, &grads.dq, &grads.dk, &grads.dv, &grads.dg,
                          &grads.dbeta, &grads.dh0, &grads.dmask})
    check_aligned(*t, "tensor", op);
  if (s.NC == 0) {
    if (grads.dh0.defined()) {
      if (dht.defined()) grads.dh0.copy_(dht);
      else grads.dh0.zero_();
    }
    return;
  }
  const DType D = in.q.dtype();
  PrepOut pr = run_prep(pl, args, in, saved, /*recompute=*/true);
  Tensor h = Tensor::empty({s.NC, s.HV, s.K, s.V}, D, pl.dev);
  Tensor vnew = Tensor::empty({s.NC, s.HV, kC, s.V}, D, pl.dev);
  Tensor dh = Tensor::empty({s.NC, s.HV, s.K, s.V}, D, pl.dev);
  Tensor dv2 = Tensor::empty({s.NC, s.HV, kC, s.V}, D, pl.dev);
  if (pl.tune.joint) {
    run_state_fwd_bwd(pl, args, in, pr, dout, dht, grads.dh0, h, vnew, dh, dv2);
  } else {
    run_state_fwd(pl, args, in, pr, StateFwdOut{Tensor(), Tensor(), h, vnew});
    run_state_bwd(pl, args, in, pr, dout, dht, grads.dh0, dh, dv2);
  }
  run_chunk_bwd(pl, args, in, saved, pr, dout, h, vnew, dh, dv2, grads);
}

// ---- token recurrence (generation) ----
namespace {

template <class D>
struct RecParams {
  const D *q, *k, *v;
  const float *g, *beta, *h0, *mask;
  D* o;
  float* ht;
  const SeqInfo* seqs;
  int H, HV, V;
  float scale;
};

// One CTA per (sequence, v head, 32 columns of V); thread (kg, vc) holds rows kg, kg + 8, ... of column vc.
// With a mask, each 64-token chunk starts from the carried state Hc and ends with
// H = m h + (1 - m) exp(gam_L) Hc (kernels/gdn.h).
template <class D, int K>
__global__ void __launch_bounds__(256) recurrent_kernel(RecParams<D> p) {
  constexpr int R = K / 8;
  __shared__ float ks[K], qs[K], red[8][33];
  const int n = blockIdx.x, hv = blockIdx.y, vc = threadIdx.x & 31, kg = threadIdx.x >> 5;
  const int col = blockIdx.z * 32 + vc, h = hv / (p.HV / p.H);
  const bool active = col < p.V;
  const SeqInfo si = p.seqs[n];
  const int64_t qk_ld = int64_t(p.H) * K, v_ld = int64_t(p.HV) * p.V;
  float s[R], carried[R];
  float decay = 1.f;
#pragma unroll
  for (int r = 0; r < R; ++r)
    s[r] = (p.h0 && active) ? p.h0[((int64_t(n) * p.HV + hv) * K + kg + 8 * r) * p.V + col] : 0.f;
  for (int t = 0; t < si.len; ++t) {
    const int64_t row = si.row0 + t;
    const int chunk = t / kC;
    if (p.mask && t % kC == 0) {
#pragma unroll
      for (int r = 0; r < R; ++r) carried[r] = s[r];
      decay = 1.f;
    }
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
      ks[i] = f32(p.k[row * qk_ld + int64_t(h) * K + i]);
      qs[i] = f32(p.q[row * qk_ld + int64_t(h) * K + i]);
    }
    const float a = __expf(p.g[row * p.HV + hv]), b = p.beta[row * p.HV + hv];
    const float vv = active ? f32(p.v[row * v_ld + int64_t(hv) * p.V + col]) : 0.f;
    decay *= a;
    __syncthreads();
    float part = 0.f;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      s[r] *= a;
      part = fmaf(s[r], ks[kg + 8 * r], part);
    }
    red[kg][vc] = part;
    __syncthreads();
    float hk = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) hk += red[i][vc];
    const float u = b * (vv - hk);
    float op = 0.f;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      s[r] = fmaf(ks[kg + 8 * r], u, s[r]);
      op = fmaf(s[r], qs[kg + 8 * r], op);
    }
    __syncthreads();
    red[kg][vc] = op;
    __syncthreads();
    if (kg == 0 && active) {
      float o = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) o += red[i][vc];
      p.o[row * v_ld + int64_t(hv) * p.V + col] = cvt<D>(p.scale * o);
    }
    if (p.mask && (t % kC == kC - 1 || t == si.len - 1)) {
      const float m = p.mask[(int64_t(si.first_chunk) + chunk) * p.HV + hv];
#pragma unroll
      for (int r = 0; r < R; ++r) s[r] = m * s[r] + (1.f - m) * decay * carried[r];
    }
    __syncthreads();
  }
  if (p.ht && active)
#pragma unroll
    for (int r = 0; r < R; ++r) p.ht[((int64_t(n) * p.HV + hv) * K + kg + 8 * r) * p.V + col] = s[r];
}

}  // namespace

void gdn_recurrent_fwd(const GdnArgs& args, const GdnInputs& in, const Tensor& o, const Tensor& ht) {
  Plan pl = make_plan(args, in, "gdn_recurrent_fwd (cuda)", nullptr);
  const GdnShape& s = pl.s;
  if (s.N == 0) return;
  NATSL_CUDA_DISPATCH_FLOAT(in.q.dtype(), "gdn_recurrent_fwd", T, [&] {
    RecParams<T> p{};
    set_qkv<T>(p, in);
    p.g = in.g.data<float>();
    p.beta = in.beta.data<float>();
    p.h0 = data_or_null<float>(in.h0);
    p.mask = data_or_null<float>(in.mask);
    p.o = o.data<T>();
    p.ht = data_or_null<float>(ht);
    p.seqs = pl.seq_infos();
    p.H = int(s.H);
    p.HV = int(s.HV);
    p.V = int(s.V);
    p.scale = float(args.scale);
    const dim3 grid(unsigned(s.N), unsigned(s.HV), unsigned((s.V + 31) / 32));
    switch (s.K) {
      case 64: recurrent_kernel<T, 64><<<grid, 256, 0, pl.stream>>>(p); break;
      case 128: recurrent_kernel<T, 128><<<grid, 256, 0, pl.stream>>>(p); break;
      case 256: recurrent_kernel<T, 256><<<grid, 256, 0, pl.stream>>>(p); break;
      default: NATSL_FAIL("gdn_recurrent_fwd (cuda): K must be 64, 128 or 256, got ", s.K);
    }
    NATSL_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace natsl::kernels::cuda
