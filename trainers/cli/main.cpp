// The `natsl` program: train, eval, tokenize, tokenizer (train/encode/decode), inspect. Exit codes: 0 ok, 2 bad input (config, data,
// checkpoint, command line or an unusable train.out_dir), 1 internal error or a failed write (disk full);
// every error is one line on stderr.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>

#include "core/error.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "trainers/checkpoint.h"
#include "trainers/config.h"
#include "trainers/sync_file.h"
#include "trainers/trainer.h"
#include "trainers/version.h"

namespace fs = std::filesystem;
using namespace natsl;

namespace {

constexpr int kExitBadInput = 2;
constexpr int kExitInternal = 1;

std::string summary_line(const nlohmann::json& ev) {
  std::string s;
  for (auto it = ev.begin(); it != ev.end(); ++it)
    s += fmt::format("{}{} {}", s.empty() ? "" : ", ", it.key(),
                     it->is_number_float() ? fmt::format("{:.4f}", it->get<double>()) : it->dump());
  return s;
}

int cmd_train(const std::string& config, const std::vector<std::string>& overrides) {
  RunConfig cfg = load_config(config, overrides);
  Trainer trainer(cfg);
  TrainSummary s = trainer.train();
  std::string eval = s.last_eval.empty() ? "" : "; eval: " + summary_line(s.last_eval);
  fmt::print("{}: step {}/{}, loss {:.4f}, skipped steps {}{}\n",
             s.interrupted ? "interrupted" : s.stopped_at_step ? "stopped" : "done", s.step, cfg.train.steps,
             s.last_loss, s.skipped_steps, eval);
  return 0;
}

int cmd_eval(const std::string& config, std::vector<std::string> overrides) {
  std::string checkpoint;
  for (auto it = overrides.begin(); it != overrides.end();)
    if (it->rfind("checkpoint=", 0) == 0) {
      checkpoint = it->substr(11);
      it = overrides.erase(it);
    } else {
      ++it;
    }
  RunConfig cfg = load_config(config, overrides);
  if (checkpoint.empty()) {
    CheckpointScan scan = find_latest_checkpoint(cfg.train.out_dir);
    for (const auto& w : scan.warnings) fmt::print(stderr, "warning: {}\n", w);
    if (!scan.latest)
      throw InputError("no checkpoint= given and none found in " + cfg.train.out_dir +
                       "/checkpoints; use natsl eval CONFIG checkpoint=DIR");
    checkpoint = *scan.latest;
  }
  cfg.resume = checkpoint;
  TrainerOptions opts;
  opts.write_run_dir = false;
  Trainer trainer(cfg, opts);
  nlohmann::json ev = trainer.evaluate();
  if (ev.empty()) throw InputError("the config has no held-out data to evaluate on (data.text.val, or eval_batches = 0)");
  fmt::print("eval at step {}: {}\n", trainer.step(), summary_line(ev));
  fmt::print("{}\n", nlohmann::json{{"step", trainer.step()}, {"checkpoint", checkpoint}, {"eval", ev}}.dump());
  return 0;
}

int cmd_tokenize(const std::vector<std::string>& paths, double val_fraction, int64_t max_tokens, bool keep_bom) {
  if (paths.size() < 2) throw InputError("tokenize needs at least one input file and an output prefix");
  std::vector<std::string> inputs(paths.begin(), paths.end() - 1);
  fs::path parent = fs::path(paths.back()).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  TokenizeOptions o;
  o.val_fraction = val_fraction;
  o.max_tokens_per_shard = max_tokens;
  o.strip_utf8_bom = !keep_bom;
  TokenizeReport r = tokenize_files(inputs, paths.back(), o);
  fmt::print("{} document(s): {} train tokens in {} shard(s), {} val tokens in {} shard(s)\n", r.documents,
             r.train_tokens, r.train_shards.size(), r.val_tokens, r.val_shards.size());
  for (const auto& s : r.train_shards) fmt::print("  {}\n", s);
  for (const auto& s : r.val_shards) fmt::print("  {}\n", s);
  return 0;
}

// natsl tokenizer train: PREFIX.model and PREFIX.vocab (the folder made if missing), each written aside and renamed.
int cmd_tokenizer_train(const SentencePieceTrainOptions& o, const std::string& prefix) {
  SentencePieceModel m = train_sentencepiece(o);
  const fs::path parent = fs::path(prefix).parent_path();
  std::error_code ec;
  if (!parent.empty() && !fs::create_directories(parent, ec) && ec)
    throw InputError("tokenizer train: cannot create the output directory '" + parent.string() + "' (from --out '" +
                     prefix + "'): " + ec.message());
  replace_file_atomically(prefix + ".model", m.model);
  replace_file_atomically(prefix + ".vocab", m.vocab);
  SentencePieceTokenizer tok(prefix + ".model");
  fmt::print("wrote {}.model and {}.vocab: {} {} pieces, xxh3_64 {}\n", prefix, prefix, o.model_type, tok.vocab_size(),
             tok.identity().at("xxh3_64").get<std::string>());
  fmt::print("use it with: tokenizer.kind=sentencepiece tokenizer.model={}.model model.vocab_size={}\n", prefix,
             tok.vocab_size());
  return 0;
}

TokenizerSpec spec_of_model(const std::string& model) {
  return model.empty() ? TokenizerSpec{} : TokenizerSpec{"sentencepiece", model};
}

// natsl tokenizer encode: the text of a file (or stdin) as one line of space-separated ids.
int cmd_tokenizer_encode(const std::string& model, const std::string& path) {
  std::string text;
  if (path == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) throw InputError("tokenizer encode: '" + path + "' is not a readable file");
    std::ifstream in(path, std::ios::binary);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  std::vector<uint32_t> ids;
  open_tokenizer(spec_of_model(model))->encode(text, ids);
  std::string line;
  for (uint32_t id : ids) line += (line.empty() ? "" : " ") + std::to_string(id);
  fmt::print("{}\n", line);
  return 0;
}

// natsl tokenizer decode: ids (arguments) -> text on stdout.
int cmd_tokenizer_decode(const std::string& model, const std::vector<std::string>& args) {
  std::vector<uint32_t> ids;
  for (const auto& a : args) {
    uint64_t v = 0;
    size_t used = 0;
    try {
      v = std::stoull(a, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != a.size() || a.empty() || a[0] == '-' || v > UINT32_MAX)
      throw InputError("tokenizer decode: '" + a + "' is not a token id (a non-negative integer)");
    ids.push_back(uint32_t(v));
  }
  fmt::print("{}", open_tokenizer(spec_of_model(model))->decode(ids));
  return 0;
}

void describe_safetensors(const std::string& path, size_t max_rows) {
  SafeTensorsReader r(path);
  int64_t total = 0;
  for (const auto& e : r.entries()) total += shape_numel(e.shape);
  fmt::print("{}: {} tensors, {} elements\n", path, r.entries().size(), total);
  for (size_t i = 0; i < r.entries().size() && i < max_rows; ++i) {
    const auto& e = r.entries()[i];
    fmt::print("  {:<60} {:<5} {}\n", e.name, safetensors_dtype_name(e.dtype), shape_str(e.shape));
  }
  if (r.entries().size() > max_rows) fmt::print("  ... {} more\n", r.entries().size() - max_rows);
}

int cmd_inspect(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    CheckpointReader ck(path);
    // state.json is untrusted: a field of the wrong type is bad input (found by fuzz_checkpoint_state), and
    // every field is read before anything is printed, so the error stays one line.
    std::string version, commit, model;
    const TrainerCounters counters = read_trainer_counters(ck, /*required=*/false);
    try {
      const auto& st = ck.state();
      version = st.value("natsl_version", "?");
      commit = st.value("git_commit", "?");
      const auto& tr = ck.trainer();
      if (tr.contains("config")) {
        RunConfig cfg = config_from_json(tr["config"], path + "/state.json");
        model = fmt::format("  model: {} (d={}, layers={}, vocab={}); data: {}\n", cfg.model.name, cfg.model.hidden_size,
                            cfg.model.num_layers, cfg.model.vocab_size, cfg.data.source);
      }
    } catch (const nlohmann::json::exception& e) {
      throw InputError("'" + (fs::path(path) / "state.json").string() + "' has a malformed field (" + e.what() + ")");
    }
    fmt::print("checkpoint {}: step {}, natsl {}, commit {}\n", path, ck.step(), version, commit);
    fmt::print("  optimizer steps {}, skipped steps {}, tokens seen {}\n", counters.optimizer_steps, counters.skipped_steps,
               counters.tokens_seen);
    fmt::print("{}", model);
    describe_safetensors((fs::path(path) / "model.safetensors").string(), 12);
    describe_safetensors((fs::path(path) / "optimizer.safetensors").string(), 4);
    return 0;
  }
  if (!fs::exists(path, ec)) throw InputError("'" + path + "' does not exist");
  std::ifstream in(path, std::ios::binary);
  char magic[8] = {};
  in.read(magic, 8);
  if (in && std::equal(magic, magic + 8, kShardMagic)) {
    fmt::print("{}\n", describe_shard(path));
    return 0;
  }
  if (path.size() > 12 && path.substr(path.size() - 12) == ".safetensors") {
    describe_safetensors(path, 1000);
    return 0;
  }
  throw InputError("'" + path + "' is neither a token shard, a .safetensors file nor a checkpoint directory");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"natsl: train token-level hybrid attention language models (NAtS-L, Gated DeltaNet, Transformer++)"};
  app.set_version_flag("--version", fmt::format("natsl {} (commit {})", natsl_version(), natsl_git_commit()));
  app.require_subcommand(1);

