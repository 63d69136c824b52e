#pragma once
// The run configuration: one typed schema with defaults, filled from a YAML file and then from dotted
// `section.key=value` overrides. Sections:
//   model:  ModelConfig (layers/model/model_config.h), inline or a path to a model YAML (relative to the file)
//   data:   which batches to train on (synthetic MQAR / NIAH, or text shards / text files)
//   tokenizer: which tokenizer text data is read with: {kind: byte} (default) or {kind: sentencepiece,
//           model: PATH} (the model file is opened at train start, not at load)
//   train:  optimisation, schedule, precision, device, run directory, logging, checkpoints
//   resume: none | auto | PATH of a checkpoint directory
// Every key, its type, default and allowed range is declared once in trainers/config_schema.cpp; an unknown
// key, a wrong type or an out-of-range value is an InputError naming the file, line and key.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/tokenizer.h"
#include "layers/model/model_config.h"

namespace natsl {

// MQAR as Zoology generates it (docs/evals.md §2). The sequence length is train.seq_len.
struct MqarConfig {
  int64_t vocab_size = 0;       // tokens used by the task; 0 = model.vocab_size
  int64_t num_kv_pairs = 8;     // k
  double power_a = 0.01;        // query-gap distribution p(g) ~ (g+1)^(a-1)
  int64_t num_passes = 1;       // times the key-value block is repeated
  bool random_non_queries = true;
};

// Single-needle haystack retrieval (docs/evals.md §3).
struct NiahConfig {
  std::string haystack = "noise";  // noise | essay
  std::string value = "number";    // number | uuid
  std::string essay_path;          // held-out text for the essay haystack
  double depth_percent = -1.0;     // needle depth in [0, 100]; < 0 draws it from RULER's 40-point grid
};

// One source of a training mixture: `path` is anything a data.text.train entry may be; `weight` > 0.
struct MixEntry {
  std::string path;
  double weight = 0.0;
  bool operator==(const MixEntry&) const = default;
};

// Plain text: byte-tokenized text files or token shards (data/ shard format), train and validation.
// Each entry of train/val is a shard file, a directory or glob of shards, a prefix written by `natsl
// tokenize` (PREFIX.train.*.bin / PREFIX.val.*.bin), or a plain text file (byte-tokenized into the run
// directory at start, its last val_fraction held out for validation when `val` is empty).
struct TextDataConfig {
  std::vector<std::string> train;
  std::vector<std::string> val;    // empty: the val shards of the train prefixes / the held-out text tail
  double val_fraction = 0.1;
  // Instead of `train`: weighted sources, each row drawn from source k with probability weight_k / sum
  // (data/mixture.h); their held-out data (prefix val shards, text tails) feed validation when `val` is empty.
  std::vector<MixEntry> mix;
};

struct DataConfig {
  std::string source = "mqar";  // mqar | niah | text
  MqarConfig mqar;
  NiahConfig niah;
  TextDataConfig text;
};

struct TrainConfig {
  int64_t steps = 1000;           // optimizer steps; the LR schedule spans them
  int64_t batch_size = 8;         // sequences per micro-batch
  int64_t seq_len = 256;
  int64_t grad_accum = 1;         // micro-batches per optimizer step (per rank)
  // Sequences per optimizer step over all ranks; 0 = batch_size x grad_accum x world size. When set, the
  // accumulation is derived from the world size: grad_accum = global_batch_size / (batch_size x world size),
  // so one config gives the same global batch on any number of ranks.
  int64_t global_batch_size = 0;
  int64_t zero = 0;               // 1 = ZeRO-1: optimizer state sharded over the ranks
  double bucket_mb = 25.0;        // data parallel: gradient all-reduce bucket size, MiB
  double dist_timeout_s = 120.0;  // several ranks: rendezvous and every collective fail after this long
  bool rank_logs = true;
  // The step profiler (core/profiler.h): optimizer steps [first, end) are timed per phase, module and
  // backward op; the table goes to the log and OUT_DIR/profile/ (summary.json, trace.json for Perfetto).
  std::vector<int64_t> profile_steps;
  bool nvtx = false;              // NVTX ranges around phases, modules and backward ops (Nsight Systems)
  // Forward, backward and gradient norm replayed as one CUDA graph after two eager steps (docs/training.md
  // "CUDA graphs": when a model or run cannot be captured the run says why and stays eager).
  bool cuda_graph = false;          // several ranks: ranks other than 0 write their log to OUT_DIR/ranks/rank_R.log
  double lr = 3e-4;
  double min_lr_ratio = 0.1;      // final lr = lr * min_lr_ratio
  std::string schedule = "cosine";  // cosine | linear | wsd | constant
  int64_t warmup_steps = 100;
  double decay_fraction = 0.2;    // wsd: fraction of the steps spent decaying at the end
  std::string wsd_decay_shape = "linear";  // wsd decay shape: linear | sqrt | cosine
  std::vector<double> betas = {0.9, 0.95};
  double eps = 1e-8;
  double weight_decay = 0.1;
  // No weight decay for the parameters the model marks (norm gains, biases, A_log, dt_bias); false decays
  // every parameter, as the NAtS-L reference trainer does (docs/natsl-layer.md §7.2).
  bool model_no_decay = true;
  bool decay_embeddings = true;   // false adds the token embedding to the no-decay group
  std::vector<std::string> no_decay;  // extra: parameters whose dotted name contains one of these
  double clip_grad_norm = 1.0;    // 0 = no clipping
  bool skip_nonfinite = true;     // skip (and count) steps whose grad norm is NaN/Inf
  int64_t max_consecutive_nonfinite = 5;  // that many non-finite grad norms in a row stop the run (error)
  std::string precision = "f32";  // f32 | bf16 (bf16 on CUDA only)
  std::string device = "auto";    // cpu | cuda | cuda:N | auto
  int64_t seed = 0;
  std::string out_dir = "runs/default";
  // Model weights to start from (a .safetensors file with the model's parameter names, e.g. from `natsl
  // import-hf`); "" = the initialisation. A resumed run takes its weights from the checkpoint instead.
  std::string init_from;
  int64_t log_every = 10;
  int64_t eval_every = 0;         // 0 = only at the end
  int64_t eval_batches = 4;
  int64_t ckpt_every = 0;         // 0 = only at the end
  int64_t keep_last = 2;
  int64_t stop_at_step = 0;       // >0: checkpoint and exit after this step (schedule unchanged)
  // Require deterministic kernels (bit-identical reruns and resumes on a GPU). Every CPU kernel and every
  // CUDA kernel but the attention backward (atomic dq) is deterministic; with this flag a CUDA run whose
  // model has attn/natsl layers is refused at start (trainers/trainer.cpp).
  bool deterministic = false;
  // Activation recomputation: the parts of every block that keep only their input in the forward and run
  // again in the backward (layers/recompute.h): any of mlp, attn, gdn, natsl, mixer (any mixer), block.
  // [] = off. Same numbers either way; less activation memory for one more forward of those parts.
  std::vector<std::string> recompute;
  // What the recomputed parts keep from their first run besides their inputs: [] or [matmul] (the outputs of
  // their matrix products, so the backward reruns only the ops between them; autograd/checkpoint.h).
  std::vector<std::string> recompute_keep;
};

// The train: section's own rules (warm-up and stop within the steps, the profiled range, the device name);
// ConfigKeyError (core/config_key_error.h) names the key. trainers/config_train.cpp.
void validate_train_config(const TrainConfig& train);

struct RunConfig {
  ModelConfig model;
  DataConfig data;
  TokenizerSpec tokenizer;  // used by data.source text
  TrainConfig train;
  std::string resume = "none";  // none | auto | PATH

