// The `natsl` program: train, eval, generate, tokenize, tokenizer (train/encode/decode), sweep, export-hf, import-hf,
// inspect. Exit codes: 0 ok, 2 bad input (config, data,
// checkpoint, command line or an unusable train.out_dir), 1 internal error or a failed write (disk full);
// every error is one line on stderr. `train --nproc N` exits with its first failing rank's code (0 if none failed).
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <set>
#include <fstream>
#include <iostream>
#include <iterator>

#include "core/error.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/shard.h"
#include "data/tokenize.h"
#include "data/tokenizer.h"
#include "trainers/io/checkpoint.h"
#include "trainers/config.h"
#include "trainers/dist/launch.h"
#include "trainers/dist/local_launcher.h"
#include "trainers/eval_suite.h"
#include "trainers/generate.h"
#include "trainers/io/hf_interchange.h"
#include "trainers/sweep.h"
#include "data/sync_file.h"
#include "trainers/trainer.h"
#include "trainers/io/version.h"

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
  if (trainer.rank() != 0) return 0;  // rank 0 reports for the job
  std::string eval = s.last_eval.empty() ? "" : "; eval: " + summary_line(s.last_eval);
  fmt::print("{}: step {}/{}, loss {:.4f}, skipped steps {}{}\n",
             s.interrupted ? "interrupted" : s.stopped_at_step ? "stopped" : "done", s.step, cfg.train.steps,
             s.last_loss, s.skipped_steps, eval);
  return 0;
}

// natsl train --nproc N: N ranks of this job on this host (trainers/dist/local_launcher.h), each running
// `natsl train` with the same arguments less --nproc. The config is checked here first, so a mistake in it is
// one line rather than one per rank.
int cmd_train_local_ranks(int nproc, const std::string& config, const std::vector<std::string>& overrides, int argc,
                          char** argv) {
  if (nproc < 1) throw InputError(fmt::format("--nproc {} is not a number of processes: give 1 or more", nproc));
  for (const char* name : {"RANK", "WORLD_SIZE"})
    if (const char* v = std::getenv(name); v && *v)
      throw InputError(fmt::format("--nproc starts the ranks itself, but {}={} is already set (by torchrun, srun or "
                                   "an outer natsl --nproc): drop --nproc, or unset RANK and WORLD_SIZE",
                                   name, v));
  const dist::LaunchInfo outer = dist::launch_info_from_env();
  if (outer.multi())
    throw InputError(fmt::format("--nproc starts the ranks itself, but this process is rank {} of {} started by {}: "
                                 "drop --nproc (srun --ntasks-per-node=N starts the ranks), or run one task",
                                 outer.rank, outer.world_size, outer.launcher));
  load_config(config, overrides);
  return dist::launch_local_ranks(nproc, dist::args_without_nproc(std::vector<std::string>(argv, argv + argc)));
}

int cmd_sweep(const std::string& file, bool dry_run, int64_t parallel) {
  Sweep sweep = load_sweep(file);
  if (parallel > 0) {
    if (!sweep.devices.empty())
      throw InputError(fmt::format("{}: --parallel {} with a devices list: the sweep runs one run per listed device; "
                                   "drop --parallel or the file's devices",
                                   file, parallel));
    sweep.parallel = parallel;
  }
  SweepOptions opts;
  opts.dry_run = dry_run;
  std::error_code ec;
  opts.natsl_binary = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec) throw Error("cannot find the natsl program itself (/proc/self/exe): " + ec.message());
  return run_sweep(sweep, opts) == 0 ? 0 : kExitInternal;
}

// Removes checkpoint=DIR from the overrides and returns DIR ("" when absent).
std::string take_checkpoint(std::vector<std::string>& overrides) {
  std::string checkpoint;
  for (auto it = overrides.begin(); it != overrides.end();)
    if (it->rfind("checkpoint=", 0) == 0) {
      checkpoint = it->substr(11);
      if (checkpoint.empty()) throw InputError("checkpoint= names no directory; use checkpoint=DIR");
      it = overrides.erase(it);
    } else {
      ++it;
    }
  return checkpoint;
}

