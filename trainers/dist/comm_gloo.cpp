// The Gloo backend (CPU ranks): one gloo::rendezvous::Context per communicator, connected as a full mesh of
// TCP pairs through the job's Store; collectives run in issue order on one communication thread, so the
// trainer's compute goes on while a bucket's all-reduce is in flight.
#include "trainers/dist/communicator.h"

#ifdef NATSL_WITH_GLOO

#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

namespace natsl::dist {

namespace {

// Gloo's rendezvous store over natsl's (keys under a prefix; every wait bounded by the timeout).
class GlooStoreAdapter : public gloo::rendezvous::Store {
 public:
  GlooStoreAdapter(dist::Store& store, std::string prefix, Millis timeout)
      : store_(store), prefix_(std::move(prefix)), timeout_(timeout) {}
  void set(const std::string& key, const std::vector<char>& data) override {
    store_.set(prefix_ + key, std::vector<uint8_t>(data.begin(), data.end()));
  }
  std::vector<char> get(const std::string& key) override {
    std::vector<uint8_t> v = store_.get(prefix_ + key, timeout_);
    return std::vector<char>(v.begin(), v.end());
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    std::vector<std::string> full;
    for (const auto& k : keys) full.push_back(prefix_ + k);
    store_.wait(full, std::min<Millis>(timeout, timeout_));
  }

 private:
  dist::Store& store_;
  std::string prefix_;
  Millis timeout_;
};

// Runs tasks one after another on its own thread, in the order given.
class CommThread {
 public:
  CommThread() : thread_([this] { loop(); }) {}
  ~CommThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  std::future<void> post(std::function<void()> fn) {
    std::packaged_task<void()> task(std::move(fn));
    std::future<void> f = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_all();
    return f;
  }

