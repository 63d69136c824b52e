#include "data/synthetic.h"

#include "data/batch.h"

namespace natsl {

AnswerScore& AnswerScore::operator+=(const AnswerScore& o) {
  correct += o.correct;
  total += o.total;
  rows_exact += o.rows_exact;
  rows += o.rows;
  return *this;
}

AnswerScore score_answers(const Tensor& predictions, const Tensor& targets) {
  NATSL_CHECK(predictions.shape() == targets.shape() && targets.dim() == 2, "score_answers: predictions ",
              shape_str(predictions.shape()), " vs targets ", shape_str(targets.shape()));
  const Tensor p = predictions.contiguous(), t = targets.contiguous();
  const int32_t* pp = p.data<int32_t>();
  const int32_t* tt = t.data<int32_t>();
  const int64_t B = t.size(0), T = t.size(1);
  AnswerScore s;
  for (int64_t b = 0; b < B; ++b) {
    int64_t n = 0, ok = 0;
    for (int64_t i = b * T; i < (b + 1) * T; ++i) {
      if (tt[i] == kIgnoreIndex) continue;
      ++n;
      ok += pp[i] == tt[i];
    }
    s.total += n;
    s.correct += ok;
    if (n > 0) {
      ++s.rows;
      s.rows_exact += ok == n;
    }
  }
  return s;
}

Tensor argmax_last(const Tensor& logits) {
  Tensor host = logits.to(DType::f32).to(kCPU).contiguous();
  const int64_t V = host.size(-1), rows = host.numel() / V;
  Tensor out = Tensor::empty({logits.size(0), logits.size(1)}, DType::i32, kCPU);
  const float* x = host.data<float>();
  int32_t* o = out.data<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * V;
    int64_t best = 0;
    for (int64_t v = 1; v < V; ++v)
      if (row[v] > row[best]) best = v;
    o[r] = int32_t(best);
  }
  return out;
}

}  // namespace natsl
