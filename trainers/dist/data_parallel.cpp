#include "trainers/dist/data_parallel.h"

#include <algorithm>

namespace natsl::dist {

GradReducer::GradReducer(Communicator& comm, const FlatBuffer& grads, int64_t bucket_bytes)
    : comm_(comm), grads_(grads) {
  NATSL_CHECK(bucket_bytes > 0, "GradReducer: bucket_bytes must be > 0");
  const auto& entries = grads.layout().entries();
  bucket_of_entry_.assign(entries.size(), -1);
  // Reverse layout order, one run of buckets per dtype buffer; a bucket closes once it holds bucket_bytes.
  for (DType dt : grads.layout().dtypes()) {
    State cur;
    int64_t bytes = 0;
    auto close = [&] {
      if (cur.range.entries.empty()) return;
      buckets_.push_back(std::move(cur));
      cur = State();
      bytes = 0;
    };
    for (int i = int(entries.size()) - 1; i >= 0; --i) {
      const FlatEntry& e = entries[size_t(i)];
      if (e.dtype != dt) continue;
      if (cur.range.entries.empty()) {
        cur.range.dtype = dt;
        cur.range.end = e.offset + e.numel();
      }
      cur.range.begin = e.offset;
      cur.range.entries.push_back(i);
      bucket_of_entry_[size_t(i)] = int(buckets_.size());
      bytes += e.numel() * int64_t(dtype_size(dt));
      if (bytes >= bucket_bytes) close();
    }
    close();
  }
  for (size_t i = 0; i < entries.size(); ++i) entry_of_grad_[grads.view(int(i)).data_ptr()] = int(i);
}

std::vector<GradReducer::Bucket> GradReducer::bucket_ranges() const {
  std::vector<Bucket> out;
  for (const auto& b : buckets_) out.push_back(b.range);
  return out;
}

std::unique_ptr<GradReadyHookGuard> GradReducer::arm() {
  NATSL_CHECK(!armed_, "GradReducer::arm: the previous backward was not finished");
  for (auto& b : buckets_) {
    b.pending = int(b.range.entries.size());
    b.work.reset();
  }
  next_ = 0;
  launched_early_ = 0;
  armed_ = true;
  return std::make_unique<GradReadyHookGuard>([this](const Tensor& leaf) { on_ready(leaf); });
}

void GradReducer::on_ready(const Tensor& leaf) {
  if (!armed_ || !leaf.grad().defined()) return;
  auto it = entry_of_grad_.find(leaf.grad().data_ptr());
  if (it == entry_of_grad_.end()) return;  // not one of the store's parameters
  State& b = buckets_[size_t(bucket_of_entry_[size_t(it->second)])];
  if (b.pending > 0 && --b.pending == 0) launch_ready_prefix();
}

void GradReducer::launch_ready_prefix() {
  while (next_ < buckets_.size() && buckets_[next_].pending == 0) {
    launch(next_);
    ++launched_early_;
    ++next_;
  }
}

void GradReducer::launch(size_t k) {
  State& b = buckets_[k];
  Tensor slice = grads_.flat(b.range.dtype).slice(0, b.range.begin, b.range.end);
  b.work = comm_.all_reduce_async(slice, ReduceOp::avg);
}

void GradReducer::finish() {
  NATSL_CHECK(armed_, "GradReducer::finish without arm()");
  armed_ = false;
  for (; next_ < buckets_.size(); ++next_) launch(next_);
  for (auto& b : buckets_) {
    b.work->wait();
    b.work.reset();
  }
}

int64_t shard_size(int64_t total, int world) {
  const int64_t a = FlatLayout::kFlatAlign;
  const int64_t per = (total + world - 1) / world;
  return (per + a - 1) / a * a;
}

ShardRange shard_of(int64_t total, int world, int rank) {
  const int64_t s = shard_size(total, world);
  return {s * rank, s * (rank + 1)};
}

}  // namespace natsl::dist
