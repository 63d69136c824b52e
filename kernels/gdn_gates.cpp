#include "kernels/gdn_gates.h"

#include <cmath>

#include "kernels/dispatch.h"
#include "kernels/nn.h"  // stat_dtype
#include "kernels/reduce.h"

namespace natsl::kernels {
namespace {

// Checks a, b [..., H] floating of one dtype, A_log and dt_bias [H] of one floating dtype, and a positive finite
// beta_scale; returns H.
int64_t check_inputs(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias, double beta_scale,
                     const char* op) {
  NATSL_CHECK(a.defined() && b.defined() && A_log.defined() && dt_bias.defined(), op,
              ": a, b, A_log and dt_bias are all required");
  NATSL_CHECK(a.dim() >= 1 && is_floating(a.dtype()), op, ": a must be floating [..., H], got ", a.str());
  NATSL_CHECK(b.shape() == a.shape() && b.dtype() == a.dtype(), op, ": b ", b.str(), " for a ", a.str(),
              " (same shape and dtype)");
  const int64_t H = a.size(-1);
  NATSL_CHECK(A_log.shape() == Shape({H}) && is_floating(A_log.dtype()), op, ": A_log must be floating [", H,
              "] for a ", a.str(), ", got ", A_log.str());
  NATSL_CHECK(dt_bias.shape() == Shape({H}) && dt_bias.dtype() == A_log.dtype(), op, ": dt_bias must be [", H,
              "] in A_log's dtype ", dtype_name(A_log.dtype()), ", got ", dt_bias.str());
  NATSL_CHECK(std::isfinite(beta_scale) && beta_scale > 0, op, ": beta_scale must be positive and finite, got ",
              beta_scale);
  return H;
}

// A gate or its gradient: a's shape in S (f64 for f64 data, else f32).
void check_gate(const Tensor& t, const Tensor& a, const char* name, const char* op) {
  const DType S = stat_dtype(a.dtype());
  NATSL_CHECK(t.shape() == a.shape() && t.dtype() == S, op, ": ", name, " must be ", shape_str(a.shape()), " ",
              dtype_name(S), " for a ", a.str(), ", got ", t.str());
}

}  // namespace

void gdn_gates_fwd(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias, double beta_scale,
                   const Tensor& g, const Tensor& beta) {
  const char* op = "gdn_gates_fwd";
  check_inputs(a, b, A_log, dt_bias, beta_scale, op);
  NATSL_CHECK(g.defined() && beta.defined(), op, ": g and beta are required");
  check_gate(g, a, "g", op);
  check_gate(beta, a, "beta", op);
  Device d = common_device({&a, &b, &A_log, &dt_bias, &g, &beta}, op);
  check_contiguous({&a, &b, &A_log, &dt_bias, &g, &beta}, op);
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::gdn_gates_fwd(a, b, A_log, dt_bias, beta_scale, g, beta));
  else cpu::gdn_gates_fwd(a, b, A_log, dt_bias, beta_scale, g, beta);
}

void gdn_gates_bwd(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias, double beta_scale,
                   const Tensor& dg, const Tensor& dbeta, const GdnGatesGrads& grads) {
  const char* op = "gdn_gates_bwd";
  const int64_t H = check_inputs(a, b, A_log, dt_bias, beta_scale, op);
  if (dg.defined()) check_gate(dg, a, "dg", op);
  if (dbeta.defined()) check_gate(dbeta, a, "dbeta", op);
  NATSL_CHECK(dg.defined() || !(grads.da.defined() || grads.dA_log.defined() || grads.ddt_bias.defined()), op,
              ": da, dA_log and ddt_bias need dg");
  NATSL_CHECK(dbeta.defined() || !grads.db.defined(), op, ": db needs dbeta");
  if (grads.da.defined())
    NATSL_CHECK(grads.da.shape() == a.shape() && grads.da.dtype() == a.dtype(), op, ": da ", grads.da.str(),
                " for a ", a.str());
  if (grads.db.defined())
    NATSL_CHECK(grads.db.shape() == b.shape() && grads.db.dtype() == b.dtype(), op, ": db ", grads.db.str(),
                " for b ", b.str());
  for (const Tensor* p : {&grads.dA_log, &grads.ddt_bias})
    if (p->defined())
      NATSL_CHECK(p->shape() == Shape({H}) && is_floating(p->dtype()), op, ": parameter gradients must be floating [",
                  H, "], got ", p->str());
  const Device d = common_device({&a, &b, &A_log, &dt_bias, &dg, &dbeta, &grads.da, &grads.db, &grads.dA_log,
                                  &grads.ddt_bias}, op);
  check_contiguous({&a, &b, &A_log, &dt_bias, &dg, &dbeta, &grads.da, &grads.db, &grads.dA_log, &grads.ddt_bias}, op);

  // The parameters' gradients are sums over the rows of per-element terms: kernels::sum_to_shape of S tensors
  // shaped like a, as the composed ops' broadcast backward reduces them (the same sums, to the bit).
  const DType S = stat_dtype(a.dtype());
  const bool want_A = grads.dA_log.defined(), want_dt = grads.ddt_bias.defined();
  // With D == S, da is du itself: ddt_bias's terms.
  const bool du_in_da = want_dt && grads.da.defined() && grads.da.dtype() == S;
  const Tensor dA_terms = want_A ? Tensor::empty(a.shape(), S, d) : Tensor();
  const Tensor ddt_terms = want_dt && !du_in_da ? Tensor::empty(a.shape(), S, d) : Tensor();
  if (d.is_cuda())
    NATSL_CUDA_ONLY(cuda::gdn_gates_bwd_terms(a, b, A_log, dt_bias, beta_scale, dg, dbeta, grads.da, grads.db,
                                              dA_terms, ddt_terms));
  else
    cpu::gdn_gates_bwd_terms(a, b, A_log, dt_bias, beta_scale, dg, dbeta, grads.da, grads.db, dA_terms, ddt_terms);
  if (!want_A && !want_dt) return;
  // As detail::reduce_grad_to: terms already of the parameter's shape (a is [H]) are their own sum.
  auto sum_of = [&](const Tensor& terms) {
    if (terms.shape() == Shape({H})) return terms;
    Tensor sum = Tensor::empty({H}, S, d);
    sum_to_shape(terms, sum);
    return sum;
  };
  const Tensor dA_sum = want_A ? sum_of(dA_terms) : Tensor();
  const Tensor ddt_sum = want_dt ? sum_of(du_in_da ? grads.da : ddt_terms) : Tensor();
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::gdn_gates_param_grads(A_log, dt_bias, dA_sum, ddt_sum, grads));
  else cpu::gdn_gates_param_grads(A_log, dt_bias, dA_sum, ddt_sum, grads);
}

}  // namespace natsl::kernels
