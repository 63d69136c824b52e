#include "trainers/data_factory.h"

#include <filesystem>
#include <fstream>

#include "core/config_key_error.h"
#include "core/error.h"
#include "data/mixture.h"
#include "data/shard.h"
#include "data/tokenize.h"
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

// The config key behind an MqarOptions field (mqar_options above builds the one from the other).
std::string mqar_option_key(const RunConfig& cfg, const std::string& option) {
  if (option == "seq_len") return "train.seq_len";
  if (option == "batch_size") return "train.batch_size";
  if (option == "vocab_size") return cfg.data.mqar.vocab_size ? "data.mqar.vocab_size" : "model.vocab_size";
  return "data.mqar." + option;
}

// The config key behind a NiahOptions field (niah_options above builds the one from the other).
std::string niah_option_key(const std::string& option) {
  if (option == "seq_len") return "train.seq_len";
  if (option == "batch_size") return "train.batch_size";
  if (option == "vocab_size") return "model.vocab_size";
  return "data.niah." + option;
}

void validate_text_data(const RunConfig& cfg) {
  const TextDataConfig& text = cfg.data.text;
  if (cfg.data.source == "text" && text.train.empty() && text.mix.empty())
    throw ConfigKeyError("data.text.train",
                         "data.source is text but data.text.train names no file; give shard prefixes or text "
                         "files, e.g. data.text.train=../shared/data/tinyshakespeare.txt, or a weighted "
                         "mixture in data.text.mix");
  if (!text.train.empty() && !text.mix.empty())
    throw ConfigKeyError("data.text.mix",
                         "data.text.train and data.text.mix are both set: a run trains on one of them; move the "
                         "train entries into data.text.mix (each as {path: ..., weight: ...}) or drop the mix "
                         "(on the command line: data.text.train=[] or data.text.mix=[])");
  if (!text.mix.empty()) {
    std::vector<double> weights;
    std::vector<std::string> names;
    for (size_t i = 0; i < text.mix.size(); ++i) {
      weights.push_back(text.mix[i].weight);
      names.push_back(mix_source_name(text.mix, i));
    }
    try {
      mixture_bounds(weights, names);
    } catch (const InputError& e) {
      throw ConfigKeyError("data.text.mix", e.what());
    }
  }
}

// The tokenizer reads text; the synthetic tasks make their own token ids. (Its model file is opened at train
// start, so a config naming a model this machine lacks still loads.)
void validate_tokenizer(const RunConfig& cfg) {
  const TokenizerSpec& tok = cfg.tokenizer;
  if (tok.kind == "sentencepiece" && tok.model.empty())
    throw ConfigKeyError("tokenizer.kind",
                         "tokenizer.kind is sentencepiece but tokenizer.model names no file; give the path of a "
                         "SentencePiece .model file (`natsl tokenizer train` makes one)");
  if (tok.kind != "byte" && cfg.data.source != "text")
    throw ConfigKeyError("tokenizer.kind", "tokenizer.kind is " + tok.kind + " but data.source " + cfg.data.source +
                                               " generates its own token ids; use tokenizer.kind=byte or "
                                               "data.source=text");
}

void validate_mqar(const RunConfig& cfg) {
  const int64_t model_vocab = cfg.model.vocab_size;
  const int64_t v = cfg.data.mqar.vocab_size ? cfg.data.mqar.vocab_size : model_vocab;
  if (v > model_vocab)
    throw ConfigKeyError("data.mqar.vocab_size", "data.mqar.vocab_size (" + std::to_string(v) +
                                                     ") exceeds model.vocab_size (" + std::to_string(model_vocab) + ")");
  try {
    validate(mqar_options(cfg, 0));
  } catch (const ConfigKeyError& e) {
    throw ConfigKeyError(mqar_option_key(cfg, e.key()),
                         std::string("data.") + e.what() + " (the MQAR sequence length is train.seq_len)");
  }
}

// NIAH's own preconditions (validate(NiahOptions)); the essay file is read when the source is built.
void validate_niah(const RunConfig& cfg) {
  try {
    validate(niah_options(cfg, 0));
  } catch (const ConfigKeyError& e) {
    const std::string key = niah_option_key(e.key());
    const bool elsewhere = key.rfind("data.niah.", 0) != 0;
    throw ConfigKeyError(key, std::string("data.") + e.what() +
                                  (elsewhere ? " (the NIAH " + e.key() + " is " + key + ")" : ""));
  }
}

}  // namespace

void validate_data_config(const RunConfig& cfg) {
  validate_text_data(cfg);
  validate_tokenizer(cfg);
  if (cfg.data.source == "mqar") validate_mqar(cfg);
  if (cfg.data.source == "niah") validate_niah(cfg);
}

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

// One training source (data.text.train, or one data.text.mix entry): its shards, and its held-out shards in
// the order validation takes them (the held-out tails of its text files, then its prefixes' val shards).
struct TrainSource {
  std::vector<std::string> shards, held_out;
  size_t held_out_tokenized_here = 0;  // the first ones of held_out: text tokenized at start (bytes known)
};

