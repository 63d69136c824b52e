#pragma once
// The single-device training loop. One optimizer step (1-based step s, schedule index s - 1):
//   lr = train.lr * schedule(s - 1)
//   zero the flat grad buffer
//   for each of grad_accum micro-batches m: batch = data.next((s - 1) * grad_accum + m),
//       backward of loss / grad_accum                (so the grads are those of the mean loss)
//   grad_norm = sqrt(sum_squares(flat grads))        (on the device, one value read back)
//   non-finite grad_norm: skip the update, count it  (train.skip_nonfinite); after
//       train.max_consecutive_nonfinite such steps in a row the run stops with an error
//   clip = min(1, clip_grad_norm / (grad_norm + 1e-6)), a device scalar AdamW multiplies the grads by
//   AdamW step on the f32 master weights, then refresh the compute (bf16) copy
// then metrics, eval every train.eval_every steps, a checkpoint every train.ckpt_every steps, and a stop
// check (train.stop_at_step, SIGINT/SIGTERM). Data batches are a pure function of (seed, index), so the
// checkpoint (weights, moments, AdamW step count, the step, counters, the Gumbel router noise offsets) is all
// resume needs to continue the run bit for bit on the same hardware.
#include <array>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "trainers/optim/adamw.h"
#include "core/cuda_graph.h"
#include "core/profiler.h"
#include "layers/model/causal_lm.h"
#include "layers/model/parameter_store.h"
#include "trainers/config.h"
#include "trainers/data_factory.h"
#include "trainers/dist/communicator.h"
#include "trainers/dist/data_parallel.h"
#include "trainers/dist/launch.h"
#include "trainers/optim/schedule.h"