// The checkpoint given, or the newest valid one in train.out_dir; InputError naming `command` when none.
std::string checkpoint_or_latest(const std::string& given, const RunConfig& cfg, const std::string& command) {
  if (!given.empty()) return given;
  CheckpointScan scan = find_latest_checkpoint(cfg.train.out_dir);
  for (const auto& w : scan.warnings) fmt::print(stderr, "warning: {}\n", w);
  if (!scan.latest)
    throw InputError("no checkpoint= given and none found in " + cfg.train.out_dir + "/checkpoints; use natsl " +
                     command + " CONFIG checkpoint=DIR");
  return *scan.latest;
}

int cmd_eval(const std::string& config, std::vector<std::string> overrides, const EvalSuite& suite,
             const std::string& json_out) {
  std::string checkpoint = take_checkpoint(overrides);
  RunConfig cfg = load_config(config, overrides);
  checkpoint = checkpoint_or_latest(checkpoint, cfg, "eval");
  cfg.resume = checkpoint;
  TrainerOptions opts;
  opts.write_run_dir = false;
  Trainer trainer(cfg, opts);
  const bool has_suite = (!suite.mqar_pairs.empty() && !suite.mqar_lengths.empty()) || !suite.niah_lengths.empty() ||
                         !suite.choices.empty() || !suite.routing_map.empty() || !suite.logits.empty();
  if (suite.mqar_pairs.empty() != suite.mqar_lengths.empty())
    throw InputError("give both --mqar-pairs and --mqar-lengths (the MQAR grid is their product)");
  nlohmann::json ev = trainer.evaluate();
  if (ev.empty() && !has_suite)
    throw InputError("the config has no held-out data to evaluate on (data.text.val, or eval_batches = 0)");
  nlohmann::json result = {{"step", trainer.step()}, {"checkpoint", checkpoint}};
  if (!ev.empty()) {
    fmt::print("eval at step {}: {}\n", trainer.step(), summary_line(ev));
    result["eval"] = ev;
  }
  if (has_suite) result["suite"] = run_eval_suite(trainer, suite, stdout);
  fmt::print("{}\n", result.dump());
  if (!json_out.empty()) replace_file_atomically(json_out, result.dump(2) + "\n");
  return 0;
}

struct GenerateArgs {
  std::string config;
  std::vector<std::string> args;  // checkpoint=DIR and overrides
  std::string prompt, prompt_file, json;
  bool ignore_eos = false;
  GenerateOptions opts;
};

