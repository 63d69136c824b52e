// The NCCL backend (GPU ranks). A non-blocking communicator (ncclConfig_t.blocking = 0) so that no call can
// hang the host: initialisation and every launch are polled with a deadline, and a collective that does not
// finish in time, or an asynchronous NCCL error, aborts the communicator (ncclCommAbort) and throws.
//
// Ordering: a collective waits (on the communication stream) for an event recorded on the compute stream
// when it is issued, so it sees every gradient written before; Work::wait() makes the compute stream wait
// for the collective's completion event. The host blocks only in synchronize() (polled, bounded).
#include "trainers/dist/communicator.h"

#if defined(NATSL_WITH_NCCL) && defined(NATSL_WITH_CUDA)

#include <cstdlib>
#include <cstring>
#include <thread>

#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nccl.h>

#include "core/cuda_check.h"
#include "core/stream.h"

namespace natsl::dist {

namespace {

using Clock = std::chrono::steady_clock;

ncclDataType_t nccl_dtype(DType dt) {
  switch (dt) {
    case DType::f32: return ncclFloat32;
    case DType::bf16: return ncclBfloat16;
    case DType::f64: return ncclFloat64;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::u8: return ncclUint8;
  }
  throw Error("nccl: unsupported dtype");
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::avg: return ncclAvg;
    case ReduceOp::max: return ncclMax;
  }
  return ncclSum;
}

class NcclWork : public Work {
 public:
  NcclWork(cudaEvent_t done, int device, std::vector<Tensor> keep) : done_(done), device_(device), keep_(std::move(keep)) {}
  ~NcclWork() override {
    if (done_) {
      try {
        wait();
      } catch (...) {
      }
    }
  }
  void wait() override {
    if (!done_) return;
    cudaStream_t compute = activate(device_);
    NATSL_CUDA_CHECK(cudaStreamWaitEvent(compute, done_, 0));
    NATSL_CUDA_CHECK(cudaEventDestroy(done_));  // released once the wait is enqueued
    done_ = nullptr;
    keep_.clear();  // memory the compute stream reuses only after the collective (ordered by the wait)
  }

