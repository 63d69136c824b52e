#include "layers/rope.h"

#include <cmath>

#include "autograd/ops.h"

namespace natsl {

std::pair<Tensor, Tensor> rope_tables(int64_t T, int64_t D, double theta, int64_t offset, DType dt, Device d) {
  NATSL_CHECK(D % 2 == 0, "RoPE needs an even head dim, got ", D);
  const int64_t half = D / 2;
  std::vector<double> c(size_t(T * D)), s(size_t(T * D));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < D; ++j) {
      double inv_freq = std::pow(theta, -2.0 * double(j % half) / double(D));
      double a = double(t + offset) * inv_freq;
      c[size_t(t * D + j)] = std::cos(a);
      s[size_t(t * D + j)] = std::sin(a);
    }
  return {Tensor::from_vector(c, {T, 1, D}, dt, d), Tensor::from_vector(s, {T, 1, D}, dt, d)};
}

Tensor apply_rope(const Tensor& x, double theta, int64_t offset) {
  NATSL_CHECK(x.dim() == 4, "apply_rope: expected [B, T, H, D], got ", x.str());
  auto [cos_t, sin_t] = rope_tables(x.size(1), x.size(3), theta, offset, x.dtype(), x.device());
  return apply_rope(x, cos_t, sin_t);
}

Tensor apply_rope(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  NATSL_CHECK(x.dim() == 4, "apply_rope: expected [B, T, H, D], got ", x.str());
  const int64_t T = x.size(1), D = x.size(3), half = D / 2;
  NATSL_CHECK(cos.shape() == (Shape{T, 1, D}) && sin.shape() == cos.shape(), "apply_rope: tables ", cos.str(),
              " do not fit ", x.str());
  Tensor rotated = concat({neg(slice(x, 3, half, D)), slice(x, 3, 0, half)}, 3);
  return add(mul(x, cos), mul(rotated, sin));
}

}  // namespace natsl
