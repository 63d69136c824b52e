#include "kernels/mix_norm_gate.h"

#include "kernels/dispatch.h"
#include "kernels/nn.h"

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
                       const Tensor& dz, const Tensor& dgamma_g, const Tensor& dgamma_a, bool accumulate_dgamma) {
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
  for (const Tensor* t : {&dy, &dog, &doa, &dwlogits, &dz})
    NATSL_CHECK(t->dtype() == og.dtype(), op, ": dtype of ", t->str(), " differs from og's");
  for (const Tensor* t : {&dgamma_g, &dgamma_a}) check_weight_grad(og, *t, op);
  if (d.is_cuda())
    NATSL_CUDA_ONLY(cuda::mix_norm_gate_bwd(og, oa, wlogits, z, gamma_g, gamma_a, rstd_g, rstd_a, dy, dog, doa,
                                            dwlogits, dz, dgamma_g, dgamma_a, accumulate_dgamma));
  else
    cpu::mix_norm_gate_bwd(og, oa, wlogits, z, gamma_g, gamma_a, rstd_g, rstd_a, dy, dog, doa, dwlogits, dz,
                           dgamma_g, dgamma_a, accumulate_dgamma);
}

namespace {

// Shapes and dtypes shared by norm_gate's forward and backward.
void check_norm_gate(const Tensor& o, const Tensor& z, const Tensor& gamma, const Tensor& rstd, const char* op) {
  NATSL_CHECK(o.dim() >= 1 && is_floating(o.dtype()), op, ": o must be floating [..., D], got ", o.str());
  check_same_shape(z, o, op);
  NATSL_CHECK(gamma.shape() == Shape{o.size(-1)}, op, ": gamma must be [", o.size(-1), "], got ", gamma.str());
  for (const Tensor* t : {&z, &gamma})
    NATSL_CHECK(t->dtype() == o.dtype(), op, ": dtype of ", t->str(), " differs from o's");
  const Shape row_shape(o.shape().begin(), o.shape().end() - 1);
  const DType sd = o.dtype() == DType::f64 ? DType::f64 : DType::f32;
  NATSL_CHECK(rstd.shape() == row_shape && rstd.dtype() == sd, op, ": rstd must be ", shape_str(row_shape), " ",
              dtype_name(sd), ", got ", rstd.str());
}

}  // namespace

void norm_gate_fwd(const Tensor& o, const Tensor& z, const Tensor& gamma, double eps, const Tensor& y,
                   const Tensor& rstd) {
  const char* op = "norm_gate_fwd";
  Device d = common_device({&o, &z, &gamma, &y, &rstd}, op);
  check_contiguous({&o, &z, &gamma, &y, &rstd}, op);
  check_norm_gate(o, z, gamma, rstd, op);
  check_same_shape(y, o, op);
  NATSL_CHECK(y.dtype() == o.dtype(), op, ": y dtype ", dtype_name(y.dtype()));
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::norm_gate_fwd(o, z, gamma, eps, y, rstd));
  else cpu::norm_gate_fwd(o, z, gamma, eps, y, rstd);
}

void norm_gate_bwd(const Tensor& o, const Tensor& z, const Tensor& gamma, const Tensor& rstd, const Tensor& dy,
                   const Tensor& do_, const Tensor& dz, const Tensor& dgamma, bool accumulate_dgamma) {
  const char* op = "norm_gate_bwd";
  Device d = common_device({&o, &z, &gamma, &rstd, &dy, &do_, &dz, &dgamma}, op);
  check_contiguous({&o, &z, &gamma, &rstd, &dy, &do_, &dz, &dgamma}, op);
  check_norm_gate(o, z, gamma, rstd, op);
  for (const Tensor* t : {&dy, &do_, &dz}) check_same_shape(*t, o, op);
  if (dgamma.defined()) check_same_shape(dgamma, gamma, op);
  for (const Tensor* t : {&dy, &do_, &dz})
    NATSL_CHECK(t->dtype() == o.dtype(), op, ": dtype of ", t->str(), " differs from o's");
  check_weight_grad(o, dgamma, op);
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::norm_gate_bwd(o, z, gamma, rstd, dy, do_, dz, dgamma, accumulate_dgamma));
  else cpu::norm_gate_bwd(o, z, gamma, rstd, dy, do_, dz, dgamma, accumulate_dgamma);
}

}  // namespace natsl::kernels
