#pragma once
// DataSource: what the trainer pulls batches from. Every source is a pure function of its settings and
// (seed, step, rank): next(step) returns the same batch whenever it is asked for the same step, so resuming
// a run needs no data cursor beyond the step, and state()/load_state() record and check the settings (a
// resumed run whose data changed is refused with a message naming what changed) and restore what counters
// a source keeps for the log (a mixture's rows per source).
#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "data/batch.h"

namespace natsl {

class DataSource {
 public:
  virtual ~DataSource() = default;
  // The batch of this rank for micro-batch index `step` (with gradient accumulation the trainer passes
  // step * accum + micro). Distinct indices give independent batches. inputs/targets: i32 [B, T] on the CPU.
  virtual Batch next(int64_t step) = 0;
  // Data parallel: micro-batch `step` is served by another rank. Counters a source keeps for the log and
  // its state advance as if it had been served here, so every rank's state() is the same (no batch is made).
  virtual void skip(int64_t step) { (void)step; }
  virtual int64_t batch_size() const = 0;  // B, rows of this rank
  virtual int64_t seq_len() const = 0;     // T
  virtual int64_t vocab_size() const = 0;  // every input and target id (except kIgnoreIndex) is below it
  // For checkpoints: a JSON object with "kind", the settings and the last step served.
  virtual nlohmann::json state() const = 0;
  // Restores from state(); throws InputError when the checkpoint's data settings differ from this source's.
  virtual void load_state(const nlohmann::json& state) = 0;
  virtual std::string describe() const = 0;  // one line for the run log
};

// What the sources here share: the options they were made with (a struct with batch_size, seq_len and
// vocab_size among its fields, which give the batch shape; a source whose vocabulary comes from elsewhere
// overrides vocab_size()) and the last step served (-1 before any).
template <class Options>
class OptionsSource : public DataSource {
 public:
  int64_t batch_size() const override { return opts_.batch_size; }
  int64_t seq_len() const override { return opts_.seq_len; }
  int64_t vocab_size() const override { return opts_.vocab_size; }
  const Options& options() const { return opts_; }

 protected:
  explicit OptionsSource(const Options& opts) : opts_(opts) {}

  // The batch of this rank at `step`, i32 [batch_size, seq_len] inputs and targets: row(b, inputs, targets)
  // writes all seq_len ids of both for row b. Then `step` is the last step served.
  template <class Row>
  Batch make_batch(int64_t step, Row&& row) {
    const int64_t B = opts_.batch_size, T = opts_.seq_len;
    Batch batch{Tensor::empty({B, T}, DType::i32), Tensor::empty({B, T}, DType::i32)};
    int32_t* in = batch.inputs.data<int32_t>();
    int32_t* tg = batch.targets.data<int32_t>();
    for (int64_t b = 0; b < B; ++b) row(b, in + b * T, tg + b * T);
    last_step_ = step;
    return batch;
  }

  Options opts_;
  int64_t last_step_ = -1;
};

}  // namespace natsl
