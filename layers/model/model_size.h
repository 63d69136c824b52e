#pragma once
// Closed-form model size and training FLOPs, for logging and MFU (formula in docs/flops.md).
#include "layers/model/model_config.h"

namespace natsl {

// Parameters of the CausalLM the config describes (equals CausalLM(config).num_parameters()).
int64_t count_parameters(const ModelConfig& config);

// Parameters that take part in weight matmuls: everything but the input embedding lookup, plus the LM
// head (which is the embedding matrix again when tied). Norm weights are included (a negligible overcount).
int64_t count_matmul_parameters(const ModelConfig& config);

// Training FLOPs (forward + backward) per token at sequence length seq_len:
//   6 * count_matmul_parameters + sum over layers of the mixer's extra_flops_per_token.
double model_flops_per_token(const ModelConfig& config, int64_t seq_len);

}  // namespace natsl
