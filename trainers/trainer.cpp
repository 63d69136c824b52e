#include "trainers/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <csignal>
#include <filesystem>
#include <set>

#include <unistd.h>

#include <fmt/format.h>

#include "autograd/ops.h"
#include "core/allocator.h"
#include "core/error.h"
#include "core/json_read.h"
#include "core/stream.h"
#include "data/mixture.h"
#include "data/synthetic.h"
#include "kernels/determinism.h"
#include "kernels/gdn.h"
#include "kernels/reduce.h"
#include "layers/gated_deltanet.h"
#include "layers/model/model_size.h"
#include "layers/natsl_attention.h"
#include "trainers/io/checkpoint.h"
#include "trainers/dist/tcp_store.h"
#include "trainers/io/metrics_log.h"
#include "trainers/mfu.h"
#include "trainers/io/run_dir_lock.h"
#include "trainers/io/safetensors.h"
#include "trainers/stop_signal.h"
#include "data/sync_file.h"
#include "trainers/io/version.h"

namespace fs = std::filesystem;

namespace natsl {

struct Trainer::StepResult {
  double loss = 0.0, grad_norm = 0.0, lr = 0.0;
  bool skipped = false;
  std::map<std::string, double> stats;
};

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string human_count(double v) {
  if (v >= 1e9) return fmt::format("{:.2f}G", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.1f}k", v / 1e3);
  return fmt::format("{:.0f}", v);
}

std::string human_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int64_t t = int64_t(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

int64_t count_scored(const Tensor& targets) {
  int64_t n = 0;
  for (int32_t t : targets.to_vector<int32_t>()) n += t != int32_t(kIgnoreIndex);
  return n;
}

}  // namespace

namespace {
// A fresh run (resume=none) must not write into the directory of an earlier run: its metrics.jsonl would be
// rewritten and keep-last-k would prune the old run's checkpoints. Checked before anything is written.
void refuse_existing_run_dir(const std::string& out_dir) {
  const fs::path dir(out_dir);
  std::error_code ec;
  // A regular file only: a metrics.jsonl that is a device or a fifo holds no run.
  bool has_metrics = fs::is_regular_file(dir / "metrics.jsonl", ec) && fs::file_size(dir / "metrics.jsonl", ec) > 0;
  bool has_checkpoints = false;
  if (fs::is_directory(dir / "checkpoints", ec))
    for (const auto& e : fs::directory_iterator(dir / "checkpoints", ec))
      if (e.path().filename().string().rfind("step_", 0) == 0) has_checkpoints = true;
  if (has_metrics || has_checkpoints)
    throw InputError("train.out_dir '" + out_dir + "' already holds a run (" +
                     (has_checkpoints ? "checkpoints/" : "metrics.jsonl") +
                     "); continue it with resume=auto, or give a new train.out_dir (nothing was written)");
}

// Checkpoints exist but none is valid: starting again at step 0 would overwrite the run's metrics and let
// keep-last prune the damaged checkpoints, whose weights may be mostly intact. The user decides instead.
[[noreturn]] void refuse_only_damaged_checkpoints(const std::string& out_dir, const CheckpointScan& scan) {
  std::string names;
  for (size_t i = 0; i < scan.found.size() && i < 4; ++i)
    names += (i ? ", " : "") + fs::path(scan.found[i]).filename().string();
  if (scan.found.size() > 4) names += fmt::format(" and {} older", scan.found.size() - 4);
  throw InputError(fmt::format("resume=auto: {} holds {} checkpoint(s) ({}) but none is valid (the newest: {}); "
                               "nothing was changed: repair or move them away, resume=DIR from a good copy, or "
                               "give a new train.out_dir",
                               (fs::path(out_dir) / "checkpoints").string(), scan.found.size(), names,
                               scan.damaged.empty() ? std::string("?") : scan.damaged.front()));
}

}  // namespace

// ---- shared with `natsl generate` (trainer.h) ----

Device resolve_device(const std::string& spec) {
  if (spec == "auto") return cuda_available() ? Device::cuda(0) : kCPU;
  Device d = Device::parse(spec);
  if (d.is_cuda() && d.index >= cuda_device_count())
    throw InputError("train.device is '" + spec + "' but " +
                     (cuda_device_count() == 0 ? std::string("no CUDA GPU is available") +
#ifdef NATSL_WITH_CUDA
                                                     ""
#else
                                                     " (this build has no CUDA backend)"
#endif
                                               : std::to_string(cuda_device_count()) + " GPU(s) are visible") +
                     "; use train.device=cpu or auto");
  return d;
}

void check_model_fits_device(const ModelConfig& model, Device device, Precision precision) {
  if (!device.is_cuda()) return;
  bool gdn = false;
  for (const std::string& kind : model.mixer_kinds()) gdn = gdn || kind == "gdn" || kind == "natsl";
  if (!gdn) return;
  const GdnDims d = gdn_dims(model);
  const std::string problem =
      kernels::gdn_cuda_shape_problem(d.key_dim, d.value_dim, precision == Precision::bf16 ? DType::bf16 : DType::f32);
  if (!problem.empty())
    throw InputError(fmt::format("model.head_dim = {} and model.expand_v = {} give Gated DeltaNet heads of K = {}, V = {}: {}; "
                                 "set model.head_dim to 64, 128, 192 or 256 (and expand_v so that V is a multiple of "
                                 "64), or train on the CPU (train.device=cpu)",
                                 model.head_dim, model.expand_v, d.key_dim, d.value_dim, problem));
}

Trainer::Trainer(RunConfig cfg, TrainerOptions opts) : cfg_(std::move(cfg)), opts_(opts) {
  const TrainConfig& t = cfg_.train;
  launch_ = opts_.launch ? *opts_.launch : dist::launch_info_from_env();
  writes_checkpoints_ = opts_.write_run_dir;
  // Rank 0 prints and writes the run directory; the other ranks train silently (their errors still reach
  // stderr) and write nothing there but their own copy of tokenized data.
  if (launch_.rank != 0) {
    opts_.out = nullptr;
    if (t.rank_logs && opts_.write_run_dir) {
      // A debug log per rank (appended): what this rank saw, for the hang or error it alone knows about.
      const fs::path log_path = fs::path(t.out_dir) / "ranks" / fmt::format("rank_{}.log", launch_.rank);
      std::error_code ec;
      fs::create_directories(log_path.parent_path(), ec);
      rank_log_.reset(std::fopen(log_path.c_str(), "a"));
      if (!rank_log_)
        throw InputError("cannot open the rank log '" + log_path.string() + "' (" + std::strerror(errno) +
                         "); make train.out_dir writable by every rank, or set train.rank_logs=false");
      opts_.out = rank_log_.get();
    }
    opts_.write_run_dir = false;
  }
  device_ = resolve_device(t.device);
  if (launch_.launcher != "single" && device_.is_cuda()) {
    // One GPU per rank: LOCAL_RANK picks it.
    if (t.device.rfind("cuda:", 0) == 0 && device_.index != launch_.local_rank)
      throw InputError("train.device is '" + t.device + "' but each rank of a multi-rank run uses cuda:LOCAL_RANK (this is local rank " +
                       std::to_string(launch_.local_rank) + "); use train.device=cuda or auto");
    if (launch_.local_rank >= cuda_device_count())
      throw InputError(fmt::format("local rank {} needs cuda:{}, but {} GPU(s) are visible; start at most {} ranks per node",
                                   launch_.local_rank, launch_.local_rank, cuda_device_count(), cuda_device_count()));
    device_ = Device::cuda(launch_.local_rank);
  }
  // Batch math: the accumulation per rank follows from the global batch and the world size.
  const int64_t W = launch_.world_size;
  accum_ = t.grad_accum;
  if (t.global_batch_size > 0) {
    const int64_t per_micro = t.batch_size * W;
    if (t.global_batch_size % per_micro != 0)
      throw InputError(fmt::format("train.global_batch_size = {} is not a multiple of train.batch_size x world size = {} x {} = {}; "
                                   "choose a global batch that {} divides, or another batch_size",
                                   t.global_batch_size, t.batch_size, W, per_micro, per_micro));
    accum_ = t.global_batch_size / per_micro;
    if (t.grad_accum != 1 && t.grad_accum != accum_)
      throw InputError(fmt::format("train.grad_accum = {} contradicts train.global_batch_size = {} (which gives {} micro-batches "
                                   "per rank on {} rank(s)); leave grad_accum out when global_batch_size is set",
                                   t.grad_accum, t.global_batch_size, accum_, W));
  }
  setup_distributed();
  const Precision precision = t.precision == "bf16" ? Precision::bf16 : Precision::f32;
  if (precision == Precision::bf16 && device_.is_cpu())
    throw InputError("train.precision=bf16 needs a CUDA device (the CPU path is f32); use train.precision=f32");
  check_model_fits_device(cfg_.model, device_, precision);
  // The tokenizer's model file is read (and its vocabulary checked against the model's) before the model
  // is built: a missing file is reported at once, not after allocating a large model.
  std::shared_ptr<const Tokenizer> tokenizer = open_run_tokenizer(cfg_);
  if (opts_.write_run_dir) {
    // Before anything is written (the data setup may tokenize into OUT_DIR/data): one run per directory.
    run_dir_lock_ = std::make_unique<RunDirLock>(t.out_dir);
    if (cfg_.resume == "none") refuse_existing_run_dir(t.out_dir);
  }
  // Bit-reproducible kernels for the whole process (kernels/determinism.h): the CUDA attention backward then
  // adds dq in a fixed order; every other kernel is deterministic anyway.
  kernels::set_deterministic(t.deterministic);
  prof::set_nvtx(t.nvtx);

  model_ = std::make_shared<CausalLM>(cfg_.model);
  model_->set_recompute(RecomputePolicy::parse(t.recompute, t.recompute_keep));
  // ZeRO-1: this rank keeps its shard of the f32 master weights only (and of the AdamW moments below).
  store_ = std::make_unique<ParameterStore>(*model_, device_, precision, zero1_ ? launch_.world_size : 1,
                                            zero1_ ? launch_.rank : 0);
  Generator init_gen(uint64_t(t.seed));
  store_->init(init_gen);
  // The routers' Gumbel noise is keyed by train.seed as well, so a run repeats from its seed alone.
  for (auto& [name, layer] : natsl_layers(*model_)) layer->seed_noise(uint64_t(t.seed));

  // No-decay group: what the model marks (unless train.model_no_decay is off), the embedding if asked,
  // and any name containing one of train.no_decay.
  std::vector<bool> decay;
  for (const ParameterRef& p : store_->parameters()) {
    bool d = true;
    if (t.model_no_decay && p.meta->no_decay) d = false;
    if (!t.decay_embeddings && p.meta->is_embedding) d = false;
    for (const auto& pat : t.no_decay)
      if (p.name.find(pat) != std::string::npos) d = false;
    decay.push_back(d);
  }
  const AdamWOptions adam{t.lr, t.betas[0], t.betas[1], t.eps, t.weight_decay};
  if (zero1_) {
    const dist::ShardRange sh =
        dist::shard_of(store_->layout().total(DType::f32), launch_.world_size, launch_.rank);
    NATSL_CHECK(sh.begin == store_->shard_begin() && sh.end == store_->shard_end(), "ZeRO-1: shard mismatch");
    optimizer_ = std::make_unique<AdamW>(store_->layout(), store_->master_shard(),
                                         own_range(store_->grads().flat(DType::f32)), decay, adam, sh.begin);
  } else {
    optimizer_ = std::make_unique<AdamW>(store_->master(), store_->grads(), decay, adam);
  }
  // bf16 (or ZeRO-1's whole f32 copy): the optimizer step writes the forward's weights in the same pass.
  if (store_->separate_compute()) optimizer_->write_compute_copy(store_->compute());
  if (comm_ && !zero1_)
    reducer_ = std::make_unique<dist::GradReducer>(*comm_, store_->grads(), int64_t(t.bucket_mb * double(1 << 20)));
  // The checkpoint to resume from is found (and its tokenizer checked) before the data setup, which may
  // tokenize text into OUT_DIR/data: a refused resume leaves the run directory as it was.
  std::shared_ptr<CheckpointReader> resume_ck;
  if (cfg_.resume == "auto") {
    CheckpointScan scan = find_latest_checkpoint(t.out_dir);
    for (const auto& w : scan.warnings) log("warning: " + w);
    if (scan.reader) resume_ck = scan.reader;
    else if (!scan.found.empty()) refuse_only_damaged_checkpoints(t.out_dir, scan);
    else log("resume=auto: no checkpoint in " + (fs::path(t.out_dir) / "checkpoints").string() + "; starting at step 0");
  } else if (cfg_.resume != "none") {
    resume_ck = std::make_shared<CheckpointReader>(cfg_.resume);
  }
  if (resume_ck && tokenizer) check_checkpoint_tokenizer(*resume_ck, tokenizer->identity());
  // Rank 0 has checked the run directory before any rank writes there. Text tokenized at start goes to
  // OUT_DIR/data on rank 0 and to OUT_DIR/ranks/rank_R/data on the others (the same bytes; no rank reads a
  // file another is writing).
  if (comm_) comm_->barrier();
  data_ = make_run_data(cfg_,
                        launch_.rank == 0 ? t.out_dir
                                          : (fs::path(t.out_dir) / "ranks" / ("rank_" + std::to_string(launch_.rank))).string(),
                        tokenizer);
  schedule_ = LrSchedule{t.schedule, t.warmup_steps, t.steps, t.min_lr_ratio, t.decay_fraction, t.wsd_decay_shape};
  grad_sumsq_ = Tensor::zeros({1}, DType::f32, device_);
  tty_ = opts_.out && ::isatty(::fileno(opts_.out));

  flops_per_token_ = model_flops_per_token(cfg_.model, t.seq_len);
  if (device_.is_cuda()) {
    std::string name = device_name(device_);
    peak_flops_ = dense_bf16_peak_flops(name);
    if (!peak_flops_)
      log("warning: no dense bf16 peak is known for '" + name + "'; MFU is not reported (add it in trainers/mfu.cpp)");
  }

  const int64_t n_params = store_->num_params();
  int64_t n_decayed = 0;
  for (size_t i = 0; i < decay.size(); ++i)
    if (decay[i]) n_decayed += store_->layout().entries()[i].numel();
  const int64_t tokens_per_step = global_batch() * t.seq_len;
  log(fmt::format("model: {} parameters ({} with weight decay), {} FLOPs/token (training)", human_count(double(n_params)),
                  human_count(double(n_decayed)), human_count(flops_per_token_)));
  log(fmt::format("batch: {} x {} tokens x {} accumulation{} = {} tokens/step; {} steps = {} tokens", t.batch_size,
                  t.seq_len, accum_, W > 1 ? fmt::format(" x {} ranks", W) : std::string(), tokens_per_step, t.steps,
                  human_count(double(tokens_per_step * t.steps))));
  if (comm_) {
    // Master weights, gradients, compute weights (bf16, or a whole f32 copy beside a ZeRO-1 master shard) and
    // the AdamW moments held by this rank.
    const double n = double(store_->layout().total(DType::f32));
    const double master = 4.0 * double(store_->master_shard().numel());
    const double compute = precision == Precision::bf16 ? 2.0 * n : zero1_ ? 4.0 * n : 0.0;
    const double moments = zero1_ ? 2.0 * double(optimizer_->exp_avg_shard().nbytes()) : 8.0 * n;
    const double state_bytes = master + 4.0 * n + compute + moments;
    log(fmt::format("distributed: {} rank(s) ({} launch, {} backend), {}; parameters, gradients and optimizer state: "
                    "{:.1f} MiB per rank",
                    W, launch_.launcher, comm_->backend(),
                    zero1_ ? std::string("ZeRO-1 (f32 master weights and AdamW moments sharded)")
                           : fmt::format("gradients averaged in {} bucket(s) of <= {} MiB during the backward",
                                         reducer_->num_buckets(), t.bucket_mb),
                    state_bytes / double(1 << 20)));
  }
  log(data_.description);

  if (resume_ck) resume_from(*resume_ck);
  else if (!t.init_from.empty()) load_initial_weights(t.init_from);
  if (comm_) {
    // Every rank starts from rank 0's weights (the same seed gives the same ones; this makes sure). ZeRO-1: each
    // rank's master shard comes from the same seed or checkpoint; the forward's weights are rank 0's.
    if (zero1_) {
      comm_->broadcast(store_->compute().flat(DType::f32), 0);
    } else {
      comm_->broadcast(store_->master().flat(DType::f32), 0);
      store_->sync_compute_from_master();
    }
    comm_->synchronize();
  }
  if (opts_.write_run_dir) {
    std::string header = fmt::format("# resolved config of a natsl run (natsl {}, commit {}), from {}\n",
                                      natsl_version(), natsl_git_commit(),
                                      cfg_.config_path.empty() ? "code" : cfg_.config_path);
    replace_file_atomically((fs::path(t.out_dir) / "config.yaml").string(), header + config_to_yaml(cfg_));
    if (data_.tokenizer) {
      nlohmann::json id = data_.tokenizer->identity();
      if (!cfg_.tokenizer.model.empty()) id["model"] = cfg_.tokenizer.model;  // where it was read (not compared)
      replace_file_atomically((fs::path(t.out_dir) / "tokenizer.json").string(), id.dump(2) + "\n");
    }
    metrics_ = std::make_unique<MetricsLog>((fs::path(t.out_dir) / "metrics.jsonl").string(), step_);
    run_dir_lock_->keep_directory();
  }
  // Everything is checked: print the header, the resolved config, then what the setup noted.
  started_ = true;
  log(fmt::format("natsl {} (commit {}) on {}{}", natsl_version(), natsl_git_commit(), device_.str(),
                  device_.is_cuda() ? " (" + device_name(device_) + ")" : ""));
  log("config " + (cfg_.config_path.empty() ? std::string("(built in code)") : cfg_.config_path) + ":\n" +
      config_table(cfg_));
  for (const auto& line : pending_log_) log(line);
  pending_log_.clear();
}

void Trainer::finish_profile() {
  if (!profiler_) return;
  log(profiler_->table());
  const fs::path dir = fs::path(cfg_.train.out_dir) / "profile";
  try {
    if (opts_.write_run_dir) {
      fs::create_directories(dir);
      replace_file_atomically((dir / "summary.json").string(), profiler_->summary().dump(2) + "\n");
      replace_file_atomically((dir / "trace.json").string(), profiler_->chrome_trace(launch_.rank));
      log("profile: " + (dir / "summary.json").string() + ", " + (dir / "trace.json").string() +
          " (open in https://ui.perfetto.dev)");
    } else if (launch_.rank != 0 && cfg_.train.rank_logs) {
      fs::create_directories(dir);
      replace_file_atomically((dir / fmt::format("trace_rank_{}.json", launch_.rank)).string(),
                              profiler_->chrome_trace(launch_.rank));
    }
  } catch (const std::exception& e) {
    log(std::string("warning: the profile could not be written (") + e.what() + "); the table above is all there is");
  }
  profiler_.reset();
}

Trainer::~Trainer() {
  if (live_line_shown_ && opts_.out) std::fputs("\n", opts_.out);
}

void Trainer::live(const std::string& line) {
  if (!opts_.out) return;
  std::fputs(("\r\x1b[K" + line).c_str(), opts_.out);
  std::fflush(opts_.out);
  live_line_shown_ = true;
}

void Trainer::log(const std::string& line) {
  if (!opts_.out) return;
  if (!started_) {
    pending_log_.push_back(line);
    return;
  }
  if (live_line_shown_) std::fputs("\r\x1b[K", opts_.out);
  live_line_shown_ = false;
  std::fputs((line + "\n").c_str(), opts_.out);
  std::fflush(opts_.out);
}

Tensor Trainer::forward_backward(const Batch& batch, int64_t m) {
  Tensor total, loss;
  {
    prof::Scope scope("forward", "phase");
    loss = model_->loss(batch);
    // The routers' sparsity penalty (if any) joins the gradient; the logged loss stays the LM loss.
    const Tensor aux = model_->aux_loss();
    total = aux.defined() ? add(loss, aux) : loss;
    if (accum_ > 1) total = mul_scalar(total, 1.0 / double(accum_));
  }
  {
    prof::Scope scope("backward", "phase");
    // The last micro-batch's backward starts the gradient all-reduce bucket by bucket.
    std::unique_ptr<GradReadyHookGuard> hook;
    if (reducer_ && m == accum_ - 1) hook = reducer_->arm();
    total.backward();
  }
  return loss.detach();
}

Trainer::StepResult Trainer::train_step() {
  const TrainConfig& t = cfg_.train;
  StepResult r;
  const int64_t s = step_;  // 0-based index of this step
  r.lr = t.lr * schedule_.multiplier(s);
  optimizer_->set_lr(r.lr);
  model_->train();
  model_->set_progress(s, t.steps);

  // train.cuda_graph: the forward, backward and squared gradient norm as one replayed graph (trainer_graph.cpp).
  Tensor loss_sum;
  std::vector<Batch> taken;  // micro-batches a graph step took but could not run (each is taken once)
  if (graph_step_wanted(s)) loss_sum = graph_step(s, taken);
  const bool graphed = loss_sum.defined();
  if (!graphed) {
    store_->zero_grad();
    skip_other_ranks(s, /*before=*/true);
    for (int64_t m = 0; m < accum_; ++m) {
      Batch batch;
      if (size_t(m) < taken.size()) {
        batch = taken[size_t(m)];
      } else {
        prof::Scope scope("data", "phase");
        batch = next_batch(s, m);
      }
      const Tensor loss = forward_backward(batch, m);
      NoGradGuard no_grad;
      loss_sum = loss_sum.defined() ? add(loss_sum, loss) : loss;
    }
    skip_other_ranks(s, /*before=*/false);
  }
  std::optional<prof::Scope> phase;
  if (comm_) phase.emplace("gradient reduction", "phase");
  reduce_gradients();
  phase.reset();
  phase.emplace("optimizer", "phase");
  if (zero1_) {
    // Each rank holds its shard of the averaged gradients: the squared norm is the sum over the shards.
    kernels::sum_squares(own_range(store_->grads().flat(DType::f32)), grad_sumsq_);
    comm_->all_reduce(grad_sumsq_, dist::ReduceOp::sum);
    comm_->synchronize();
  } else if (!graphed) {  // (a graph has summed the squares itself)
    // Identical averaged gradients on every rank: the same norm, clip and skip decision everywhere.
    kernels::sum_squares(store_->grads().flat(DType::f32), grad_sumsq_);
  }
  r.grad_norm = std::sqrt(grad_sumsq_.item());  // the one host read of the step (with the loss below)
  r.loss = loss_sum.item() / double(accum_);

  const bool nonfinite = !std::isfinite(r.grad_norm);
  nonfinite_streak_ = nonfinite ? nonfinite_streak_ + 1 : 0;
  if (nonfinite && t.skip_nonfinite) {
    r.skipped = true;
    ++skipped_steps_;
  } else {
    // torch.nn.utils.clip_grad_norm_'s coefficient: min(1, max_norm / (norm + 1e-6)).
    double coef = t.clip_grad_norm > 0 ? std::min(1.0, t.clip_grad_norm / (r.grad_norm + 1e-6)) : 1.0;
    // Also refreshes the compute weights (bf16 / ZeRO-1: this rank's range of them): write_compute_copy above.
    optimizer_->step(Tensor::full({1}, coef, DType::f32, device_));
    if (zero1_) {
      // Every rank's updated range of the compute weights (bf16 on a GPU) to every rank, in place: this rank's
      // block is its own input.
      const Tensor flat = store_->compute().flat(DType::f32);
      comm_->all_gather(own_range(flat), flat);
    }
  }
  model_->collect_stats(r.stats);
  ++step_;
  return r;
}

nlohmann::json Trainer::step_metrics(const StepResult& r, double step_seconds) {
  const TrainConfig& t = cfg_.train;
  const double tokens = double(global_batch() * t.seq_len);
  nlohmann::json row = {{"step", step_},
                        {"loss", r.loss},
                        {"lr", r.lr},
                        {"grad_norm", r.grad_norm},
                        {"skipped", r.skipped},
                        {"skipped_total", skipped_steps_},
                        {"step_time_s", step_seconds},
                        {"tokens_per_s", tokens / step_seconds},
                        {"peak_mem_bytes", memory_stats(device_).peak}};
  row["mfu"] = peak_flops_ ? nlohmann::json(flops_per_token_ * tokens / step_seconds / *peak_flops_) : nlohmann::json();
  for (const auto& [k, v] : r.stats) row["stats"][k] = v;
  if (reducer_)
    row["dist"] = {{"world_size", launch_.world_size},
                   {"buckets", reducer_->num_buckets()},
                   {"buckets_in_backward", reducer_->launched_during_backward()}};
  else if (comm_)
    row["dist"] = {{"world_size", launch_.world_size}, {"zero", 1}};
  // A mixture: the training tokens each source has given so far (all ranks), restored on resume.
  if (const auto* mix = dynamic_cast<const MixtureLoader*>(data_.train.get())) {
    nlohmann::json tokens_per_source = nlohmann::json::array();
    for (int64_t rows : mix->rows_served()) tokens_per_source.push_back(rows * t.seq_len);
    row["data"] = {{"source_tokens", tokens_per_source}};
  }
  return row;
}

TrainSummary Trainer::train() {
  const TrainConfig& t = cfg_.train;
  TrainSummary sum;
  sum.step = step_;
  sum.skipped_steps = skipped_steps_;
  if (step_ >= t.steps) {
    log(fmt::format("the run is already complete at step {} (train.steps = {})", step_, t.steps));
    return sum;
  }
  StopSignalGuard signals;
  const double tokens_per_step = double(global_batch() * t.seq_len);
  while (step_ < t.steps) {
    auto t0 = Clock::now();
    const bool profiled = !t.profile_steps.empty() && step_ + 1 >= t.profile_steps[0] && step_ + 1 < t.profile_steps[1];
    if (profiled) {
      if (!profiler_) {
        profiler_ = std::make_unique<prof::StepProfiler>(device_);
        synchronize(device_);  // the first profiled step starts with an idle device
      }
      prof::set_active(profiler_.get());
      profiler_->begin_step(step_ + 1);
    }
    StepResult r = train_step();
    bool signalled = signals.requested();
    if (comm_) {
      // One small all-reduce: the mean loss over the ranks, and a stop when any rank got SIGINT/SIGTERM (all
      // ranks then checkpoint and stop after this step).
      const std::vector<double> h = sum_over_ranks({r.loss, signalled ? 1.0 : 0.0});
      r.loss = h[0] / double(launch_.world_size);
      signalled = h[1] > 0;
    }
    synchronize(device_);
    if (profiled) {
      profiler_->end_step();
      prof::set_active(nullptr);
    }
    double dt = seconds_since(t0);
    if (profiled && step_ + 1 == t.profile_steps[1]) finish_profile();  // after the step's time is taken
    // The first step of a process pays for allocation and warm-up: the speed average starts after it.
    if (++steps_this_process_ == 2) step_time_ema_ = dt;
    else if (steps_this_process_ > 2) step_time_ema_ = 0.9 * step_time_ema_ + 0.1 * dt;

    nlohmann::json row = step_metrics(r, dt);
    const bool last = step_ == t.steps;
    const bool stop_here = t.stop_at_step > 0 && step_ == t.stop_at_step;
    if ((t.eval_every > 0 && step_ % t.eval_every == 0) || last) {
      nlohmann::json ev = evaluate();
      if (!ev.empty()) {
        row["eval"] = ev;
        sum.last_eval = ev;
      }
    }
    if (metrics_) {
      try {
        metrics_->write(row);
      } catch (const Error& e) {
        stop_after_failed_write(fmt::format("{} (the row of step {})", e.what(), step_), /*save_checkpoint=*/true);
      }
    }

    const bool keep_line = step_ % t.log_every == 0 || step_ == 1 || last || stop_here || signalled ||
                           row.contains("eval") || r.skipped;
    if (keep_line || tty_) {
      double avg = steps_this_process_ >= 2 ? step_time_ema_ : dt;
      std::string line = fmt::format("step {:>{}}/{} | loss {:.4f} | lr {:.2e} | gnorm {:.3f} | {} tok/s", step_,
                                     std::to_string(t.steps).size(), t.steps, r.loss, r.lr, r.grad_norm,
                                     human_count(tokens_per_step / avg));
      if (peak_flops_) line += fmt::format(" | mfu {:.1f}%", 100.0 * flops_per_token_ * tokens_per_step / avg / *peak_flops_);
      if (device_.is_cuda()) line += fmt::format(" | mem {:.2f} GiB", double(memory_stats(device_).peak) / (1 << 30));
      line += " | eta " + human_duration(avg * double(t.steps - step_));
      // Routing statistics, averaged over the layers that report them ("layers.N.attn_frac" -> attn_frac).
      std::map<std::string, std::pair<double, int>> mean;
      for (const auto& [k, v] : r.stats) {
        auto& m = mean[k.substr(k.rfind('.') + 1)];
        m.first += v;
        m.second += 1;
      }
      for (const auto& [k, m] : mean) line += fmt::format(" | {} {:.3f}", k, m.first / m.second);
      if (r.skipped) line += fmt::format(" | SKIPPED (non-finite grad norm; {} so far)", skipped_steps_);
      if (row.contains("eval"))
        for (auto it = row["eval"].begin(); it != row["eval"].end(); ++it)
          if (it->is_number_float()) line += fmt::format(" | eval {} {:.4f}", it.key(), it->get<double>());
      if (keep_line) log(line);
      else live(line);
    }
    // Once the weights are NaN every later step is non-finite too: stop instead of running on (and ending
    // "done") with nothing learned. No checkpoint: the newest one on disk holds the last good state.
    if (nonfinite_streak_ >= t.max_consecutive_nonfinite)
      throw Error(fmt::format("step {}: the gradient norm was not finite for {} steps in a row "
                              "(train.max_consecutive_nonfinite = {}), so the run has diverged; stopped without "
                              "writing a checkpoint. Resume from the newest checkpoint in {} with a lower train.lr",
                              step_, nonfinite_streak_, t.max_consecutive_nonfinite,
                              (fs::path(t.out_dir) / "checkpoints").string()));

    if ((t.ckpt_every > 0 && step_ % t.ckpt_every == 0) || last || stop_here || signalled) {
      // Every metrics row up to this step is made durable before the checkpoint that a resume keeps them for.
      if (metrics_) {
        try {
          metrics_->sync();
        } catch (const Error& e) {
          stop_after_failed_write(e.what(), /*save_checkpoint=*/true);
        }
      }
      std::string dir;
      try {
        dir = write_checkpoint();
      } catch (const std::exception& e) {
        stop_after_failed_write(fmt::format("cannot write the checkpoint of step {}: {}", step_, e.what()),
                                /*save_checkpoint=*/false);
      }
      if (!dir.empty()) log("checkpoint: " + dir);
    }
    sum.step = step_;
    sum.last_loss = r.loss;
    if (signalled) {
      log(fmt::format("stopping after step {}: {}; resume with resume=auto", step_,
                      signals.signal() == SIGINT    ? "received SIGINT"
                      : signals.signal() == SIGTERM ? "received SIGTERM"
                                                    : "another rank received a stop signal"));
      sum.interrupted = true;
      break;
    }
    if (stop_here) {
      log(fmt::format("stopping after step {} as train.stop_at_step asks; resume with resume=auto", step_));
      sum.stopped_at_step = true;
      break;
    }
  }
  sum.skipped_steps = skipped_steps_;
  sum.checkpoint = last_checkpoint_;
  return sum;
}

nlohmann::json Trainer::evaluate() {
  const TrainConfig& t = cfg_.train;
  NoGradGuard no_grad;
  model_->eval();
  nlohmann::json res;
  const int64_t V = cfg_.model.vocab_size;
  if (data_.eval_synthetic && t.eval_batches > 0) {
    AnswerScore score;
    double loss_sum = 0.0;
    // Several ranks: batch i is evaluated by rank i % world_size, the sums reduced: the same numbers as one rank.
    for (int64_t i = launch_.rank; i < t.eval_batches; i += launch_.world_size) {
      Batch b = data_.eval_synthetic->next(i);
      Tensor logits = model_->forward(b.inputs);
      const int64_t N = b.inputs.numel();
      loss_sum += cross_entropy(reshape(logits, {N, V}), b.targets.reshape({N}).to(device_), kIgnoreIndex).item();
      score += score_answers(argmax_last(logits), b.targets);
    }
    if (comm_) {
      const std::vector<double> h = sum_over_ranks({loss_sum, double(score.correct), double(score.total),
                                                    double(score.rows_exact), double(score.rows)});
      loss_sum = h[0];
      score.correct = int64_t(h[1]);
      score.total = int64_t(h[2]);
      score.rows_exact = int64_t(h[3]);
      score.rows = int64_t(h[4]);
    }
    res = {{"loss", loss_sum / double(t.eval_batches)},
           {"accuracy", score.accuracy()},
           {"exact_match", score.exact_match()},
           {"answers", score.total}};
  } else if (data_.eval_text) {
    ValidationWindows& val = *data_.eval_text;
    const int64_t n_batches = t.eval_batches > 0 ? std::min(t.eval_batches, val.num_batches()) : val.num_batches();
    double nll = 0.0;
    int64_t count = 0;
    for (int64_t i = launch_.rank; i < n_batches; i += launch_.world_size) {
      Batch b = val.batch(i);
      int64_t n = count_scored(b.targets);
      if (n == 0) continue;
      nll += model_->loss(b).item() * double(n);
      count += n;
    }
    if (comm_) {
      const std::vector<double> h = sum_over_ranks({nll, double(count)});
      nll = h[0];
      count = int64_t(h[1]);
    }
    if (count > 0) {
      double mean = nll / double(count);
      res = {{"loss", mean}, {"ppl", std::exp(mean)}};
      // Bits per byte: the byte tokenizer's tokens are bytes (BOS/EOS excepted, a negligible share); another
      // tokenizer's are scaled by the bytes per token of the validation text (when it was tokenized here).
      if (data_.val_bytes_per_token > 0) res["bpb"] = mean / std::log(2.0) / data_.val_bytes_per_token;
      res["tokens"] = count;
    }
  }
  model_->train();
  return res;
}

}  // namespace natsl