  std::string config;
  std::vector<std::string> overrides;
  CLI::App* train = app.add_subcommand("train", "Train a model from a YAML config (resumable: resume=auto)");
  train->add_option("config", config, "run config, YAML (see configs/)")->required();
  train->add_option("overrides", overrides,
                    "KEY=VALUE overrides checked against the schema: train.steps=N train.out_dir=DIR train.seed=N "
                    "train.stop_at_step=N resume=auto|none|DIR, any section.key=value, model=FILE");
  train->footer("Writes OUT_DIR/config.yaml, OUT_DIR/metrics.jsonl and OUT_DIR/checkpoints/step_NNNNNN/.");

  std::string eval_config;
  std::vector<std::string> eval_args;
  CLI::App* eval = app.add_subcommand("eval", "Evaluate a checkpoint on the config's held-out data");
  eval->add_option("config", eval_config, "run config, YAML")->required();
  eval->add_option("args", eval_args, "checkpoint=DIR (default: the newest in train.out_dir) and KEY=VALUE overrides");

  std::vector<std::string> tok_paths;
  double val_fraction = 0.0;
  int64_t max_tokens = int64_t(1) << 30;
  bool keep_bom = false;
  CLI::App* tok = app.add_subcommand("tokenize", "Turn text files into byte-level token shards");
  tok->add_option("paths", tok_paths, "IN... OUT_PREFIX: input text files, then the output prefix")
      ->required()
      ->expected(2, -1);
  tok->add_option("--val-fraction", val_fraction, "hold out the last fraction of each file as validation shards")
      ->check(CLI::Range(0.0, 0.99));
  tok->add_option("--max-tokens-per-shard", max_tokens, "tokens per shard file")->check(CLI::PositiveNumber);
  tok->add_flag("--keep-bom", keep_bom, "keep a leading UTF-8 byte-order mark");
  tok->footer("Writes OUT_PREFIX.train.NNNNNN.bin (and OUT_PREFIX.val.NNNNNN.bin); format: docs/data-format.md.");

