#include "kernels/mix_norm_gate.h"

#include "kernels/dispatch.h"

namespace natsl::kernels {
namespace {

// Checks the shapes shared by forward and backward; row tensors are og's shape without its last dim.
void check_mix(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z, const Tensor& gamma_g,
               const Tensor& gamma_a, std::initializer_list<const Tensor*> rows, const char* op) {
  NATSL_CHECK(og.dim() >= 2 && is_floating(og.dtype()), op, ": og must be floating [..., Ha, Dv], got ", og.str());
  check_same_shape(oa, og, op);
  check_same_shape(z, og, op);
  Shape row_shape(og.shape().begin(), og.shape().end() - 1);
  Shape w_shape = row_shape;
  w_shape.push_back(2);
  NATSL_CHECK(wlogits.shape() == w_shape, op, ": wlogits ", wlogits.str(), ", expected ", shape_str(w_shape));
  Shape g_shape{og.size(-1)};
  NATSL_CHECK(gamma_g.shape() == g_shape && gamma_a.shape() == g_shape, op, ": norm weights must be ",
              shape_str(g_shape), ", got ", gamma_g.str(), " and ", gamma_a.str());
  for (const Tensor* t : {&oa, &wlogits, &z, &gamma_g, &gamma_a})
    NATSL_CHECK(t->dtype() == og.dtype(), op, ": dtype of ", t->str(), " differs from og's");
  DType sd = og.dtype() == DType::f64 ? DType::f64 : DType::f32;
  for (const Tensor* t : rows)
    NATSL_CHECK(t->shape() == row_shape && t->dtype() == sd, op, ": rstd must be ", shape_str(row_shape), " ",
                dtype_name(sd), ", got ", t->str());
}

}  // namespace

void mix_norm_gate_fwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                       const Tensor& gamma_g, const Tensor& gamma_a, double eps, const Tensor& y,
                       const Tensor& rstd_g, const Tensor& rstd_a) {
  const char* op = "mix_norm_gate_fwd";
  Device d = common_device({&og, &oa, &wlogits, &z, &gamma_g, &gamma_a, &y, &rstd_g, &rstd_a}, op);
  check_contiguous({&og, &oa, &wlogits, &z, &gamma_g, &gamma_a, &y, &rstd_g, &rstd_a}, op);
  check_mix(og, oa, wlogits, z, gamma_g, gamma_a, {&rstd_g, &rstd_a}, op);
  check_same_shape(y, og, op);
  NATSL_CHECK(y.dtype() == og.dtype(), op, ": y dtype ", dtype_name(y.dtype()));
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::mix_norm_gate_fwd(og, oa, wlogits, z, gamma_g, gamma_a, eps, y, rstd_g, rstd_a));
  else cpu::mix_norm_gate_fwd(og, oa, wlogits, z, gamma_g, gamma_a, eps, y, rstd_g, rstd_a);
}

void mix_norm_gate_bwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                       const Tensor& gamma_g, const Tensor& gamma_a, const Tensor& rstd_g, const Tensor& rstd_a,
                       const Tensor& dy, const Tensor& dog, const Tensor& doa, const Tensor& dwlogits,
                       const Tensor& dz, const Tensor& dgamma_g, const Tensor& dgamma_a) {
  const char* op = "mix_norm_gate_bwd";
  Device d = common_device({&og, &oa, &wlogits, &z, &gamma_g, &gamma_a, &rstd_g, &rstd_a, &dy, &dog, &doa, &dwlogits,
                            &dz, &dgamma_g, &dgamma_a},
                           op);
  check_contiguous({&og, &oa, &wlogits, &z, &gamma_g, &gamma_a, &rstd_g, &rstd_a, &dy, &dog, &doa, &dwlogits, &dz,
                    &dgamma_g, &dgamma_a},
                   op);
  check_mix(og, oa, wlogits, z, gamma_g, gamma_a, {&rstd_g, &rstd_a}, op);
  for (const Tensor* t : {&dy, &dog, &doa, &dz}) check_same_shape(*t, og, op);
  check_same_shape(dwlogits, wlogits, op);
  if (dgamma_g.defined()) check_same_shape(dgamma_g, gamma_g, op);
  if (dgamma_a.defined()) check_same_shape(dgamma_a, gamma_a, op);
  for (const Tensor* t : {&dy, &dog, &doa, &dwlogits, &dz, &dgamma_g, &dgamma_a})
    if (t->defined()) NATSL_CHECK(t->dtype() == og.dtype(), op, ": dtype of ", t->str(), " differs from og's");
  if (d.is_cuda())
    NATSL_CUDA_ONLY(cuda::mix_norm_gate_bwd(og, oa, wlogits, z, gamma_g, gamma_a, rstd_g, rstd_a, dy, dog, doa,
                                            dwlogits, dz, dgamma_g, dgamma_a));
  else
    cpu::mix_norm_gate_bwd(og, oa, wlogits, z, gamma_g, gamma_a, rstd_g, rstd_a, dy, dog, doa, dwlogits, dz,
                           dgamma_g, dgamma_a);
}

}  // namespace natsl::kernels
