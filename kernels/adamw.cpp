#include "kernels/adamw.h"

#include "kernels/dispatch.h"

namespace natsl::kernels {

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const std::vector<AdamWSegment>& segments, const AdamWHyper& h, const Tensor& grad_scale,
                const Tensor& compute) {
  Device d = common_device({&param, &grad, &m, &v, &grad_scale, &compute}, "adamw_step");
  check_contiguous({&param, &grad, &m, &v, &compute}, "adamw_step");
  NATSL_CHECK(param.dtype() == DType::f32 || (param.dtype() == DType::f64 && d.is_cpu()),
              "adamw_step: parameters must be f32 master weights (f64 on CPU for tests), got ", param.str());
  NATSL_CHECK(m.dtype() == param.dtype() && v.dtype() == param.dtype(), "adamw_step: moments must have the ",
              "parameters' dtype ", dtype_name(param.dtype()), ", got m ", m.str(), ", v ", v.str());
  NATSL_CHECK(grad.dtype() == DType::f32 || grad.dtype() == DType::bf16 || grad.dtype() == param.dtype(),
              "adamw_step: gradients must be f32 or bf16, got ", grad.str());
  const int64_t n = param.numel();
  NATSL_CHECK(grad.numel() == n && m.numel() == n && v.numel() == n, "adamw_step: buffers differ in size: param ",
              param.str(), ", grad ", grad.str(), ", m ", m.str(), ", v ", v.str());
  for (const AdamWSegment& s : segments)
    NATSL_CHECK(s.offset >= 0 && s.numel >= 0 && s.offset + s.numel <= n, "adamw_step: segment [", s.offset, ", ",
                s.offset + s.numel, ") outside a buffer of ", n, " elements");
  NATSL_CHECK(h.step >= 1, "adamw_step: step must be >= 1 (1-based, after this update), got ", h.step);
  NATSL_CHECK(!grad_scale.defined() || (grad_scale.numel() == 1 && is_floating(grad_scale.dtype())),
              "adamw_step: grad_scale must be one floating value, got ", grad_scale.str());
  NATSL_CHECK(!compute.defined() || ((compute.dtype() == DType::f32 || compute.dtype() == DType::bf16) &&
                                      compute.numel() == n && compute.data_ptr() != param.data_ptr()),
              "adamw_step: the compute copy must be a separate f32 or bf16 buffer of the parameters' ", n,
              " elements, got ", compute.str());
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::adamw_step(param, grad, m, v, segments, h, grad_scale, compute));
  else cpu::adamw_step(param, grad, m, v, segments, h, grad_scale, compute);
}

}  // namespace natsl::kernels