namespace natsl {

class CheckpointReader;
class MetricsLog;
class RunDirLock;
class StopSignalGuard;

struct TrainerOptions {
  FILE* out = stdout;          // progress and summary lines (nullptr = silent); rank 0's only
  bool write_run_dir = true;   // false (natsl eval): no config.yaml, metrics or checkpoints
  // Several ranks: how this process was launched (unset: read from the environment, dist/launch.h) and,
  // for tests that run ranks as threads of one process, the store to meet through (null: a TCP store served
  // by rank 0 at MASTER_ADDR:MASTER_PORT).
  std::optional<dist::LaunchInfo> launch{};
  dist::Store* store = nullptr;
  // Tests: every train.cuda_graph capture fails at its end (after the captured step's forward and backward),
  // to check the eager fallback.
  bool fail_cuda_graph_capture = false;
};

struct TrainSummary {
  int64_t step = 0;              // optimizer steps completed
  double last_loss = 0.0;
  int64_t skipped_steps = 0;
  nlohmann::json last_eval;      // the last evaluation's metrics (empty if none ran)
  bool interrupted = false;      // stopped by SIGINT/SIGTERM
  bool stopped_at_step = false;  // stopped by train.stop_at_step
  std::string checkpoint;        // the last checkpoint written ("" if none)
};

// Shared with `natsl generate`:
// train.device -> the device ("auto": the first GPU if any); InputError when the GPU named is missing.
Device resolve_device(const std::string& spec);
// The model's kernels exist on `device` in `precision` (the CUDA GDN kernels take K in {64, 128, 192, 256}):
// else an InputError naming model.head_dim / model.expand_v, before anything is read or written.
void check_model_fits_device(const ModelConfig& model, Device device, Precision precision);
// A run continues (or generates) with the tokenizer it was trained with: InputError when the checkpoint's
// recorded tokenizer (kind, vocabulary, model-file hash) differs from `mine` (Tokenizer::identity()).
void check_checkpoint_tokenizer(const CheckpointReader& ck, const nlohmann::json& mine);
// InputError naming the first model.* key in which cfg differs from the checkpoint's config, ending with
// `advice` (what to do).
void check_checkpoint_model(const CheckpointReader& ck, const RunConfig& cfg, const std::string& advice);

class Trainer {
 public:
  // Resolves the device, builds the model, data and optimizer, and resumes per cfg.resume.
  explicit Trainer(RunConfig cfg, TrainerOptions opts = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  TrainSummary train();
  // Metrics on the held-out data: synthetic tasks {"loss", "accuracy", "exact_match"}; text {"loss",
  // "ppl", "bpb"}. Empty when there is no held-out data.
  nlohmann::json evaluate();

  int64_t step() const { return step_; }
  int rank() const { return launch_.rank; }
  int world_size() const { return launch_.world_size; }
  int64_t accum() const { return accum_; }  // micro-batches per step on each rank
  // Sequences per optimizer step over all ranks: batch_size x accum x world_size.
  int64_t global_batch() const { return cfg_.train.batch_size * accum_ * int64_t(launch_.world_size); }
  const RunConfig& config() const { return cfg_; }
  const ParameterStore& parameters() const { return *store_; }
  const CausalLM& model() const { return *model_; }
  CausalLM& model_for_eval() { return *model_; }  // for evaluations that switch it to eval mode and back
  Device device() const { return device_; }

 private:
  struct StepResult;
  StepResult train_step();
  void resume_from(CheckpointReader& ck);
  void load_initial_weights(const std::string& path);  // train.init_from
  std::string write_checkpoint();
  // ZeRO-1: every rank writes its optimizer shard, rank 0 the model and state.json (trainer_checkpoint.cpp).
  std::string write_sharded_checkpoint();
  nlohmann::json checkpoint_trainer_state();
  // Several ranks: each rank's `mine` (the same length on all) side by side, rank order, on every rank.
  std::vector<int64_t> exchange_over_ranks(const std::vector<int64_t>& mine);
  // A write of metrics or a checkpoint failed (disk full, I/O error): save what still can be (a checkpoint
  // when the metrics failed), then throw an Error saying what failed, what was kept and how to continue.
  [[noreturn]] void stop_after_failed_write(const std::string& failure, bool save_checkpoint);
  // Prints a line; during construction lines wait until the setup succeeded (errors stay one line).
  void log(const std::string& line);
  // On a terminal: the progress line of every step, rewritten in place until the next log line.
  void live(const std::string& line);
  nlohmann::json step_metrics(const StepResult& r, double step_seconds);

  // Data parallel: the micro-batch indices of step s are s * accum * world .. (s + 1) * accum * world - 1,
  // rank r serving the r-th run of accum of them; the others are skip()ped so every rank's data state agrees.
  Batch next_batch(int64_t s, int64_t m);
  void skip_other_ranks(int64_t s, bool before);
  // Reduces the gradients over the ranks (plain data parallel: the reducer's buckets; ZeRO-1: reduce-scatter)
  void reduce_gradients();
  // Several ranks: host numbers summed over the ranks (one small all-reduce, bounded by the timeout).
  std::vector<double> sum_over_ranks(const std::vector<double>& v);
  // ZeRO-1: this rank's range of a flat buffer (the elements its optimizer updates).
  Tensor own_range(const Tensor& flat) const;
  void setup_distributed();
  // One micro-batch's forward and backward (micro-batch m of accum_): the language-model loss, detached.
  Tensor forward_backward(const Batch& batch, int64_t m);
  // train.cuda_graph (trainer_graph.cpp): whether step s runs as the captured graph (capturing it first when
  // it may); and that step's forward + backward + gradient norm by the graph: the summed loss, or undefined
  // when the graph could not run (the step then runs eagerly on `batches`, the step's micro-batches that
  // graph_step has taken from the data, and so do the later steps).
  bool graph_step_wanted(int64_t s);
  Tensor graph_step(int64_t s, std::vector<Batch>& batches);

  RunConfig cfg_;
  TrainerOptions opts_;
  dist::LaunchInfo launch_;
  std::unique_ptr<FILE, int (*)(FILE*)> rank_log_{nullptr, &std::fclose};  // ranks other than 0
  std::unique_ptr<dist::Store> own_kv_store_;
  dist::Store* kv_store_ = nullptr;
  std::unique_ptr<dist::Communicator> comm_;  // null for a world of one
  std::unique_ptr<dist::GradReducer> reducer_;
  std::unique_ptr<prof::StepProfiler> profiler_;  // during train.profile_steps
  void finish_profile();
  int64_t accum_ = 1;
  bool zero1_ = false;
  std::unique_ptr<RunDirLock> run_dir_lock_;  // first member: released after every file of the run is closed
  Device device_;
  std::shared_ptr<CausalLM> model_;
  std::unique_ptr<ParameterStore> store_;
  std::unique_ptr<AdamW> optimizer_;
  RunData data_;
  LrSchedule schedule_;
  std::unique_ptr<MetricsLog> metrics_;
  Tensor grad_sumsq_;  // [1] f32 on the device
  // train.cuda_graph: the captured forward + backward, the device batches it reads (refilled before each
  // replay), its summed loss (memory each replay rewrites), the restore of the modules' captured forward state
  // (the routing statistics the replays write), and whether this run has given up on a graph.
  std::unique_ptr<CudaGraph> graph_;
  std::vector<Batch> graph_batches_;
  Tensor graph_loss_;
  std::function<void()> graph_restore_;
  bool graph_off_ = false;
  int64_t graph_failures_ = 0;
  int64_t first_step_this_process_ = -1;

  int64_t step_ = 0;  // optimizer steps completed
  int64_t skipped_steps_ = 0;
  int64_t nonfinite_streak_ = 0;  // consecutive steps (up to now) whose grad norm was not finite
  double flops_per_token_ = 0.0;
  std::optional<double> peak_flops_;
  double step_time_ema_ = 0.0;  // seconds, excluding the first step of this process
  int64_t steps_this_process_ = 0;
  std::string last_checkpoint_;
  bool writes_checkpoints_ = true;  // the run writes checkpoints (all ranks take part in a ZeRO-1 one)
  bool started_ = false;
  bool tty_ = false, live_line_shown_ = false;
  std::vector<std::string> pending_log_;
};

}  // namespace natsl