  CLI::App* tkz = app.add_subcommand("tokenizer", "Train a SentencePiece tokenizer, or encode/decode with one");
  tkz->require_subcommand(1);
  SentencePieceTrainOptions spm;
  std::string spm_out;
  CLI::App* tkz_train = tkz->add_subcommand("train", "Train a SentencePiece model (BPE or unigram) on text files");
  tkz_train->add_option("--input", spm.inputs, "text files to learn from (each line is a sentence)")
      ->required()
      ->expected(1, -1);
  tkz_train->add_option("--vocab-size", spm.vocab_size, "vocabulary size (at least 260: 3 markers + 256 bytes + 1)")
      ->required();
  tkz_train->add_option("--model-type", spm.model_type, "bpe or unigram")->capture_default_str();
  tkz_train->add_option("--threads", spm.threads, "training threads (the model depends on the count)")
      ->capture_default_str();
  tkz_train->add_option("--out", spm_out, "output prefix: writes PREFIX.model and PREFIX.vocab")->required();
  tkz_train->footer("Deterministic: the same inputs and options give the same model. Use the model with "
                    "tokenizer.kind=sentencepiece tokenizer.model=PREFIX.model (docs/data-format.md).");
  std::string tkz_model, tkz_input = "-";
  std::vector<std::string> tkz_ids;
  CLI::App* tkz_encode = tkz->add_subcommand("encode", "Print the token ids of a text file (or stdin)");
  tkz_encode->add_option("--model", tkz_model, "SentencePiece .model file (default: the byte tokenizer)");
  tkz_encode->add_option("input", tkz_input, "text file, or - for stdin")->capture_default_str();
  CLI::App* tkz_decode = tkz->add_subcommand("decode", "Print the text of token ids");
  tkz_decode->add_option("--model", tkz_model, "SentencePiece .model file (default: the byte tokenizer)");
  tkz_decode->add_option("ids", tkz_ids, "token ids")->required();

