#pragma once
// Token loaders over shards (data/shard.h).
//
// TokenWindowLoader (training): each row of a batch is a window of seq_len + 1 consecutive tokens of one
// shard, its start drawn uniformly over every valid start of every shard (with replacement), from the
// Philox stream of (seed, step, global row) with global row = rank * batch_size + b. The global batch of a
// step is therefore the same for any split into ranks with the same rank * batch_size rows.
// inputs = window[0, T), targets = window[1, T + 1).
//
// ValidationWindows (eval): fixed non-overlapping windows over held-out shards: a window starting at s
// feeds [s, s + T) and scores the predictions of [s + 1, s + T + 1); a final partial window is kept if it
// has at least 2 tokens (its unused positions are padding: input 0, target kIgnoreIndex). Windows never
// cross a shard boundary. Window w goes to rank (w / batch_size) % world_size, so every rank sees the same
// number of batches (the last ones padded with fully ignored rows) and collective evals cannot hang.
#include <optional>
#include <string>
#include <vector>

#include "data/shard.h"
#include "data/source.h"

namespace natsl {

struct LoaderOptions {
  int64_t batch_size = 8;  // rows per rank
  int64_t seq_len = 256;
  uint64_t seed = 0;
  int rank = 0;
  int world_size = 1;
  // The model's vocabulary: shards whose recorded vocab_size or largest token id does not fit are refused at
  // start. 0 skips the check.
  int64_t vocab_size = 0;
  bool verify_checksums = true;
};

class TokenWindowLoader : public OptionsSource<LoaderOptions> {
 public:
  TokenWindowLoader(const std::vector<std::string>& shard_paths, const LoaderOptions& opts);

  Batch next(int64_t step) override;
  int64_t vocab_size() const override { return vocab_size_; }  // opts.vocab_size, or the shards' when 0
  nlohmann::json state() const override;
  void load_state(const nlohmann::json& state) override;
  std::string describe() const override;

  int64_t total_tokens() const;
  // Start of the window of (step, row b of this rank) as (shard index, offset): exposed for tests.
  std::pair<size_t, int64_t> window_start(int64_t step, int64_t b) const;
  // The same by global row (rank * batch_size + b); its window's inputs and targets (seq_len each) into
  // `inputs` / `targets`. A mixture (data/mixture.h) draws the rows it gives to this source through these.
  std::pair<size_t, int64_t> window_of_row(int64_t step, int64_t global_row) const;
  void read_row(int64_t step, int64_t global_row, int32_t* inputs, int32_t* targets) const;

 private:
  std::vector<Shard> shards_;
  std::vector<int64_t> starts_end_;  // starts_end_[i] = number of valid window starts in shards [0, i]
  int64_t vocab_size_ = 0;
};

struct ValidationOptions {
  int64_t batch_size = 8;
  int64_t seq_len = 256;
  int rank = 0;
  int world_size = 1;
  int64_t vocab_size = 0;  // as in LoaderOptions
  bool verify_checksums = true;
};

class ValidationWindows {
 public:
  ValidationWindows(const std::vector<std::string>& shard_paths, const ValidationOptions& opts);

  int64_t num_windows() const { return int64_t(windows_.size()); }  // over all ranks
  int64_t num_batches() const;                                      // per rank, equal on all ranks
  int64_t scored_tokens() const;                                    // targets scored over all ranks
  Batch batch(int64_t i) const;                                     // i in [0, num_batches())
  // Sequential use: next() returns batch 0, 1, ... then nullopt; reset() starts over.
  std::optional<Batch> next();
  void reset() { cursor_ = 0; }
  int64_t cursor() const { return cursor_; }

 private:
  struct Window {
    size_t shard;
    int64_t start, len;  // len tokens read: inputs len - 1 (<= T), targets len - 1
  };
  ValidationOptions opts_;
  std::vector<Shard> shards_;
  std::vector<Window> windows_;
  int64_t cursor_ = 0;
};

}  // namespace natsl