 private:
  cudaEvent_t done_ = nullptr;
  int device_;
  std::vector<Tensor> keep_;
};

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(const LaunchInfo& launch, dist::Store& store, Device device, Millis timeout, const std::string& prefix)
      : Communicator(launch.rank, launch.world_size, device, timeout) {
    // NVLink SHARP (multicast) can put a shared host's GPUs out of service: off unless the user chose.
    ::setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
    activate(device.index);
    ncclUniqueId id;
    const std::string key = prefix + "/nccl/unique_id";
    if (rank_ == 0) {
      check(ncclGetUniqueId(&id), "ncclGetUniqueId");
      store.set(key, std::vector<uint8_t>(reinterpret_cast<uint8_t*>(&id), reinterpret_cast<uint8_t*>(&id) + sizeof id));
    }
    std::vector<uint8_t> bytes;
    try {
      bytes = store.get(key, timeout);
    } catch (const TimeoutError& e) {
      throw TimeoutError(fmt::format("nccl: rank {} did not receive the communicator id from rank 0: {}", rank_, e.what()));
    }
    if (bytes.size() != sizeof id) throw CommError("nccl: the communicator id in the store has the wrong size");
    std::memcpy(&id, bytes.data(), sizeof id);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&comm_, world_size_, id, rank_, &config);
    if (r != ncclSuccess && r != ncclInProgress) fail(r, "ncclCommInitRankConfig");
    wait_ready("connecting to its peers (ncclCommInitRankConfig)");
    NATSL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }

  ~NcclCommunicator() override {
    if (comm_) {
      if (aborted_) ncclCommAbort(comm_);
      else {
        ncclCommFinalize(comm_);
        // Bounded: a finalize that does not finish is abandoned with an abort.
        const auto deadline = Clock::now() + timeout_;
        ncclResult_t st = ncclInProgress;
        while (st == ncclInProgress && Clock::now() < deadline) {
          ncclCommGetAsyncError(comm_, &st);
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        if (st == ncclSuccess) ncclCommDestroy(comm_);
        else ncclCommAbort(comm_);
      }
    }
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::string backend() const override { return "nccl"; }

  std::unique_ptr<Work> all_reduce_async(Tensor t, ReduceOp op) override {
    check_tensor(t, "all_reduce");
    return launch({t}, "ncclAllReduce", [&] {
      return ncclAllReduce(t.data_ptr(), t.data_ptr(), size_t(t.numel()), nccl_dtype(t.dtype()), nccl_op(op), comm_, stream_);
    });
  }
  std::unique_ptr<Work> reduce_scatter_async(Tensor in, Tensor out, ReduceOp op) override {
    check_tensor(in, "reduce_scatter");
    check_tensor(out, "reduce_scatter");
    NATSL_CHECK(in.dtype() == out.dtype() && in.numel() == out.numel() * world_size_,
                "reduce_scatter: in must hold world_size x out's elements of its dtype");
    return launch({in, out}, "ncclReduceScatter", [&] {
      return ncclReduceScatter(in.data_ptr(), out.data_ptr(), size_t(out.numel()), nccl_dtype(in.dtype()), nccl_op(op),
                               comm_, stream_);
    });
  }
  std::unique_ptr<Work> all_gather_async(Tensor in, Tensor out) override {
    check_tensor(in, "all_gather");
    check_tensor(out, "all_gather");
    NATSL_CHECK(in.dtype() == out.dtype() && out.numel() == in.numel() * world_size_,
                "all_gather: out must hold world_size x in's elements of its dtype");
    return launch({in, out}, "ncclAllGather", [&] {
      return ncclAllGather(in.data_ptr(), out.data_ptr(), size_t(in.numel()), nccl_dtype(in.dtype()), comm_, stream_);
    });
  }
  std::unique_ptr<Work> broadcast_async(Tensor t, int root) override {
    check_tensor(t, "broadcast");
    return launch({t}, "ncclBroadcast", [&] {
      return ncclBroadcast(t.data_ptr(), t.data_ptr(), size_t(t.numel()), nccl_dtype(t.dtype()), root, comm_, stream_);
    });
  }
  void barrier() override {
    Tensor one = Tensor::full({1}, 1.0, DType::f32, device_);
    all_reduce(one, ReduceOp::sum);
    synchronize();
  }
  void synchronize() override {
    activate(device_.index);
    cudaEvent_t ev;
    NATSL_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    NATSL_CUDA_CHECK(cudaEventRecord(ev, stream_));
    const auto deadline = Clock::now() + timeout_;
    for (;;) {
      cudaError_t q = cudaEventQuery(ev);
      if (q == cudaSuccess) break;
      if (q != cudaErrorNotReady) {
        cudaEventDestroy(ev);
        NATSL_CUDA_CHECK(q);
      }
      ncclResult_t st = ncclSuccess;
      ncclCommGetAsyncError(comm_, &st);
      if (st != ncclSuccess && st != ncclInProgress) {
        cudaEventDestroy(ev);
        fail(st, "a collective");
      }
      if (Clock::now() > deadline) {
        cudaEventDestroy(ev);
        aborted_ = true;
        ncclCommAbort(comm_);
        comm_ = nullptr;
        throw TimeoutError(fmt::format("rank {}: NCCL collectives did not complete within {} s (a peer rank stopped or "
                                       "hangs); the communicator was aborted",
                                       rank_, timeout_.count() / 1000.0));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    NATSL_CUDA_CHECK(cudaEventDestroy(ev));
  }

 private:
  template <class F>
  std::unique_ptr<Work> launch(std::vector<Tensor> keep, const char* what, F&& call) {
    if (!comm_) throw CommError(fmt::format("rank {}: {} on an aborted NCCL communicator", rank_, what));
    cudaStream_t compute = activate(device_.index);
    cudaEvent_t ready, done;
    NATSL_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    NATSL_CUDA_CHECK(cudaEventRecord(ready, compute));
    NATSL_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready, 0));
    NATSL_CUDA_CHECK(cudaEventDestroy(ready));
    ncclResult_t r = call();
    if (r != ncclSuccess && r != ncclInProgress) fail(r, what);
    if (r == ncclInProgress) wait_ready(what);
    NATSL_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    NATSL_CUDA_CHECK(cudaEventRecord(done, stream_));
    return std::make_unique<NcclWork>(done, device_.index, std::move(keep));
  }
  // A non-blocking call returned ncclInProgress: poll until it is issued, bounded by the timeout.
  void wait_ready(const char* what) {
    const auto deadline = Clock::now() + timeout_;
    ncclResult_t st = ncclInProgress;
    while (st == ncclInProgress) {
      ncclCommGetAsyncError(comm_, &st);
      if (st == ncclInProgress && Clock::now() > deadline) {
        aborted_ = true;
        ncclCommAbort(comm_);
        comm_ = nullptr;
        throw TimeoutError(fmt::format("rank {}: NCCL {} did not finish within {} s (are all {} ranks running?); "
                                       "the communicator was aborted",
                                       rank_, what, timeout_.count() / 1000.0, world_size_));
      }
      if (st == ncclInProgress) std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    if (st != ncclSuccess) fail(st, what);
  }
  [[noreturn]] void fail(ncclResult_t r, const char* what) {
    std::string msg = fmt::format("rank {}: NCCL {} failed: {} ({})", rank_, what, ncclGetErrorString(r),
                                  comm_ ? ncclGetLastError(comm_) : "");
    if (comm_) {
      aborted_ = true;
      ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    throw CommError(msg + " (did another rank exit? its error comes first)");
  }
  void check(ncclResult_t r, const char* what) {
    if (r != ncclSuccess) fail(r, what);
  }
  void check_tensor(const Tensor& t, const char* what) const {
    NATSL_CHECK(t.defined() && t.is_contiguous() && t.device() == device_, "nccl ", what,
                ": needs a contiguous tensor on ", device_.str(), ", got ", t.defined() ? t.str() : std::string("undefined"));
  }

  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool aborted_ = false;
};

}  // namespace

bool nccl_available() { return true; }

std::unique_ptr<Communicator> make_nccl_communicator(const LaunchInfo& launch, Store& store, Device device,
                                                     Millis timeout, const std::string& prefix) {
  return std::make_unique<NcclCommunicator>(launch, store, device, timeout, prefix);
}

}  // namespace natsl::dist

#else

namespace natsl::dist {
bool nccl_available() { return false; }
std::unique_ptr<Communicator> make_nccl_communicator(const LaunchInfo&, Store&, Device device, Millis,
                                                     const std::string&) {
  throw InputError("training on " + device.str() + " with several ranks needs NCCL, which this build lacks: "
                   "install NCCL (libnccl-dev) and the CUDA toolkit, and rebuild natsl");
}
}  // namespace natsl::dist

#endif
