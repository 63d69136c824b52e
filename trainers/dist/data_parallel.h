#pragma once
// Data parallel over a flat gradient buffer (core/flat_buffer.h).
//
// GradReducer: the gradients are averaged over the ranks in buckets of about `bucket_bytes`. Buckets are
// contiguous ranges of the flat buffer (no packing) taken in reverse layout order, the order in which a
// backward finishes them. Armed for the last micro-batch's backward, the reducer is told by the autograd
// engine when each parameter's gradient is final (GradReadyHook) and launches a bucket's all-reduce on the
// communicator's stream or thread as soon as the bucket is complete and every bucket before it has been
// launched, so communication overlaps the rest of the backward. Every rank launches the same buckets in the
// same order. finish() launches what is left (parameters that got no gradient) and orders the caller after
// all of them.
//
// ZeRO-1 (ShardRange): the flat buffer, padded to world_size equal shards, is reduce-scattered; rank r owns
// elements [r*S, (r+1)*S) of the master weights and keeps AdamW moments for them only; after its update the
// weights are all-gathered.
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "autograd/engine.h"
#include "core/flat_buffer.h"
#include "trainers/dist/communicator.h"

namespace natsl::dist {

class GradReducer {
 public:
  GradReducer(Communicator& comm, const FlatBuffer& grads, int64_t bucket_bytes);

  // Arms the reducer for one backward: keep the returned guard alive across that backward.
  std::unique_ptr<GradReadyHookGuard> arm();
  // Launches the buckets not launched yet, in order, and orders the caller after every bucket's all-reduce
  // (CPU: the data is in place on return).
  void finish();

  int64_t num_buckets() const { return int64_t(buckets_.size()); }
  // Buckets whose all-reduce was launched during the backward (before finish()) in the last armed backward.
  int64_t launched_during_backward() const { return launched_early_; }
  // The buckets as [dtype, first element, end element) of the flat buffers: for tests and the log.
  struct Bucket {
    DType dtype = DType::f32;
    int64_t begin = 0, end = 0;
    std::vector<int> entries;
  };
  std::vector<Bucket> bucket_ranges() const;

 private:
  struct State {
    Bucket range;
    int pending = 0;
    std::unique_ptr<Work> work;
  };
  void on_ready(const Tensor& leaf);
  void launch_ready_prefix();
  void launch(size_t k);

  Communicator& comm_;
  FlatBuffer grads_;
  std::vector<State> buckets_;
  std::vector<int> bucket_of_entry_;
  std::unordered_map<const void*, int> entry_of_grad_;  // the data pointer of an entry's grad view -> entry
  size_t next_ = 0;                                     // the next bucket to launch
  bool armed_ = false;
  int64_t launched_early_ = 0;
};

// Rank r's shard of a flat buffer of `total` elements split into `world` equal shards of S elements
// (S a multiple of FlatLayout::kFlatAlign; the buffer must hold world * S elements).
struct ShardRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
int64_t shard_size(int64_t total, int world);
ShardRange shard_of(int64_t total, int world, int rank);

}  // namespace natsl::dist
