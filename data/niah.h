#pragma once
// Single-needle needle-in-a-haystack (RULER's niah_single_{1,2,3}, docs/evals.md §3)
// for byte-level models, generated on the fly, one example per (seed, step, global row).
//
// Row layout (bytes, T + 1 tokens before the one-token shift; BOS first and EOS padding when
// vocab_size >= 258, otherwise no BOS and '\n' padding):
//   "A special magic number is hidden within the following text. Make sure to memorize it. I will quiz
//    you about the number afterwards.\n" CONTEXT "\nWhat is the special magic number for KEY mentioned in
//    the provided text? The special magic number for KEY mentioned in the provided text is" " " VALUE "."
// ("number" -> "uuid" for UUID values). The needle "One of the special magic numbers for KEY is: VALUE."
// sits in CONTEXT before haystack unit (noise) or sentence (essay) index int(n * depth / 100).
//   noise: n copies of "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back
//          again." joined by '\n' (the needle is one more '\n'-joined element)
//   essay: the first n whitespace-separated words of a held-out text (repeated if short), split into
//          sentences after words ending in '.', '!' or '?', joined by ' ' (the needle one more sentence)
// n is the largest count that fits the row. KEY = "adjective-noun" from built-in 64-word lists; VALUE a
// uniform 7-digit number in [1000000, 9999999] or a version-4 UUID. Targets are kIgnoreIndex except at
// the VALUE bytes, so teacher-forced accuracy counts only the answer.
#include <cstdint>
#include <string>
#include <vector>

#include "data/random_stream.h"
#include "data/source.h"

namespace natsl {

enum class NiahHaystack { Noise, Essay };
enum class NiahValue { Number, Uuid };

struct NiahOptions {
  int64_t seq_len = 1024;
  int64_t vocab_size = 258;  // >= 256 (byte ids)
  NiahHaystack haystack = NiahHaystack::Noise;
  NiahValue value = NiahValue::Number;
  std::string essay_path;  // held-out text for the essay haystack (never training text)
  // The needle depth in percent, in [0, 100]; negative draws it per example from RULER's 40-point grid
  // round(linspace(0, 100, 40)).
  double depth_percent = -1;
  int64_t batch_size = 8;  // rows per rank
  uint64_t seed = 0;
  int rank = 0;
  int world_size = 1;
};

struct NiahExample {
  std::vector<int32_t> tokens;         // T + 1 tokens (inputs = [0, T), targets = [1, T + 1))
  int64_t answer_begin = 0, answer_end = 0;    // VALUE occupies tokens [answer_begin, answer_end)
  int64_t context_begin = 0, context_end = 0;  // CONTEXT (with the needle) occupies [context_begin, context_end)
  int64_t needle_begin = 0;                    // first token of the needle sentence
  int64_t haystack_units = 0;                  // n: noise units or essay sentences around the needle
  int64_t needle_index = 0;                    // the needle precedes unit/sentence number needle_index
  double depth_percent = 0;
  std::string key, value;
};

// RULER's depth grid round(linspace(0, 100, 40)).
std::vector<double> niah_depth_grid();

// Rows start with BOS when the vocabulary holds the byte tokenizer's specials (ids 256 and 257).
inline bool niah_uses_bos(int64_t vocab_size) { return vocab_size >= 258; }

// Throws ConfigKeyError (an InputError) naming the option, its key() the field at fault, when the options
// cannot make a row: vocab_size < 256, batch_size < 1, depth_percent > 100, the essay haystack without an
// essay_path (key "haystack"), or a seq_len too short for the prompt. The essay file itself is read (and
// checked) by NiahSource.
void validate(const NiahOptions& o);

class NiahSource : public OptionsSource<NiahOptions> {
 public:
  explicit NiahSource(const NiahOptions& o);  // validate(o), then reads essay_path; InputError on a bad file
  Batch next(int64_t step) override;
  nlohmann::json state() const override;
  void load_state(const nlohmann::json& state) override;
  std::string describe() const override;

  NiahExample example(int64_t step, int64_t b) const;  // row b of this rank at `step`
  NiahExample generate(RandomStream& rs) const;

 private:
  std::vector<std::string> essay_words_;
  bool use_bos() const { return niah_uses_bos(opts_.vocab_size); }
};

}  // namespace natsl
