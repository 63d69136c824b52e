#pragma once
// Embedding: a [num_embeddings, dim] table ~ N(0, std); forward looks rows up by id.
#include "layers/module.h"

namespace natsl {

class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t dim, double init_std = 0.02);
  Tensor forward(const Tensor& ids) const;  // ids i32/i64 [...] -> [..., dim]
  const Tensor& weight() const { return weight_; }

 private:
  Tensor weight_;
};

}  // namespace natsl
