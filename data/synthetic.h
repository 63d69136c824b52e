#pragma once
// Synthetic tasks generated on the fly (MQAR, single-needle NIAH) and their answer-only scoring.
#include <cstdint>

#include "core/tensor.h"
#include "data/mqar.h"
#include "data/niah.h"

namespace natsl {

struct AnswerScore {
  int64_t correct = 0;     // answer positions whose prediction equals the target
  int64_t total = 0;       // answer positions (targets != kIgnoreIndex)
  int64_t rows_exact = 0;  // rows with at least one answer position, all predicted right
  int64_t rows = 0;        // rows with at least one answer position
  double accuracy() const { return total ? double(correct) / double(total) : 0.0; }
  double exact_match() const { return rows ? double(rows_exact) / double(rows) : 0.0; }
  AnswerScore& operator+=(const AnswerScore& o);
};

// Row-wise argmax of logits [B, T, V] (any device, any float dtype) as an i32 [B, T] CPU tensor.
Tensor argmax_last(const Tensor& logits);

// predictions: argmax ids, i32 [B, T] on the CPU; targets: the batch's targets. Only answer positions count.
AnswerScore score_answers(const Tensor& predictions, const Tensor& targets);

}  // namespace natsl