  // Where each key got its value ("FILE:LINE" or "command line"), for errors found after loading.
  std::map<std::string, std::string> origin;
  std::string config_path;  // the YAML file given (empty when built in code)
};

// Loads `path`, then applies `overrides` ("section.key=value", "resume=auto", "model=FILE"), then checks
// the cross-field rules. Throws InputError naming the file, line and key on any problem.
RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// One override on an existing config (same errors, attributed to the command line).
void apply_override(RunConfig& cfg, const std::string& assignment);
// Every owner's checks, composed: validate_train_config, validate_model_config (layers/model/model_config.h),
// validate_data_config (trainers/data_factory.h); the error of the first that fails is an InputError led by
// where its key was set ("FILE:LINE", "command line", or "FILE (default of KEY)").
void validate_config(RunConfig& cfg);

// The resolved config as YAML (every key, defaults included; loadable by load_config) and as JSON.
std::string config_to_yaml(const RunConfig& cfg);
nlohmann::json config_to_json(const RunConfig& cfg);
// Rebuilds a config from config_to_json's output (used for checkpoints). `what` names the source in errors.
RunConfig config_from_json(const nlohmann::json& j, const std::string& what);
// A human-readable table "key  value" of every key, for the start of a run.
std::string config_table(const RunConfig& cfg);

}  // namespace natsl
