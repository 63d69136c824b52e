#pragma once
// Builds the data sources a run config asks for: the training source, and the held-out evaluation data
// (synthetic tasks: the same generator under another seed; text: validation windows).
#include <memory>
#include <string>

#include "data/loader.h"
#include "data/mqar.h"
#include "data/niah.h"
#include "trainers/config.h"

namespace natsl {

MqarOptions mqar_options(const RunConfig& cfg, uint64_t seed);
NiahOptions niah_options(const RunConfig& cfg, uint64_t seed);
// The seed of the evaluation examples of a synthetic task (never equal to the training seed's stream).
uint64_t eval_seed(uint64_t train_seed);

struct RunData {
  std::unique_ptr<DataSource> train;
  std::unique_ptr<DataSource> eval_synthetic;  // mqar / niah: held-out examples; null for text
  std::unique_ptr<ValidationWindows> eval_text;  // text with validation data; null otherwise
  std::string description;                       // lines for the run log
};

// "data.text.mix[i] 'PATH'": how messages and the run log name a mixture source.
std::string mix_source_name(const std::vector<MixEntry>& mix, size_t i);

// `run_dir` receives the shards of plain text files named in data.text (tokenized at start).
RunData make_run_data(const RunConfig& cfg, const std::string& run_dir);

}  // namespace natsl
