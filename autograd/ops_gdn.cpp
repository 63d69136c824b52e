#include "autograd/ops_gdn.h"

#include "autograd/engine.h"
#include "autograd/function.h"
#include "autograd/ops.h"
#include "kernels/gdn.h"
#include "kernels/gdn_gates.h"
#include "kernels/nn.h"  // stat_dtype

namespace natsl {

GdnOpResult gated_delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
                             double scale, const Tensor& h0, const Tensor& mask, bool output_final_state,
                             const std::vector<int64_t>& cu_seqlens) {
  kernels::GdnArgs args;
  args.scale = scale;
  args.cu_seqlens = cu_seqlens;
  kernels::GdnInputs in{q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), beta.contiguous(),
                        h0.defined() ? h0.contiguous() : Tensor(), mask.defined() ? mask.contiguous() : Tensor()};
  kernels::GdnShape s = kernels::GdnShape::of(in.q, in.v, args);
  DType state_dt = q.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Device dev = q.device();

  GdnOpResult r;
  r.o = Tensor::empty(v.shape(), v.dtype(), dev);
  if (output_final_state) r.ht = Tensor::empty({s.N, s.HV, s.K, s.V}, state_dt, dev);
  bool need_grad = any_requires_grad({&q, &k, &v, &g, &beta, &h0, &mask});
  kernels::GdnSaved saved;
  if (need_grad) {
    saved.g_cumsum = Tensor::empty({s.B, s.T, s.HV}, state_dt, dev);
    saved.a_inv = Tensor::empty({s.B, s.T, s.HV, kernels::kGdnChunk}, q.dtype(), dev);
  }
  kernels::gdn_chunk_fwd(args, in, r.o, r.ht, saved);
  if (!need_grad) return r;

  bool want[7] = {q.requires_grad(), k.requires_grad(), v.requires_grad(), g.requires_grad(),
                  beta.requires_grad(), h0.defined() && h0.requires_grad(), mask.defined() && mask.requires_grad()};
  kernels::GdnInputs saved_in{in.q.detach(), in.k.detach(), in.v.detach(), in.g.detach(), in.beta.detach(),
                              in.h0.defined() ? in.h0.detach() : Tensor(),
                              in.mask.defined() ? in.mask.detach() : Tensor()};
  std::vector<Tensor*> outs{&r.o};
  if (output_final_state) outs.push_back(&r.ht);
  Shape ht_shape{s.N, s.HV, s.K, s.V};
  record("gated_delta_rule", {q, k, v, g, beta, h0, mask}, outs,
         [=](std::vector<Tensor>& grads) -> std::vector<Tensor> {
           Tensor dout = grad_or_zeros(grads, 0, saved_in.v);
           Tensor dht = grads.size() > 1 && grads[1].defined() ? grads[1].contiguous() : Tensor();
           kernels::GdnGrads gr;
           // The kernel writes dq..dbeta together; allocate them all, return the ones asked for.
           gr.dq = Tensor::empty(saved_in.q.shape(), saved_in.q.dtype(), dev);
           gr.dk = Tensor::empty(saved_in.k.shape(), saved_in.k.dtype(), dev);
           gr.dv = Tensor::empty(saved_in.v.shape(), saved_in.v.dtype(), dev);
           gr.dg = Tensor::empty(saved_in.g.shape(), saved_in.g.dtype(), dev);
           gr.dbeta = Tensor::empty(saved_in.beta.shape(), saved_in.beta.dtype(), dev);
           if (want[5]) gr.dh0 = Tensor::empty(ht_shape, saved_in.h0.dtype(), dev);
           if (want[6]) gr.dmask = Tensor::empty(saved_in.mask.shape(), saved_in.mask.dtype(), dev);
           kernels::gdn_chunk_bwd(args, saved_in, saved, dout, dht, gr);
           std::vector<Tensor> out{gr.dq, gr.dk, gr.dv, gr.dg, gr.dbeta, gr.dh0, gr.dmask};
           for (int i = 0; i < 7; ++i)
             if (!want[i]) out[size_t(i)] = Tensor();
           return out;
         });
  return r;
}

GdnOpResult gated_delta_rule_recurrent(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                       const Tensor& beta, double scale, const Tensor& h0) {
  const int64_t K = q.dim() == 4 ? q.size(3) : 0;
  if (q.device().is_cuda() && q.dim() == 4 && q.size(1) == 1 && K != 64 && K != 128 && K != 256)
    return gated_delta_rule_step_ops(q, k, v, g, beta, scale, h0);
  kernels::GdnArgs args;
  args.scale = scale;
  kernels::GdnInputs in{q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), beta.contiguous(),
                        h0.defined() ? h0.contiguous() : Tensor(), Tensor()};
  const kernels::GdnShape s = kernels::GdnShape::of(in.q, in.v, args);
  GdnOpResult r;
  r.o = Tensor::empty(v.shape(), v.dtype(), q.device());
  r.ht = Tensor::empty({s.N, s.HV, s.K, s.V}, q.dtype() == DType::f64 ? DType::f64 : DType::f32, q.device());
  kernels::gdn_recurrent_fwd(args, in, r.o, r.ht);
  return r;
}

