#pragma once
// Builds the data sources a run config asks for: the training source, and the held-out evaluation data
// (synthetic tasks: the same generator under another seed; text: validation windows).
#include <memory>
#include <string>

#include "data/loader.h"
#include "data/mqar.h"
#include "data/niah.h"
#include "data/tokenizer.h"
#include "trainers/config.h"

namespace natsl {

// Every check of the data: and tokenizer: sections that needs no file: a source's required keys, the
// mixture's weights, the MQAR task against train.seq_len and model.vocab_size, the tokenizer against the
// source. Throws ConfigKeyError naming the key at fault (the config loader adds where it was set). What needs
// the files (their existence, token ids against model.vocab_size) is checked by make_run_data at start.
void validate_data_config(const RunConfig& cfg);

MqarOptions mqar_options(const RunConfig& cfg, uint64_t seed);
NiahOptions niah_options(const RunConfig& cfg, uint64_t seed);
// The seed of the evaluation examples of a synthetic task (never equal to the training seed's stream).
uint64_t eval_seed(uint64_t train_seed);

struct RunData {
  std::unique_ptr<DataSource> train;
  std::unique_ptr<DataSource> eval_synthetic;  // mqar / niah: held-out examples; null for text
  std::unique_ptr<ValidationWindows> eval_text;  // text with validation data; null otherwise
  std::string description;                       // lines for the run log
  std::shared_ptr<const Tokenizer> tokenizer;    // text: the tokenizer of the data; null for the synthetic tasks
  // Text bytes per validation token, for bits per byte: 1 for the byte tokenizer; for another tokenizer the
  // ratio of the validation text tokenized at start; 0 when not known (validation shards tokenized elsewhere).
  double val_bytes_per_token = 0.0;
};

// "data.text.mix[i] 'PATH'": how messages and the run log name a mixture source.
std::string mix_source_name(const std::vector<MixEntry>& mix, size_t i);


// The tokenizer of a run's text data (tokenizer: section), opened (its model file read) and checked against
// the model: a model.vocab_size below a SentencePiece model's vocabulary is an InputError naming both (for
// the byte tokenizer, also used for shards made elsewhere, the data's largest id is checked instead). Null
// for the synthetic sources, which make their own token ids.
std::shared_ptr<const Tokenizer> open_run_tokenizer(const RunConfig& cfg);

// `run_dir` receives the shards of plain text files named in data.text (tokenized at start with `tokenizer`,
// or with open_run_tokenizer(cfg) when it is null).
RunData make_run_data(const RunConfig& cfg, const std::string& run_dir,
                      std::shared_ptr<const Tokenizer> tokenizer = nullptr);

}  // namespace natsl
