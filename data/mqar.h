#pragma once
// MQAR (multi-query associative recall), generated as Zoology's `multiquery_ar` generates it
// (docs/evals.md §2), one example per (seed, step, global row) from its own Philox
// stream. Same distribution as Zoology, not the same bits (Zoology uses numpy's MT19937).
//
// Example (L = seq_len, k = num_kv_pairs, V = vocab_size, ctx = 2 k num_passes):
//   keys   k distinct, uniform without replacement from [1, V/2), in draw order
//   values k distinct, uniform without replacement from [V/2, V)
//   inputs[0, ctx)       = key_1 value_1 ... key_k value_k, repeated num_passes times
//   gaps   k distinct slots of [0, (L - ctx) / 2), drawn one after another with P(g) ∝ (g+1)^(power_a - 1)
//   inputs[ctx + 2 gap_i] = key_i, targets[ctx + 2 gap_i] = value_i, every other target kIgnoreIndex
//   other query-region inputs are 0, or, with random_non_queries, uniform in [0, V)
// RNG order as Zoology: keys, values, gaps, then the filler.
#include <cstdint>
#include <vector>

#include "data/random_stream.h"
#include "data/source.h"

namespace natsl {

struct MqarOptions {
  int64_t vocab_size = 8192;
  int64_t seq_len = 64;
  int64_t num_kv_pairs = 4;
  double power_a = 0.01;
  int64_t num_passes = 1;
  bool random_non_queries = true;
  int64_t batch_size = 64;  // rows per rank
  uint64_t seed = 0;
  int rank = 0;
  int world_size = 1;
};

// Throws ConfigKeyError (an InputError) naming the option, its key() the field at fault, when Zoology's
// preconditions fail (L even, V > L, 2 k passes + 2 k <= L, k >= 1, power_a > 0, ...).
void validate(const MqarOptions& o);

struct MqarExample {
  std::vector<int32_t> inputs, targets;  // length seq_len each
};

// One example from `rs`; gap_weights[g] = (g+1)^(power_a - 1) for g in [0, (L - ctx) / 2).
MqarExample generate_mqar(const MqarOptions& o, const std::vector<double>& gap_weights, RandomStream& rs);

class MqarSource : public OptionsSource<MqarOptions> {
 public:
  explicit MqarSource(const MqarOptions& o);
  Batch next(int64_t step) override;
  nlohmann::json state() const override;
  void load_state(const nlohmann::json& state) override;
  std::string describe() const override;

  MqarExample example(int64_t step, int64_t b) const;  // row b of this rank at `step`

 private:
  std::vector<double> gap_weights_;
};

}  // namespace natsl
