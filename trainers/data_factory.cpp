#include "trainers/data_factory.h"

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;

namespace natsl {

MqarOptions mqar_options(const RunConfig& cfg, uint64_t seed) {
  MqarOptions o;
  o.vocab_size = cfg.data.mqar.vocab_size ? cfg.data.mqar.vocab_size : cfg.model.vocab_size;
  o.seq_len = cfg.train.seq_len;
  o.num_kv_pairs = cfg.data.mqar.num_kv_pairs;
  o.power_a = cfg.data.mqar.power_a;
  o.num_passes = cfg.data.mqar.num_passes;
  o.random_non_queries = cfg.data.mqar.random_non_queries;
  o.batch_size = cfg.train.batch_size;
  o.seed = seed;
  return o;
}

NiahOptions niah_options(const RunConfig& cfg, uint64_t seed) {
  NiahOptions o;
  o.seq_len = cfg.train.seq_len;
  o.vocab_size = cfg.model.vocab_size;
  o.haystack = cfg.data.niah.haystack == "essay" ? NiahHaystack::Essay : NiahHaystack::Noise;
  o.value = cfg.data.niah.value == "uuid" ? NiahValue::Uuid : NiahValue::Number;
  o.essay_path = cfg.data.niah.essay_path;
  o.depth_percent = cfg.data.niah.depth_percent;
  o.batch_size = cfg.train.batch_size;
  o.seed = seed;
  return o;
}

uint64_t eval_seed(uint64_t train_seed) { return train_seed ^ 0xE7A15EEDC0FFEE11ull; }

namespace {

bool is_shard_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[8] = {};
  in.read(magic, 8);
  return in && std::equal(magic, magic + 8, kShardMagic);
}

struct Resolved {
  std::vector<std::string> shards, text_files, prefix_val_shards;
};

// One entry of data.text.train / data.text.val (see TextDataConfig).
void resolve_entry(const std::string& entry, const std::string& key, Resolved& r) {
  std::error_code ec;
  if (fs::is_regular_file(entry, ec)) {
    (is_shard_file(entry) ? r.shards : r.text_files).push_back(entry);
    return;
  }
  if (fs::is_directory(entry, ec) || entry.find_first_of("*?[") != std::string::npos) {
    for (auto& s : resolve_shard_paths(entry)) r.shards.push_back(s);
    return;
  }
  try {
    for (auto& s : resolve_shard_paths(entry + ".train.*.bin")) r.shards.push_back(s);
  } catch (const InputError&) {
    throw InputError(key + ": '" + entry + "' is not a file, a directory, a glob of shards, nor a prefix written " +
                     "by `natsl tokenize` (no " + entry + ".train.*.bin)");
  }
  try {
    for (auto& s : resolve_shard_paths(entry + ".val.*.bin")) r.prefix_val_shards.push_back(s);
  } catch (const InputError&) {
  }
}

}  // namespace

std::shared_ptr<const Tokenizer> open_run_tokenizer(const RunConfig& cfg) {
  if (cfg.data.source != "text") return nullptr;
  auto origin = [&](const std::string& key) {
    auto it = cfg.origin.find(key);
    return it == cfg.origin.end() ? std::string() : it->second + ": ";
  };
  std::shared_ptr<const Tokenizer> tok;
  try {
    tok = open_tokenizer(cfg.tokenizer);
  } catch (const InputError& e) {
    throw InputError(origin(cfg.tokenizer.kind == "byte" ? "tokenizer.kind" : "tokenizer.model") + e.what());
  }
  // The byte tokenizer is the default also for token shards made elsewhere (any vocabulary): for it the
  // shards' largest id is checked against the model (make_run_data) instead.
  if (tok->kind() != "byte" && cfg.model.vocab_size < tok->vocab_size())
    throw InputError(origin("model.vocab_size") + "model.vocab_size (" + std::to_string(cfg.model.vocab_size) +
                     ") is smaller than the vocabulary of the tokenizer (" + std::to_string(tok->vocab_size()) +
                     ", tokenizer.kind " + cfg.tokenizer.kind +
                     (cfg.tokenizer.model.empty() ? "" : ", tokenizer.model '" + cfg.tokenizer.model + "'") +
                     "); set model.vocab_size to at least " + std::to_string(tok->vocab_size()));
  return tok;
}

