#include "layers/embedding.h"

#include "autograd/ops.h"

namespace natsl {

Embedding::Embedding(int64_t num_embeddings, int64_t dim, double init_std) {
  ParamMeta meta{{num_embeddings, dim}, ParamInit::normal(init_std)};
  meta.is_embedding = true;
  register_parameter("weight", &weight_, std::move(meta));
}

Tensor Embedding::forward(const Tensor& ids) const { return embedding(weight_, ids); }

}  // namespace natsl
