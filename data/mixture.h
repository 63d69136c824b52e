#pragma once
// MixtureLoader: training windows drawn from several weighted sources (data.text.mix), each source a set of
// shards as TokenWindowLoader reads them.
//
// Row g = rank * batch_size + b of micro-batch `step` is made in two independent draws:
//   1. its source: u = the first 64-bit word of the Philox stream of (seed, "MIXS", step, g), and the source
//      is the k with bound[k] <= u < bound[k + 1] (mixture_bounds below: integers fixed once from the
//      weights, so the choice compares integers only and is the same on every machine);
//   2. its window: exactly the window TokenWindowLoader over that source's shards gives row g of `step`.
// So the global batch of a step is the same for any split into ranks, a mixture of one source serves the
// batches of data.text.train over the same shards, and nothing in the choice depends on earlier steps: the
// position of every source's stream is implied by (seed, step). The state still records, per source, its
// shards (token counts, CRC-32), its bound and the rows served so far over all ranks, so a resumed run
// checks it continues the same streams and reports the same counts.
#include <cstdint>
#include <string>
#include <vector>

#include "data/loader.h"

namespace natsl {

struct MixtureSource {
  std::string name;                      // for messages and the log, e.g. "data.text.mix[1] 'wiki'"
  std::vector<std::string> shard_paths;  // as TokenWindowLoader takes them
  double weight = 1.0;                   // > 0, finite; weights are normalised over the sources
};

// The integer bounds of the sources' shares of [0, 2^64): bound[0] = 0 and, for k = 1 .. n-1,
//   bound[k] = floor(c_k / W * 2^64),  c_k = w_0 + ... + w_{k-1},  W = w_0 + ... + w_{n-1},
// the sums taken left to right in IEEE double, c_k / W correctly rounded, the product by 2^64 exact (ldexp);
// source k owns [bound[k], bound[k+1]) with bound[n] = 2^64 (not stored). Only +, / and ldexp on doubles:
// the same bits on every IEEE-754 machine. Throws InputError naming `names[k]` for a weight that is not
// finite and > 0, or so small against the others that its share is empty.
std::vector<uint64_t> mixture_bounds(const std::vector<double>& weights, const std::vector<std::string>& names);

class MixtureLoader : public OptionsSource<LoaderOptions> {
 public:
  MixtureLoader(const std::vector<MixtureSource>& sources, const LoaderOptions& opts);

  Batch next(int64_t step) override;
  void skip(int64_t step) override;
  int64_t vocab_size() const override { return vocab_size_; }  // the largest of the sources'
  nlohmann::json state() const override;
  void load_state(const nlohmann::json& state) override;
  std::string describe() const override;
  // One line per source: weight, share, shards, tokens, and the epochs of it that `micro_batches` steps of
  // the whole run (all ranks) are expected to read.
  std::string describe_sources(int64_t micro_batches) const;

  size_t num_sources() const { return sources_.size(); }
  // The source of global row `global_row` of micro-batch `step`.
  size_t source_of_row(int64_t step, int64_t global_row) const;
  const std::vector<uint64_t>& bounds() const { return bounds_; }
  double share(size_t k) const;  // (bound[k+1] - bound[k]) / 2^64
  // Rows handed out per source by the next() calls so far (over all ranks: every rank counts every row).
  const std::vector<int64_t>& rows_served() const { return rows_served_; }
  const TokenWindowLoader& source(size_t k) const { return sources_[k]; }

 private:
  std::vector<std::string> names_;
  std::vector<double> weights_;
  std::vector<uint64_t> bounds_;  // bound[0 .. n-1]
  std::vector<TokenWindowLoader> sources_;
  std::vector<int64_t> rows_served_;
  int64_t vocab_size_ = 0;
};

}  // namespace natsl