RunData make_run_data(const RunConfig& cfg, const std::string& run_dir, std::shared_ptr<const Tokenizer> tokenizer) {
  RunData d;
  const TrainConfig& t = cfg.train;
  const uint64_t seed = uint64_t(t.seed);
  if (cfg.data.source == "mqar") {
    d.train = std::make_unique<MqarSource>(mqar_options(cfg, seed));
    d.eval_synthetic = std::make_unique<MqarSource>(mqar_options(cfg, eval_seed(seed)));
  } else if (cfg.data.source == "niah") {
    d.train = std::make_unique<NiahSource>(niah_options(cfg, seed));
    d.eval_synthetic = std::make_unique<NiahSource>(niah_options(cfg, eval_seed(seed)));
  } else {
    d.tokenizer = tokenizer ? std::move(tokenizer) : open_run_tokenizer(cfg);
    const Tokenizer& tok = *d.tokenizer;
    Resolved train, val;
    int64_t text_val_bytes = 0, text_val_tokens = 0;  // of the validation text tokenized here
    for (const auto& e : cfg.data.text.train) resolve_entry(e, "data.text.train", train);
    for (const auto& e : cfg.data.text.val) resolve_entry(e, "data.text.val", val);
    std::vector<std::string> val_shards = val.shards;
    const std::string token_dir = (fs::path(run_dir) / "data").string();
    if (!train.text_files.empty()) {
      fs::create_directories(token_dir);
      TokenizeOptions opts;
      opts.val_fraction = cfg.data.text.val.empty() ? cfg.data.text.val_fraction : 0.0;
      TokenizeReport rep = tokenize_files(train.text_files, token_dir + "/train_text", opts, tok);
      train.shards.insert(train.shards.end(), rep.train_shards.begin(), rep.train_shards.end());
      if (cfg.data.text.val.empty()) {
        val_shards.insert(val_shards.end(), rep.val_shards.begin(), rep.val_shards.end());
        text_val_bytes += rep.val_bytes;
        text_val_tokens += rep.val_tokens;
      }
    }
    if (!val.text_files.empty()) {
      fs::create_directories(token_dir);
      TokenizeReport rep = tokenize_files(val.text_files, token_dir + "/val_text", TokenizeOptions{}, tok);
      val_shards.insert(val_shards.end(), rep.train_shards.begin(), rep.train_shards.end());
      text_val_bytes += rep.train_bytes;
      text_val_tokens += rep.train_tokens;
    }
    const size_t val_shards_from_text = val_shards.size() - val.shards.size();
    if (cfg.data.text.val.empty())
      val_shards.insert(val_shards.end(), train.prefix_val_shards.begin(), train.prefix_val_shards.end());

    if (tok.kind() == "byte") d.val_bytes_per_token = 1.0;
    else if (text_val_tokens > 0 && val_shards.size() == val_shards_from_text)
      d.val_bytes_per_token = double(text_val_bytes) / double(text_val_tokens);

    LoaderOptions lo;
    lo.batch_size = t.batch_size;
    lo.seq_len = t.seq_len;
    lo.seed = seed;
    lo.vocab_size = cfg.model.vocab_size;
    d.train = std::make_unique<TokenWindowLoader>(train.shards, lo);
    if (!val_shards.empty()) {
      ValidationOptions vo;
      vo.batch_size = t.batch_size;
      vo.seq_len = t.seq_len;
      vo.vocab_size = cfg.model.vocab_size;
      d.eval_text = std::make_unique<ValidationWindows>(val_shards, vo);
      d.description = "validation: " + std::to_string(val_shards.size()) + " shard(s), " +
                      std::to_string(d.eval_text->num_windows()) + " windows, " +
                      std::to_string(d.eval_text->scored_tokens()) + " scored tokens";
    } else {
      d.description = "validation: none (give data.text.val or a text file to hold out a tail from)";
    }
  }
  d.description = "train: " + d.train->describe() + (d.description.empty() ? "" : "\n" + d.description);
  if (d.train->vocab_size() > cfg.model.vocab_size)
    throw InputError("data: the training data uses token ids up to " + std::to_string(d.train->vocab_size() - 1) +
                     " but model.vocab_size is " + std::to_string(cfg.model.vocab_size));
  return d;
}

}  // namespace natsl
