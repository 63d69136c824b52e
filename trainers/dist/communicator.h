#pragma once
// The collectives the data-parallel trainer needs, behind one interface with two backends:
//   NCCL  (GPU ranks): collectives run on a communication stream of the rank's GPU, ordered after the
//         compute stream's work through events; a watchdog turns a stuck or failed collective into an error
//         (ncclCommAbort) instead of a hang.
//   Gloo  (CPU ranks, Debian's libgloo-dev): collectives run on a communication thread in issue order; Gloo's
//         TCP transport times out and reports a peer that went away.
// natsl implements no collective algorithm itself: every reduction is the backend's.
//
// Every rank must issue the same collectives in the same order (as with MPI/NCCL). Tensors are contiguous,
// on the communicator's device, of a dtype the backend reduces (Gloo: f32, f64, i32, i64; NCCL: also bf16).
//
// Timeouts: each collective (and the connection at start) fails with dist::TimeoutError or dist::CommError
// after `timeout`, naming the operation; the trainer then exits, and the peers' collectives fail in turn, so
// a dead rank stops the whole job in bounded time.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "core/device.h"
#include "core/tensor.h"
#include "trainers/dist/launch.h"
#include "trainers/dist/store.h"

namespace natsl::dist {

// A collective failed: a peer died, the network broke, or the backend reported an error. The message names
// the operation and, where known, the rank.
struct CommError : Error {
  using Error::Error;
};

enum class ReduceOp { sum, avg, max };

// A collective in flight. wait() returns when its result may be used by the caller's next operation: on the
// CPU when the data is in place; on a GPU when the caller's compute stream is ordered after it (the host does
// not block). It throws the collective's error, if any. Destroying an unwaited Work waits for it.
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  Device device() const { return device_; }
  virtual std::string backend() const = 0;  // "gloo" or "nccl"
  Millis timeout() const { return timeout_; }

  // In place over t (all ranks: same shape and dtype). avg divides the sum by the world size.
  virtual std::unique_ptr<Work> all_reduce_async(Tensor t, ReduceOp op) = 0;
  // in: world_size * n elements; out: n elements, this rank's block (rank r gets in[r*n, (r+1)*n) reduced).
  virtual std::unique_ptr<Work> reduce_scatter_async(Tensor in, Tensor out, ReduceOp op) = 0;
  // in: n elements; out: world_size * n elements, rank r's input at [r*n, (r+1)*n).
  virtual std::unique_ptr<Work> all_gather_async(Tensor in, Tensor out) = 0;
  // t from root to every rank, in place.
  virtual std::unique_ptr<Work> broadcast_async(Tensor t, int root) = 0;

  void all_reduce(Tensor t, ReduceOp op) { all_reduce_async(std::move(t), op)->wait(); }
  void reduce_scatter(Tensor in, Tensor out, ReduceOp op) { reduce_scatter_async(std::move(in), std::move(out), op)->wait(); }
  void all_gather(Tensor in, Tensor out) { all_gather_async(std::move(in), std::move(out))->wait(); }
  void broadcast(Tensor t, int root) { broadcast_async(std::move(t), root)->wait(); }
  // Returns when every rank has reached it (and every collective issued before it has completed here).
  virtual void barrier() = 0;
  // Blocks the host until every collective issued so far has completed (GPU: within the timeout, else the
  // communicator is aborted and CommError thrown). Call before reading on the host what collectives wrote.
  virtual void synchronize() = 0;

 protected:
  Communicator(int rank, int world_size, Device device, Millis timeout)
      : rank_(rank), world_size_(world_size), device_(device), timeout_(timeout) {}
  int rank_, world_size_;
  Device device_;
  Millis timeout_;
};

// Whether this build has the backend (Gloo: libgloo-dev found at configure time; NCCL: the CUDA build found
// libnccl).
bool gloo_available();
bool nccl_available();

// Connects this rank's communicator through `store` (every rank calls it with the same prefix).
// device: kCPU -> Gloo; a CUDA device -> NCCL. Throws InputError when the build lacks the backend, naming
// what to install, and TimeoutError when the peers do not all connect within `timeout`.
std::unique_ptr<Communicator> connect_communicator(const LaunchInfo& launch, Store& store, Device device,
                                                   Millis timeout, const std::string& prefix = "natsl/comm");

// Backend constructors (connect_communicator picks one).
std::unique_ptr<Communicator> make_gloo_communicator(const LaunchInfo& launch, Store& store, Millis timeout,
                                                     const std::string& prefix);
std::unique_ptr<Communicator> make_nccl_communicator(const LaunchInfo& launch, Store& store, Device device,
                                                     Millis timeout, const std::string& prefix);

// The name of a reduction, for messages.
const char* reduce_op_name(ReduceOp op);

}  // namespace natsl::dist