  std::string inspect_path;
  CLI::App* inspect = app.add_subcommand("inspect", "Describe a token shard, a .safetensors file or a checkpoint");
  inspect->add_option("path", inspect_path, "shard file, .safetensors file or checkpoint directory")->required();

  if (argc > 1 && argv[1][0] != '-') {
    const std::string cmd = argv[1];
    if (cmd != "train" && cmd != "eval" && cmd != "tokenize" && cmd != "tokenizer" && cmd != "inspect") {
      fmt::print(stderr,
                 "natsl: error: unknown command '{}': expected train, eval, tokenize, tokenizer or inspect (see natsl "
                 "--help)\n",
                 cmd);
      return kExitBadInput;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    fmt::print(stderr, "natsl: error: {} (see natsl --help)\n", e.what());
    return kExitBadInput;
  }

  try {
    if (*train) return cmd_train(config, overrides);
    if (*eval) return cmd_eval(eval_config, eval_args);
    if (*tok) return cmd_tokenize(tok_paths, val_fraction, max_tokens, keep_bom);
    if (*tkz_train) return cmd_tokenizer_train(spm, spm_out);
    if (*tkz_encode) return cmd_tokenizer_encode(tkz_model, tkz_input);
    if (*tkz_decode) return cmd_tokenizer_decode(tkz_model, tkz_ids);
    if (*inspect) return cmd_inspect(inspect_path);
  } catch (const Error& e) {
    fmt::print(stderr, "natsl: error: {}\n", e.what());
    return e.kind() == ErrorKind::BadInput ? kExitBadInput : kExitInternal;
  } catch (const std::exception& e) {
    fmt::print(stderr, "natsl: internal error: {}\n", e.what());
    return kExitInternal;
  }
  return kExitInternal;
}