// Text files among the entries are tokenized with `tok` into TOKEN_PREFIX.{train,val}.*.bin, val_fraction of
// each held out.
TrainSource resolve_train_source(const std::vector<std::string>& entries, const std::string& key,
                                 const std::string& token_prefix, double val_fraction, const Tokenizer& tok) {
  Resolved r;
  for (const auto& e : entries) resolve_entry(e, key, r);
  TrainSource s{r.shards, {}};
  if (!r.text_files.empty()) {
    fs::create_directories(fs::path(token_prefix).parent_path());
    TokenizeOptions opts;
    opts.val_fraction = val_fraction;
    opts.overwrite = true;  // the run directory's own copy, tokenized again at every start
    TokenizeReport rep = tokenize(r.text_files, token_prefix, tok, opts);
    s.shards.insert(s.shards.end(), rep.train_shards.begin(), rep.train_shards.end());
    s.held_out.insert(s.held_out.end(), rep.val_shards.begin(), rep.val_shards.end());
    s.held_out_tokenized_here = rep.val_shards.size();
  }
  s.held_out.insert(s.held_out.end(), r.prefix_val_shards.begin(), r.prefix_val_shards.end());
  return s;
}

// Text bytes per token of shards tokenized with `tok` (their tokens decoded again), for bits per byte.
double bytes_per_token(const std::vector<std::string>& shards, const Tokenizer& tok) {
  int64_t bytes = 0, tokens = 0;
  for (const auto& p : shards) {
    const std::vector<uint32_t> ids = Shard::open(p, /*verify_checksum=*/false).read_all();
    bytes += int64_t(tok.decode(ids).size());
    tokens += int64_t(ids.size());
  }
  return tokens > 0 ? double(bytes) / double(tokens) : 0.0;
}

}  // namespace

std::string mix_source_name(const std::vector<MixEntry>& mix, size_t i) {
  return "data.text.mix[" + std::to_string(i) + "] '" + mix[i].path + "'";
}

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
    const TextDataConfig& text = cfg.data.text;
    const std::string token_dir = (fs::path(run_dir) / "data").string();
    // Without data.text.val, the training sources hold out their text tails (and bring their prefix val shards).
    const double hold_out = text.val.empty() ? text.val_fraction : 0.0;
    Resolved val;
    for (const auto& e : text.val) resolve_entry(e, "data.text.val", val);
    std::vector<std::string> val_shards = val.shards;
    std::vector<std::string> val_tokenized_here;  // validation shards from text tokenized at start
    if (!val.text_files.empty()) {
      fs::create_directories(token_dir);
      TokenizeOptions opts;
      opts.overwrite = true;
      TokenizeReport rep = tokenize(val.text_files, token_dir + "/val_text", tok, opts);
      val_shards.insert(val_shards.end(), rep.train_shards.begin(), rep.train_shards.end());
      val_tokenized_here.insert(val_tokenized_here.end(), rep.train_shards.begin(), rep.train_shards.end());
    }
    std::vector<TrainSource> train;
    if (text.mix.empty()) {
      train.push_back(resolve_train_source(text.train, "data.text.train", token_dir + "/train_text", hold_out, tok));
    } else {
      for (size_t i = 0; i < text.mix.size(); ++i)
        train.push_back(resolve_train_source({text.mix[i].path}, "data.text.mix[" + std::to_string(i) + "].path",
                                             token_dir + "/mix" + std::to_string(i) + "_text", hold_out, tok));
    }
    if (text.val.empty())
      for (const TrainSource& s : train) {
        val_shards.insert(val_shards.end(), s.held_out.begin(), s.held_out.end());
        val_tokenized_here.insert(val_tokenized_here.end(), s.held_out.begin(),
                                  s.held_out.begin() + std::ptrdiff_t(s.held_out_tokenized_here));
      }

    // Bits per byte needs the text bytes behind the validation tokens: 1 a token for the byte tokenizer; for
    // another, known when every validation shard was tokenized here (their tokens decoded again).
    if (tok.kind() == "byte") d.val_bytes_per_token = 1.0;
    else if (!val_shards.empty() && val_tokenized_here.size() == val_shards.size())
      d.val_bytes_per_token = bytes_per_token(val_tokenized_here, tok);

    LoaderOptions lo;
    lo.batch_size = t.batch_size;
    lo.seq_len = t.seq_len;
    lo.seed = seed;
    lo.vocab_size = cfg.model.vocab_size;
    std::string sources_report;
    if (text.mix.empty()) {
      d.train = std::make_unique<TokenWindowLoader>(train[0].shards, lo);
    } else {
      std::vector<MixtureSource> sources;
      for (size_t i = 0; i < text.mix.size(); ++i)
        sources.push_back({mix_source_name(text.mix, i), train[i].shards, text.mix[i].weight});
      auto mixture = std::make_unique<MixtureLoader>(sources, lo);
      sources_report = mixture->describe_sources(t.steps * t.grad_accum);
      d.train = std::move(mixture);
    }
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
    if (!sources_report.empty()) d.description = sources_report + "\n" + d.description;
  }
  d.description = "train: " + d.train->describe() + (d.description.empty() ? "" : "\n" + d.description);
  if (d.train->vocab_size() > cfg.model.vocab_size)
    throw InputError("data: the training data uses token ids up to " + std::to_string(d.train->vocab_size() - 1) +
                     " but model.vocab_size is " + std::to_string(cfg.model.vocab_size));
  return d;
}

}  // namespace natsl
