// CPU reference of Gated DeltaNet's gates (kernels/gdn_gates.h): the per-element expressions of the composed
// CPU kernels (kernels/cpu/elementwise.cpp with kernels/cpu/math.h's sigmoid and softplus), each rounded to S
// where those kernels store an S tensor. Nothing here is a product added to something in one expression: the
// build contracts such pairs into fused multiply-adds, which the composed kernels (storing between ops) never do.
#include <cmath>
#include <vector>

#include "kernels/cpu/math.h"
#include "kernels/elementwise.h"
#include "kernels/gdn_gates.h"

namespace natsl::kernels::cpu {
namespace {

// Heads and rows of a [..., H] tensor.
struct Rows {
  int64_t H, N;
};
Rows rows_of(const Tensor& a) {
  const int64_t H = a.size(-1);
  return {H, H > 0 ? a.numel() / H : 0};
}

// The rows of a [..., H] tensor and, per head, exp(A_log) and dt_bias in S: what both directions start from.
template <class S>
struct Heads {
  int64_t H, N;
  std::vector<S> A, dt;
};
template <class S, class P>
Heads<S> heads_of(const Tensor& a, const Tensor& A_log, const Tensor& dt_bias) {
  const auto [H, N] = rows_of(a);
  Heads<S> r{H, N, std::vector<S>(size_t(A_log.numel())), std::vector<S>(size_t(A_log.numel()))};
  const P* ap = A_log.data<P>();
  const P* dp = dt_bias.data<P>();
  for (int64_t h = 0; h < A_log.numel(); ++h) {
    r.A[size_t(h)] = std::exp(convert<S>(ap[h]));
    r.dt[size_t(h)] = convert<S>(dp[h]);
  }
  return r;
}

template <class D, class P>
void fwd(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias, double c, const Tensor& g,
         const Tensor& beta) {
  using S = stat_t<D>;
  const auto [H, N, A, dt] = heads_of<S, P>(a, A_log, dt_bias);
  const D* ap = a.data<D>();
  const D* bp = b.data<D>();
  S* gp = g.data<S>();
  S* betap = beta.data<S>();
  const bool scaled = c != 1.0;  // the composed path has no mul_scalar then
  const S cs = S(c);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t i = n * H + h;
      const S s = sigmoid(convert<S>(bp[i]));
      betap[i] = scaled ? cs * s : s;
      const S u = convert<S>(ap[i]) + dt[size_t(h)];
      const S m = A[size_t(h)] * softplus(u);
      gp[i] = S(-1) * m;
    }
}

template <class D, class P>
void bwd_terms(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias, double c,
               const Tensor& dg, const Tensor& dbeta, const Tensor& da, const Tensor& db, const Tensor& dA_terms,
               const Tensor& ddt_terms) {
  using S = stat_t<D>;
  const auto [H, N, A, dt] = heads_of<S, P>(a, A_log, dt_bias);
  const D* ap = a.data<D>();
  const D* bp = b.data<D>();
  const S* dgp = dg.defined() ? dg.data<S>() : nullptr;
  const S* dbetap = dbeta.defined() ? dbeta.data<S>() : nullptr;
  D* dap = da.defined() ? da.data<D>() : nullptr;
  D* dbp = db.defined() ? db.data<D>() : nullptr;
  S* dAp = dA_terms.defined() ? dA_terms.data<S>() : nullptr;
  S* ddtp = ddt_terms.defined() ? ddt_terms.data<S>() : nullptr;
  const bool scaled = c != 1.0;
  const S cs = S(c);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t i = n * H + h;
      if (dgp && (dap || dAp || ddtp)) {
        const S dm = S(-1) * dgp[i];                 // neg's backward
        const S u = convert<S>(ap[i]) + dt[size_t(h)];
        const S dsp = dm * A[size_t(h)];              // mul's backward to softplus(u)
        const S du = dsp * (u > S(20) ? S(1) : sigmoid(u));
        if (dap) dap[i] = convert<D>(du);
        if (ddtp) ddtp[i] = du;
        if (dAp) dAp[i] = dm * softplus(u);           // mul's backward to exp(A_log), before its sum
      }
      if (dbetap && dbp) {
        const S s = sigmoid(convert<S>(bp[i]));
        const S dy = scaled ? cs * dbetap[i] : dbetap[i];
        dbp[i] = convert<D>(dy * (s * (S(1) - s)));
      }
    }
}

// out = value (the gradient as the engine's first copy makes it: value [H] in the parameter's dtype), or out + value
// (to_dtype's backward into its sink, kernels::add_into: value [H] in out's dtype).
void write_param_grad(const Tensor& value, const Tensor& out, bool accumulate) {
  if (accumulate) cpu::binary_fwd(BinaryOp::Add, out, value.dtype() == out.dtype() ? value : value.to(out.dtype()), out);
  else out.copy_(value);
}

template <class S>
void param_grads(const Tensor& A_log, const Tensor& dt_bias, const Tensor& dA_sum, const Tensor& ddt_sum,
                 const GdnGatesGrads& grads) {
  if (grads.dA_log.defined()) {
    // exp's backward: dA_log = dA exp(A_log), in S, then to_dtype's backward to the parameter's dtype.
    const Tensor A_s = A_log.to(dtype_v<S>);
    Tensor d = Tensor::empty(A_s.shape(), dtype_v<S>);
    const S* ap = A_s.data<S>();
    const S* sp = dA_sum.data<S>();
    S* dp = d.data<S>();
    for (int64_t h = 0, H = d.numel(); h < H; ++h) dp[h] = sp[h] * std::exp(ap[h]);
    write_param_grad(d.to(grads.accumulate_A_log ? grads.dA_log.dtype() : A_log.dtype()), grads.dA_log,
                     grads.accumulate_A_log);
  }
  if (grads.ddt_bias.defined())
    write_param_grad(ddt_sum.to(grads.accumulate_dt_bias ? grads.ddt_bias.dtype() : dt_bias.dtype()), grads.ddt_bias,
                     grads.accumulate_dt_bias);
}

}  // namespace

void gdn_gates_fwd(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias, double beta_scale,
                   const Tensor& g, const Tensor& beta) {
  NATSL_DISPATCH_FLOAT(a.dtype(), D, [&] {
    NATSL_DISPATCH_FLOAT(A_log.dtype(), P, [&] { fwd<D, P>(a, b, A_log, dt_bias, beta_scale, g, beta); });
  });
}

void gdn_gates_bwd_terms(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias,
                         double beta_scale, const Tensor& dg, const Tensor& dbeta, const Tensor& da,
                         const Tensor& db, const Tensor& dA_terms, const Tensor& ddt_terms) {
  NATSL_DISPATCH_FLOAT(a.dtype(), D, [&] {
    NATSL_DISPATCH_FLOAT(A_log.dtype(), P, [&] {
      bwd_terms<D, P>(a, b, A_log, dt_bias, beta_scale, dg, dbeta, da, db, dA_terms, ddt_terms);
    });
  });
}

void gdn_gates_param_grads(const Tensor& A_log, const Tensor& dt_bias, const Tensor& dA_sum, const Tensor& ddt_sum,
                           const GdnGatesGrads& grads) {
  const DType S = dA_sum.defined() ? dA_sum.dtype() : ddt_sum.dtype();
  if (S == DType::f64) param_grads<double>(A_log, dt_bias, dA_sum, ddt_sum, grads);
  else param_grads<float>(A_log, dt_bias, dA_sum, ddt_sum, grads);
}

}  // namespace natsl::kernels::cpu
