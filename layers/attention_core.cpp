#include "layers/attention_core.h"

#include <cmath>

#include "autograd/checkpoint.h"
#include "autograd/ops.h"
#include "autograd/ops_natsl.h"

namespace natsl {

Tensor causal_mask(int64_t T, DType dt, Device d) {
  std::vector<double> m(size_t(T * T), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = t + 1; s < T; ++s) m[size_t(t * T + s)] = kMaskedScore;
  return Tensor::from_vector(m, {T, T}, dt, d);
}

Tensor attention_core(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale) {
  NATSL_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "attention_core: q, k, v must be [B, T, H, D], got ",
              q.str(), ", ", k.str(), ", ", v.str());
  NATSL_CHECK(q.shape() == k.shape(), "attention_core: q ", q.str(), " and k ", k.str(), " differ");
  NATSL_CHECK(v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == q.size(2),
              "attention_core: v ", v.str(), " does not match q ", q.str());
  const int64_t T = q.size(1);
  if (scale <= 0.0) scale = 1.0 / std::sqrt(double(q.size(3)));
  // On the GPU, causal attention is the flash-style sparse-attention kernel at full selection (no [T, T]
  // scores in memory); it covers head dims up to 128 (q/k) and 256 (v).
  if (causal && q.device().is_cuda() && q.size(3) <= 128 && v.size(3) <= 256)
    return causal_attention(q, k, v, scale);
  // Heads to the batch dims: [B, H, T, D]. Recomputation does not keep these products: [T, T] scores.
  NoKeepGuard no_keep;
  Tensor qh = permute(q, {0, 2, 1, 3}), kh = permute(k, {0, 2, 1, 3}), vh = permute(v, {0, 2, 1, 3});
  Tensor scores = mul_scalar(matmul(qh, kh, false, true), scale);  // [B, H, T, T]
  if (causal) scores = add(scores, causal_mask(T, scores.dtype(), scores.device()));
  Tensor o = matmul(softmax(scores), vh);  // [B, H, T, Dv]
  return permute(o, {0, 2, 1, 3});
}

}  // namespace natsl