 private:
  void loop() {
    for (;;) {
      std::packaged_task<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop_ and nothing left
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();  // exceptions go to the future
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<void()>> queue_;
  bool stop_ = false;
  std::thread thread_;
};

class GlooWork : public Work {
 public:
  GlooWork(std::future<void> f, std::string what, Millis timeout) : f_(std::move(f)), what_(std::move(what)), timeout_(timeout) {}
  ~GlooWork() override {
    if (f_.valid()) {
      try {
        wait();
      } catch (...) {
      }
    }
  }
  void wait() override {
    if (!f_.valid()) return;
    // Gloo's own timeout ends a stuck collective; this bound is a second line, for a queue stuck behind one.
    if (f_.wait_for(timeout_ * 2 + Millis(5000)) != std::future_status::ready)
      throw TimeoutError(fmt::format("{} did not complete within {} ms", what_, (timeout_ * 2).count()));
    f_.get();
  }

 private:
  std::future<void> f_;
  std::string what_;
  Millis timeout_;
};

using ReduceFn = void (*)(void*, const void*, const void*, size_t);
template <class T>
ReduceFn reduce_fn(ReduceOp op) {
  return op == ReduceOp::max ? ReduceFn(&gloo::max<T>) : ReduceFn(&gloo::sum<T>);  // avg: sum, then / world
}

template <class F>
void dispatch_dtype(DType dt, const char* what, F&& f) {
  switch (dt) {
    case DType::f32: f(float{}); break;
    case DType::f64: f(double{}); break;
    case DType::i32: f(int32_t{}); break;
    case DType::i64: f(int64_t{}); break;
    default: throw Error(fmt::format("gloo {}: dtype {} is not supported (f32, f64, i32, i64)", what, dtype_name(dt)));
  }
}

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(const LaunchInfo& launch, dist::Store& store, Millis timeout, const std::string& prefix)
      : Communicator(launch.rank, launch.world_size, kCPU, timeout) {
    gloo::transport::tcp::attr attr;
    // The address the peers reach this rank at: an interface the user names (GLOO_SOCKET_IFNAME, as PyTorch
    // reads it), loopback for a job on one host, else this host's name.
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    const bool local = launch.master_addr == "127.0.0.1" || launch.master_addr == "localhost" ||
                       launch.world_size == launch.local_world_size;
    if (ifname && *ifname) {
      attr.iface = ifname;
    } else if (local) {
      attr.hostname = "127.0.0.1";
    } else {
      char host[256] = {0};
      if (::gethostname(host, sizeof host - 1) != 0) throw Error("gloo: gethostname failed");
      attr.hostname = host;
    }
    try {
      device_ = gloo::transport::tcp::CreateDevice(attr);
      auto ctx = std::make_shared<gloo::rendezvous::Context>(launch.rank, launch.world_size);
      ctx->setTimeout(timeout);
      GlooStoreAdapter adapter(store, prefix + "/gloo/", timeout);
      ctx->connectFullMesh(adapter, device_);
      context_ = ctx;
    } catch (const dist::TimeoutError& e) {
      throw TimeoutError(fmt::format("gloo: rank {} could not connect to its {} peers: {}", rank_, world_size_ - 1, e.what()));
    } catch (const std::exception& e) {
      throw CommError(fmt::format("gloo: rank {} could not connect to its {} peers: {}", rank_, world_size_ - 1, e.what()));
    }
  }

  std::string backend() const override { return "gloo"; }

  std::unique_ptr<Work> all_reduce_async(Tensor t, ReduceOp op) override {
    check(t, "all_reduce");
    const uint32_t tag = next_tag_++;
    return post(fmt::format("all_reduce({}, {} elements)", reduce_op_name(op), t.numel()), [this, t, op, tag] {
      dispatch_dtype(t.dtype(), "all_reduce", [&](auto zero) {
        using T = decltype(zero);
        T* p = t.data<T>();
        const size_t n = size_t(t.numel());
        allreduce_in_place(p, n, op, tag);
        if (op == ReduceOp::avg) {
          const T w = T(world_size_);
          for (size_t i = 0; i < n; ++i) p[i] = p[i] / w;
        }
      });
    });
  }

  std::unique_ptr<Work> reduce_scatter_async(Tensor in, Tensor out, ReduceOp op) override {
    check(in, "reduce_scatter");
    check(out, "reduce_scatter");
    NATSL_CHECK(in.dtype() == out.dtype() && in.numel() == out.numel() * world_size_,
                "reduce_scatter: in must hold world_size x out's elements of its dtype");
    const uint32_t tag = next_tag_++;
    // Gloo's current API has no reduce-scatter: its all-reduce into a scratch copy, then this rank's block.
    return post(fmt::format("reduce_scatter({}, {} elements)", reduce_op_name(op), in.numel()), [this, in, out, op, tag] {
      dispatch_dtype(in.dtype(), "reduce_scatter", [&](auto zero) {
        using T = decltype(zero);
        const size_t n = size_t(in.numel()), m = size_t(out.numel());
        T* scratch = scratch_of<T>(n);
        std::copy(in.data<T>(), in.data<T>() + n, scratch);
        allreduce_in_place(scratch, n, op, tag);
        T* o = out.data<T>();
        const T* src = scratch + size_t(rank_) * m;
        const T w = T(world_size_);
        for (size_t i = 0; i < m; ++i) o[i] = op == ReduceOp::avg ? src[i] / w : src[i];
      });
    });
  }

  std::unique_ptr<Work> all_gather_async(Tensor in, Tensor out) override {
    check(in, "all_gather");
    check(out, "all_gather");
    NATSL_CHECK(in.dtype() == out.dtype() && out.numel() == in.numel() * world_size_,
                "all_gather: out must hold world_size x in's elements of its dtype");
    const uint32_t tag = next_tag_++;
    return post(fmt::format("all_gather({} elements)", out.numel()), [this, in, out, tag] {
      dispatch_dtype(in.dtype(), "all_gather", [&](auto zero) {
        using T = decltype(zero);
        gloo::AllgatherOptions opts(context_);
        // In place (the input is this rank's block of the output, as NCCL allows): Gloo gets a copy.
        const T* src = in.data<T>();
        const T* lo = out.data<T>();
        if (src >= lo && src < lo + out.numel()) {
          T* copy = scratch_of<T>(size_t(in.numel()));
          std::copy(src, src + in.numel(), copy);
          src = copy;
        }
        opts.setInput(const_cast<T*>(src), size_t(in.numel()));
        opts.setOutput(out.data<T>(), size_t(out.numel()));
        opts.setTag(tag);
        opts.setTimeout(timeout_);
        gloo::allgather(opts);
      });
    });
  }

  std::unique_ptr<Work> broadcast_async(Tensor t, int root) override {
    check(t, "broadcast");
    NATSL_CHECK(root >= 0 && root < world_size_, "broadcast: root ", root, " is not a rank");
    const uint32_t tag = next_tag_++;
    return post(fmt::format("broadcast(root {}, {} elements)", root, t.numel()), [this, t, root, tag] {
      dispatch_dtype(t.dtype(), "broadcast", [&](auto zero) {
        using T = decltype(zero);
        gloo::BroadcastOptions opts(context_);
        opts.setOutput(t.data<T>(), size_t(t.numel()));
        opts.setRoot(root);
        opts.setTag(tag);
        opts.setTimeout(timeout_);
        gloo::broadcast(opts);
      });
    });
  }

  void barrier() override {
    const uint32_t tag = next_tag_++;
    post("barrier", [this, tag] {
      gloo::BarrierOptions opts(context_);
      opts.setTag(tag);
      opts.setTimeout(timeout_);
      gloo::barrier(opts);
    })->wait();
  }

  void synchronize() override {
    post("synchronize", [] {})->wait();
  }

 private:
  void check(const Tensor& t, const char* what) const {
    NATSL_CHECK(t.defined() && t.is_contiguous() && t.device().is_cpu(), "gloo ", what,
                ": needs a contiguous CPU tensor, got ", t.defined() ? t.str() : std::string("undefined"));
  }
  std::unique_ptr<Work> post(std::string what, std::function<void()> fn) {
    const int r = rank_;
    const std::string label = what;
    auto f = thread_.post([fn = std::move(fn), r, label] {
      try {
        fn();
      } catch (const Error&) {
        throw;
      } catch (const std::exception& e) {
        // Gloo's IoException / EnforceNotMet: a peer went away or timed out.
        throw CommError(fmt::format("rank {}: gloo {} failed: {} (did another rank exit? its error comes first)", r,
                                    label, e.what()));
      }
    });
    return std::make_unique<GlooWork>(std::move(f), "gloo " + what, timeout_);
  }

  // Gloo's all-reduce of p[0, n) in place with `op`'s reduce function (sum for avg: callers divide).
  template <class T>
  void allreduce_in_place(T* p, size_t n, ReduceOp op, uint32_t tag) {
    gloo::AllreduceOptions opts(context_);
    opts.setOutput(p, n);
    opts.setTag(tag);
    opts.setTimeout(timeout_);
    opts.setReduceFunction(reduce_fn<T>(op));
    gloo::allreduce(opts);
  }

  // Scratch memory of the communication thread (reduce-scatter, in-place all-gather), kept between calls.
  template <class T>
  T* scratch_of(size_t n) {
    if (scratch_.size() < n * sizeof(T)) scratch_.resize(n * sizeof(T));
    return reinterpret_cast<T*>(scratch_.data());
  }
  std::vector<uint8_t> scratch_;

  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::Context> context_;
  uint32_t next_tag_ = 1;
  CommThread thread_;  // last: joined first, while the context is alive
};

}  // namespace

bool gloo_available() { return true; }

std::unique_ptr<Communicator> make_gloo_communicator(const LaunchInfo& launch, Store& store, Millis timeout,
                                                     const std::string& prefix) {
  return std::make_unique<GlooCommunicator>(launch, store, timeout, prefix);
}

}  // namespace natsl::dist

#else  // no Gloo in this build

namespace natsl::dist {
bool gloo_available() { return false; }
std::unique_ptr<Communicator> make_gloo_communicator(const LaunchInfo&, Store&, Millis, const std::string&) {
  throw InputError("multi-rank training on the CPU needs Gloo, which this build lacks: install libgloo-dev "
                   "(apt-get install libgloo-dev) and rebuild natsl");
}
}  // namespace natsl::dist

#endif
