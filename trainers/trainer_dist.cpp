// Trainer: several ranks (communicator setup, the data split over ranks, gradient reduction, sums over ranks).
// docs/distributed.md describes the design.
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
#include "kernels/reduce.h"
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

void Trainer::setup_distributed() {
  const TrainConfig& t = cfg_.train;
  if (launch_.launcher == "single") return;  // no launcher: one process, no communicator
  // A peer that dies closes its sockets; a write to one must fail with EPIPE (Gloo then reports the broken
  // pair and the trainer stops with a message) instead of killing this rank silently with SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  const auto timeout = dist::Millis(int64_t(t.dist_timeout_s * 1000.0));
  if (opts_.store) {
    kv_store_ = opts_.store;
  } else {
    own_kv_store_ = std::make_unique<dist::TcpStore>(launch_, timeout);
    kv_store_ = own_kv_store_.get();
    dist::rendezvous(*kv_store_, launch_, timeout);
  }
  comm_ = dist::connect_communicator(launch_, *kv_store_, device_, timeout);
  zero1_ = t.zero == 1;
}

Batch Trainer::next_batch(int64_t s, int64_t m) {
  const int64_t per_step = accum_ * int64_t(launch_.world_size);
  return data_.train->next(s * per_step + int64_t(launch_.rank) * accum_ + m);
}

void Trainer::skip_other_ranks(int64_t s, bool before) {
  if (launch_.world_size == 1) return;
  const int64_t per_step = accum_ * int64_t(launch_.world_size);
  const int64_t mine = s * per_step + int64_t(launch_.rank) * accum_;
  if (before)
    for (int64_t i = s * per_step; i < mine; ++i) data_.train->skip(i);
  else
    for (int64_t i = mine + accum_; i < (s + 1) * per_step; ++i) data_.train->skip(i);
}

std::vector<double> Trainer::sum_over_ranks(const std::vector<double>& v) {
  Tensor t = Tensor::from_vector(v, {int64_t(v.size())}, DType::f64, device_);
  comm_->all_reduce(t, dist::ReduceOp::sum);
  comm_->synchronize();
  return t.to_vector<double>();
}

Tensor Trainer::own_range(const Tensor& flat) const {
  return flat.slice(0, store_->shard_begin(), store_->shard_end());
}

void Trainer::reduce_gradients() {
  if (!comm_) return;
  if (zero1_) {
    // In place: this rank's block of the flat gradients receives the average of everyone's block.
    const Tensor flat = store_->grads().flat(DType::f32);
    comm_->reduce_scatter(flat, own_range(flat), dist::ReduceOp::avg);
  } else {
    reducer_->finish();
  }
}

}  // namespace natsl