std::string read_prompt_file(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw InputError("--prompt-file '" + path + "' is not a readable file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("--prompt-file '" + path + "' cannot be read");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// natsl generate: the prompt through the checkpoint's model, then the continuation and one stats line.
int cmd_generate(GenerateArgs a, bool prompt_given, bool prompt_file_given) {
  // Everything that needs no model first, so bad input is refused at once.
  validate_sampling(a.opts.sampling);
  if (a.opts.max_new_tokens < 1)
    throw InputError("--max-new-tokens must be at least 1, got " + std::to_string(a.opts.max_new_tokens));
  if (!prompt_given && !prompt_file_given) throw InputError("give the prompt: --prompt TEXT or --prompt-file FILE");
  const std::string text = prompt_file_given ? read_prompt_file(a.prompt_file) : a.prompt;
  if (text.empty())
    throw InputError(std::string("the prompt is empty") + (prompt_file_given ? " ('" + a.prompt_file + "')" : "") +
                     ": give some text to continue");
  std::string checkpoint = take_checkpoint(a.args);
  RunConfig cfg = load_config(a.config, a.args);
  checkpoint = checkpoint_or_latest(checkpoint, cfg, "generate");
  const std::unique_ptr<Tokenizer> tok = open_tokenizer(cfg.tokenizer);
  if (tok->vocab_size() > cfg.model.vocab_size)
    throw InputError("the tokenizer (" + tok->kind() + ", " + std::to_string(tok->vocab_size()) +
                     " ids) does not fit model.vocab_size " + std::to_string(cfg.model.vocab_size) +
                     ": generate with the tokenizer the model was trained with (tokenizer.kind, tokenizer.model)");
  const nlohmann::json identity = tok->identity();
  const InferenceModel m = load_inference_model(cfg, checkpoint, &identity);

  std::vector<uint32_t> ids;
  if (tok->bos_id()) ids.push_back(*tok->bos_id());
  tok->encode(text, ids);
  a.opts.candidates = tok->vocab_size();
  if (!a.ignore_eos) a.opts.stop_token = tok->eos_id();
  const GenerateResult r = generate(*m.model, ids, a.opts);
  const std::string out = tok->decode(r.tokens);
  const double ratio = r.full_attention_kv_bytes > 0 ? double(r.kv_bytes) / double(r.full_attention_kv_bytes) : 0.0;
  fmt::print("{}{}\n", text, out);
  fmt::print("prefill {} tokens: {:.1f} tokens/s; decode {} tokens{} in {} steps: {:.1f} tokens/s; KV cache {} bytes "
             "held vs {} for full attention (ratio {:.4f}); other decoding state {} bytes\n",
             r.prompt_tokens, r.prefill_tokens_per_second(), r.tokens.size(), r.stopped ? " (stopped at EOS)" : "",
             r.decode_steps, r.decode_tokens_per_second(), r.kv_bytes, r.full_attention_kv_bytes, ratio, r.state_bytes);
  if (!a.json.empty()) {
    const SamplingOptions& s = a.opts.sampling;
    const nlohmann::json j = {
        {"checkpoint", checkpoint},
        {"step", m.step},
        {"device", m.device.str()},
        {"prompt", text},
        {"text", out},
        {"prompt_tokens", r.prompt_tokens},
        {"tokens", r.tokens},
        {"new_tokens", r.tokens.size()},
        {"stopped_at_eos", r.stopped},
        {"sampling", {{"temperature", s.temperature}, {"top_k", s.top_k}, {"top_p", s.top_p}, {"seed", s.seed}}},
        {"prefill_seconds", r.prefill_seconds},
        {"prefill_tokens_per_s", r.prefill_tokens_per_second()},
        {"decode_steps", r.decode_steps},
        {"decode_seconds", r.decode_seconds},
        {"decode_tokens_per_s", r.decode_tokens_per_second()},
        {"kv_cache_bytes", r.kv_bytes},
        {"full_attention_kv_bytes", r.full_attention_kv_bytes},
        {"kv_cache_ratio", ratio},
        {"decode_state_bytes", r.state_bytes}};
    // Sampled bytes need not be UTF-8: the JSON strings replace what is not (the ids are in "tokens").
    replace_file_atomically(a.json, j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  }
  return 0;
}

struct TokenizeArgs {
  std::vector<std::string> paths;
  TokenizeOptions opts;
  TokenizerSpec tokenizer{"", ""};
  std::string bad_lines = "error";
  bool keep_bom = false, bos = false, no_bos = false, eos = false, no_eos = false, quiet = false;
};

int cmd_tokenize(TokenizeArgs a) {
  if (a.paths.size() < 2) throw InputError("tokenize needs at least one input and an output prefix");
  std::vector<std::string> inputs(a.paths.begin(), a.paths.end() - 1);
  const std::string prefix = a.paths.back();
  fs::path parent = fs::path(prefix).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  if (a.tokenizer.kind.empty()) a.tokenizer.kind = a.tokenizer.model.empty() ? "byte" : "sentencepiece";
  const std::unique_ptr<Tokenizer> tok = open_tokenizer(a.tokenizer);
  a.opts.strip_utf8_bom = !a.keep_bom;
  a.opts.bad_lines = a.bad_lines == "skip" ? BadLines::Skip : BadLines::Error;
  if (a.bos || a.no_bos) a.opts.bos = a.bos;
  if (a.eos || a.no_eos) a.opts.eos = a.eos;
  a.opts.progress = !a.quiet;
  const TokenizeReport r = tokenize(inputs, prefix, *tok, a.opts);
  if (r.up_to_date) {
    fmt::print("up to date: {} lists {} train and {} val shard(s) of this exact tokenization (--overwrite redoes it)\n",
               r.manifest, r.train_shards.size(), r.val_shards.size());
    return 0;
  }
  const double mb = double(r.input_bytes) / 1e6;
  fmt::print("{} document(s) from {} input(s), {:.1f} MB: {} train tokens in {} shard(s), {} val tokens in {} shard(s); "
             "{} bad line(s) skipped{}; {:.1f} s, {:.1f} MB/s\n",
             r.documents, r.inputs.size(), mb, r.train_tokens, r.train_shards.size(), r.val_tokens, r.val_shards.size(),
             r.skipped_lines, r.resumed ? fmt::format("; resumed, {} shard(s) kept", r.kept_shards) : "", r.seconds,
             r.seconds > 0 ? mb / r.seconds : 0.0);
  std::vector<std::string> shards = r.train_shards;
  shards.insert(shards.end(), r.val_shards.begin(), r.val_shards.end());
  for (size_t i = 0; i < shards.size(); ++i) {
    if (shards.size() > 20 && i == 10) {
      fmt::print("  ... {} more\n", shards.size() - 20);
      i = shards.size() - 10;
    }
    fmt::print("  {}\n", shards[i]);
  }
  fmt::print("  {}\n", r.manifest);
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
    if (ck.sharded())  // ZeRO-1: one optimizer file per rank, each a range of the flat moments
      fmt::print("optimizer: ZeRO-1 shards of {} ranks over {} flat elements ({} ... {})\n", ck.zero().world_size,
                 ck.zero().flat_elements, ck.zero().shards.front().file, ck.zero().shards.back().file);
    else
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
  int nproc = 0;
  train->add_option("--nproc", nproc,
                    "run N ranks of this job on this host (each gets RANK, WORLD_SIZE, MASTER_ADDR/PORT; "
                    "docs/distributed.md); under torchrun or srun leave it out");
  train->footer("Writes OUT_DIR/config.yaml, OUT_DIR/metrics.jsonl and OUT_DIR/checkpoints/step_NNNNNN/.\n"
                "Several ranks: natsl train --nproc N CONFIG, torchrun --nproc-per-node=N --no-python natsl train "
                "CONFIG, or srun natsl train CONFIG (docs/distributed.md).");

  std::string eval_config;
  std::vector<std::string> eval_args;
  CLI::App* eval = app.add_subcommand(
      "eval", "Evaluate a checkpoint: the config's held-out data, MQAR/NIAH grids, multiple choice, routing maps");
  eval->add_option("config", eval_config, "run config, YAML")->required();
  eval->add_option("args", eval_args, "checkpoint=DIR (default: the newest in train.out_dir) and KEY=VALUE overrides");
  EvalSuite suite;
  std::string eval_json;
  eval->add_option("--mqar-pairs", suite.mqar_pairs, "MQAR grid: key-value pair counts, e.g. 4,16,64")->delimiter(',');
  eval->add_option("--mqar-lengths", suite.mqar_lengths, "MQAR grid: sequence lengths, e.g. 256,1024")->delimiter(',');
  eval->add_option("--niah-lengths", suite.niah_lengths, "NIAH grid: sequence lengths, e.g. 1024,4096")->delimiter(',');
  eval->add_option("--niah-depths", suite.niah_depths, "NIAH grid: needle depths in percent (default 0,25,50,75,100)")
      ->delimiter(',');
  eval->add_option("--choices", suite.choices, "multiple-choice requests, JSONL: {context, continuations, label}");
  eval->add_option("--routing-map", suite.routing_map,
                   "a text file: every NAtS-L layer's softmax/GDN label of each of its chunks and router heads");
  eval->add_option("--logits", suite.logits,
                   "TEXT OUT.safetensors: the text's tokens and the model's logits at every position (f32), to compare "
                   "with another implementation")
      ->expected(2);
  eval->add_flag("--per-request", suite.per_request, "with --choices: every request's log-likelihoods in the output");
  eval->add_option("--batches", suite.batches, "batches per MQAR / NIAH grid point (default 4)")->check(CLI::PositiveNumber);
  eval->add_option("--json", eval_json, "also write the result to this file");

  GenerateArgs ga;
  CLI::App* gen = app.add_subcommand(
      "generate", "Continue a prompt with a checkpoint's model: chunked prefill, then token-by-token decoding");
  gen->add_option("config", ga.config, "run config, YAML (its model, tokenizer and train.device)")->required();
  gen->add_option("args", ga.args, "checkpoint=DIR (default: the newest in train.out_dir) and KEY=VALUE overrides");
  CLI::Option* prompt_opt = gen->add_option("--prompt", ga.prompt, "the text to continue");
  CLI::Option* prompt_file_opt = gen->add_option("--prompt-file", ga.prompt_file, "read the text to continue from a file");
  prompt_opt->excludes(prompt_file_opt);
  gen->add_option("--max-new-tokens", ga.opts.max_new_tokens, "tokens to generate at most")->capture_default_str();
  gen->add_option("--temperature", ga.opts.sampling.temperature, "softmax temperature; 0 = greedy (argmax)")
      ->capture_default_str();
  gen->add_option("--top-k", ga.opts.sampling.top_k, "sample among the k most likely tokens only; 0 = off")
      ->capture_default_str();
  gen->add_option("--top-p", ga.opts.sampling.top_p, "nucleus: the fewest most likely tokens holding this mass; 1 = off")
      ->capture_default_str();
  gen->add_option("--seed", ga.opts.sampling.seed, "sampling seed (Philox): the same seed gives the same text")
      ->capture_default_str();
  gen->add_flag("--ignore-eos", ga.ignore_eos, "keep going after the tokenizer's EOS token (default: stop there)");
  gen->add_option("--json", ga.json, "also write the text, tokens and statistics to this file");
  gen->footer("Prints the prompt and its continuation, then one line: prefill and decode tokens/s, and the KV cache "
              "held (NAtS-L: the softmax-kept chunks and the current chunk) against a full-attention cache of the "
              "same model size. docs/training.md, \"Generation\".");

  TokenizeArgs ta;
  CLI::App* tok = app.add_subcommand("tokenize", "Turn text and JSONL files into token shards, in parallel, resumable");
  tok->add_option("paths", ta.paths,
                  "IN... OUT_PREFIX: input files (.txt/.md: one document each; .jsonl: one per line; .gz/.zst "
                  "read as they stream), directories (searched recursively) or globs, then the output prefix")
      ->required()
      ->expected(2, -1);
  tok->add_option("--tokenizer-kind", ta.tokenizer.kind, "byte or sentencepiece (default: byte, or sentencepiece "
                  "with --tokenizer-model)")
      ->check(CLI::IsMember({"byte", "sentencepiece"}));
  tok->add_option("--tokenizer-model", ta.tokenizer.model, "the SentencePiece .model file");
  tok->add_option("--threads", ta.opts.threads, "tokenizing threads (default: all cores); the output is the same "
                  "for any number")
      ->check(CLI::Range(1, 1024));
  tok->add_option("--text-field", ta.opts.text_field, "the JSONL field holding each document's text")
      ->capture_default_str();
  tok->add_option("--bad-lines", ta.bad_lines, "a JSONL line that is not JSON, lacks the field or is not UTF-8: "
                  "error (stop, naming file:line) or skip (count it in the manifest)")
      ->check(CLI::IsMember({"error", "skip"}))
      ->capture_default_str();
  tok->add_option("--val-fraction", ta.opts.val_fraction, "hold out this fraction as validation shards: the tail "
                  "of each text file, whole JSONL documents chosen by a hash of their text")
      ->check(CLI::Range(0.0, 0.99));
  tok->add_option("--max-tokens-per-shard", ta.opts.max_tokens_per_shard, "tokens per shard file")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 40));
  auto* bos = tok->add_flag("--bos", ta.bos, "put BOS before each document (default: when the tokenizer has one)");
  tok->add_flag("--no-bos", ta.no_bos, "no BOS")->excludes(bos);
  auto* eos = tok->add_flag("--eos", ta.eos, "put EOS after each document (default: when the tokenizer has one)");
  tok->add_flag("--no-eos", ta.no_eos, "no EOS")->excludes(eos);
  tok->add_flag("--keep-bom", ta.keep_bom, "keep a leading UTF-8 byte-order mark");
  tok->add_flag("--overwrite", ta.opts.overwrite, "replace what OUT_PREFIX holds (default: resume an interrupted "
                "run of the same command, refuse other output)");
  tok->add_flag("--quiet", ta.quiet, "no progress on stderr");
  tok->add_option("--block-bytes", ta.opts.block_bytes, "JSONL bytes per unit of parallel work (tests)")
      ->group("")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 30));
  tok->footer("Writes OUT_PREFIX.train.NNNNNN.bin (and OUT_PREFIX.val.NNNNNN.bin) and OUT_PREFIX.manifest.json "
              "(counts and checksums); while running, OUT_PREFIX.progress.jsonl lets an interrupted run resume. "
              "Format: docs/data-format.md.");

  std::string sweep_file;
  bool sweep_dry_run = false;
  int64_t sweep_parallel = 0;
  CLI::App* sweep = app.add_subcommand("sweep", "Train every run of a sweep file (resumable: run it again to continue)");
  sweep->add_option("sweep", sweep_file, "sweep file, YAML: base config, out_dir, axes (see configs/sweeps/)")->required();
  sweep->add_flag("--dry-run", sweep_dry_run, "list the runs and whether each is new, partial or done; train nothing");
  sweep->add_option("--parallel", sweep_parallel,
                    "runs at once on the configs' own device (instead of the file's parallel; e.g. several small "
                    "runs sharing one GPU)")
      ->check(CLI::Range(int64_t(1), int64_t(256)));
  sweep->footer("Runs train in OUT_DIR/NAME (log: OUT_DIR/NAME/train.log); writes OUT_DIR/summary.csv and "
                "OUT_DIR/summary.md. Exit 1 when a run failed.");

  std::vector<std::string> hf_export_args, hf_import_args;
  CLI::App* export_hf_cmd =
      app.add_subcommand("export-hf", "Write a checkpoint as a Hugging Face folder (config.json + model.safetensors)");
  export_hf_cmd->add_option("paths", hf_export_args, "CHECKPOINT_DIR OUT_DIR")->required()->expected(2);
  export_hf_cmd->footer("The reference's NAtS-L class for models with natsl layers, FLA's GatedDeltaNet or Transformer "
                        "otherwise (docs/training.md, \"Hugging Face interchange\").");
  CLI::App* import_hf_cmd =
      app.add_subcommand("import-hf", "Read a Hugging Face folder into a model config and weights to train from");
  import_hf_cmd->add_option("paths", hf_import_args, "HF_DIR OUT_DIR")->required()->expected(2);
  import_hf_cmd->footer("Writes OUT_DIR/model.yaml and OUT_DIR/model.safetensors; train from them with "
                        "model=OUT_DIR/model.yaml train.init_from=OUT_DIR/model.safetensors.");

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
    const std::set<std::string> commands = {"train", "eval", "generate", "sweep", "tokenize", "tokenizer", "inspect", "export-hf", "import-hf"};
    if (!commands.count(cmd)) {
      fmt::print(stderr,
                 "natsl: error: unknown command '{}': expected train, eval, generate, sweep, tokenize, tokenizer, inspect, export-hf or import-hf (see natsl --help)\n",
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
    if (*train && train->count("--nproc")) return cmd_train_local_ranks(nproc, config, overrides, argc, argv);
    if (*train) return cmd_train(config, overrides);
    if (*eval) return cmd_eval(eval_config, eval_args, suite, eval_json);
    if (*gen) return cmd_generate(ga, prompt_opt->count() > 0, prompt_file_opt->count() > 0);
    if (*sweep) return cmd_sweep(sweep_file, sweep_dry_run, sweep_parallel);
    if (*export_hf_cmd) {
      export_hf(hf_export_args[0], hf_export_args[1]);
      fmt::print("wrote {}/config.json and {}/model.safetensors\n", hf_export_args[1], hf_export_args[1]);
      return 0;
    }
    if (*import_hf_cmd) {
      import_hf(hf_import_args[0], hf_import_args[1]);
      fmt::print("wrote {0}/model.yaml and {0}/model.safetensors; train with model={0}/model.yaml "
                 "train.init_from={0}/model.safetensors\n", hf_import_args[1]);
      return 0;
    }
    if (*tok) return cmd_tokenize(ta);
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
