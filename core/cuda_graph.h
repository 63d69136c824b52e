#pragma once
// CudaGraph: work queued on a device's compute stream, recorded once (stream capture) and replayed with one
// launch, so the host's per-kernel launch cost leaves the step (the trainer's train.cuda_graph).
//
// What a capture records is the kernels with their arguments: every pointer, shape and scalar is fixed. A replay
// therefore does exactly what the captured code did with the same addresses; whatever changes between replays
// must live in device memory that the caller rewrites before replaying (the trainer's input batch buffers).
// Memory (core/allocator.h): allocations made inside the capture come from the graph's private pool and are
// never handed to anything else while the graph lives; every other allocation that existed when the capture
// ended (weights, gradients, caches) is kept, not freed, until the graph is destroyed, so a replay never reads
// or writes memory that has been given to someone else.
// Not capturable (the capture fails with an Error naming the CUDA error, and nothing has run): host reads of
// device data (item, to(cpu)), copies from pageable host memory (from_vector to the GPU), work on another stream.
#include <functional>

#include "core/device.h"

namespace natsl {

class CudaGraph {
 public:
  explicit CudaGraph(Device device);
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Records fn's work on the device's compute stream (none of it runs: replay() runs it). Throws (no graph kept,
  // the pool released) when fn throws or the capture is invalidated; may be called once.
  void capture(const std::function<void()>& fn);
  // Queues the recorded work on the compute stream.
  void replay() const;
  bool captured() const { return exec_ != nullptr; }
  // Bytes of the graph's private pool (the activations of one captured step).
  int64_t pool_bytes() const;
  // Kernel and other nodes in the graph.
  int64_t num_nodes() const { return nodes_; }

 private:
  Device device_;
  void* graph_ = nullptr;  // cudaGraph_t
  void* exec_ = nullptr;   // cudaGraphExec_t
  void* pool_ = nullptr;   // allocator.h capture pool
  int64_t nodes_ = 0;
};

}  // namespace natsl
