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

}  // namespace natsl