GdnOpResult gated_delta_rule_step_ops(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                      const Tensor& beta, double scale, const Tensor& h0) {
  NATSL_CHECK(q.dim() == 4 && q.size(1) == 1 && v.dim() == 4 && v.size(2) == q.size(2),
              "gated_delta_rule_step_ops: expects one token with as many v heads as q/k heads, got q ", q.str(),
              " and v ", v.str());
  NoGradGuard no_grad;
  const int64_t B = q.size(0), H = q.size(2), K = q.size(3), V = v.size(3);
  const DType S = q.dtype() == DType::f64 ? DType::f64 : DType::f32;
  const auto column = [&](const Tensor& x, int64_t n) { return to_dtype(reshape(x, {B, H, n, 1}), S); };
  const Tensor qc = column(q, K), kc = column(k, K), vc = column(v, V);
  const Tensor h_in = h0.defined() ? h0 : Tensor::zeros({B, H, K, V}, S, q.device());
  Tensor h = mul(h_in, exp(reshape(to_dtype(g, S), {B, H, 1, 1})));                      // decay first
  const Tensor u = mul(reshape(to_dtype(beta, S), {B, H, 1, 1}), sub(vc, matmul(h, kc, true)));  // [B, H, V, 1]
  h = add(h, matmul(kc, u, false, true));                                                  // rank-1 write
  GdnOpResult r;
  r.o = to_dtype(reshape(mul_scalar(matmul(h, qc, true), scale), {B, 1, H, V}), v.dtype());  // read after it
  r.ht = h;
  return r;
}

GdnGates gdn_gates(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias, double beta_scale) {
  NATSL_CHECK(a.defined() && b.defined() && A_log.defined() && dt_bias.defined(),
              "gdn_gates: a, b, A_log and dt_bias are all required");
  const Tensor ac = a.contiguous().detach(), bc = b.contiguous().detach();
  const Tensor Ac = A_log.contiguous().detach(), dtc = dt_bias.contiguous().detach();
  const DType S = kernels::stat_dtype(a.dtype());
  GdnGates r{Tensor::empty(a.shape(), S, a.device()), Tensor::empty(a.shape(), S, a.device())};
  kernels::gdn_gates_fwd(ac, bc, Ac, dtc, beta_scale, r.g, r.beta);
  if (!any_requires_grad({&a, &b, &A_log, &dt_bias})) return r;
  const bool need_a = a.requires_grad(), need_b = b.requires_grad();
  const bool need_A = A_log.requires_grad(), need_dt = dt_bias.requires_grad();
  // Parameters (leaves) are kept to ask the engine for their gradient sinks in the backward.
  const Tensor A_leaf = need_A && A_log.is_leaf() ? A_log : Tensor();
  const Tensor dt_leaf = need_dt && dt_bias.is_leaf() ? dt_bias : Tensor();
  record("gdn_gates", {a, b, A_log, dt_bias}, {&r.g, &r.beta}, [=](std::vector<Tensor>& grads) -> std::vector<Tensor> {
    const Tensor dg = grads.size() > 0 && grads[0].defined() ? grads[0].contiguous() : Tensor();
    const Tensor dbeta = grads.size() > 1 && grads[1].defined() ? grads[1].contiguous() : Tensor();
    const Device dev = ac.device();
    kernels::GdnGatesGrads gr;
    // A parameter's gradient: into its .grad when the engine offers it, else a fresh one in its dtype.
    auto param_grad = [&](const Tensor& leaf, const Tensor& p, bool& accumulate) {
      const Tensor sink = leaf.defined() ? grad_sink(leaf) : Tensor();
      accumulate = sink.defined();
      return sink.defined() ? sink : Tensor::empty(p.shape(), p.dtype(), dev);
    };
    if (dg.defined()) {  // without it (g unused) a, A_log and dt_bias get no gradient, as in the composed ops
      if (need_a) gr.da = Tensor::empty(ac.shape(), ac.dtype(), dev);
      if (need_A) gr.dA_log = param_grad(A_leaf, Ac, gr.accumulate_A_log);
      if (need_dt) gr.ddt_bias = param_grad(dt_leaf, dtc, gr.accumulate_dt_bias);
    }
    if (dbeta.defined() && need_b) gr.db = Tensor::empty(bc.shape(), bc.dtype(), dev);
    kernels::gdn_gates_bwd(ac, bc, Ac, dtc, beta_scale, dg, dbeta, gr);
    return {gr.da, gr.db, gr.dA_log, gr.ddt_bias};
  });
  return r;
}

}  // namespace natsl
