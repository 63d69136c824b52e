// The Gloo communicator with real TCP pairs between threads of this process (one rank per thread), through
// an in-process store: every collective against the obvious serial result, and the failure paths.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <thread>

#include "trainers/dist/communicator.h"
#include "trainers/dist/memory_store.h"
#include "tests/trainers/dist/dist_test_util.h"

namespace natsl::dist {
namespace {

using testing::thread_rank;

// Runs fn(comm) on `world` threads, one connected Gloo rank each; rethrows the first failure.
void on_ranks(int world, const std::function<void(Communicator&)>& fn, Millis timeout = Millis(20000)) {
  MemoryStore store;
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        auto comm = connect_communicator(thread_rank(r, world), store, kCPU, timeout);
        fn(*comm);
      } catch (...) {
        errors[size_t(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

class GlooComm : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (!gloo_available()) GTEST_SKIP() << "this build has no Gloo (install libgloo-dev)";
  }
};

TEST_P(GlooComm, AllReduceSumAvgMaxMatchTheSerialResult) {
  const int W = GetParam();
  const int64_t n = 1000003;  // not a multiple of anything: Gloo's segmenting and the tail
  on_ranks(W, [&](Communicator& c) {
    EXPECT_EQ(c.backend(), "gloo");
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[size_t(i)] = float((i % 97) * (c.rank() + 1)) * 0.25f;
    Tensor s = Tensor::from_vector(v, {n}), a = Tensor::from_vector(v, {n}), m = Tensor::from_vector(v, {n});
    c.all_reduce(s, ReduceOp::sum);
    c.all_reduce(a, ReduceOp::avg);
    c.all_reduce(m, ReduceOp::max);
    const float tri = float(W * (W + 1) / 2);
    for (int64_t i : {int64_t(0), int64_t(1), int64_t(96), n / 2, n - 1}) {
      const float base = float(i % 97) * 0.25f;
      EXPECT_FLOAT_EQ(s.data<float>()[i], base * tri) << i;
      EXPECT_FLOAT_EQ(a.data<float>()[i], base * tri / float(W)) << i;
      EXPECT_FLOAT_EQ(m.data<float>()[i], base * float(W)) << i;
    }
  });
}

TEST_P(GlooComm, EveryRankGetsTheSameBits) {
  // The trainer's grad norm and skip decision rely on it: all ranks hold identical reduced gradients.
  const int W = GetParam();
  const int64_t n = 4099;
  MemoryStore results;
  on_ranks(W, [&](Communicator& c) {
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[size_t(i)] = std::sin(float(i * (c.rank() + 3))) * 1e-3f + 1.0f / float(i + 1);
    Tensor t = Tensor::from_vector(v, {n});
    c.all_reduce(t, ReduceOp::avg);
    const auto* p = reinterpret_cast<const uint8_t*>(t.data<float>());
    results.set(std::string("r").append(std::to_string(c.rank())), std::vector<uint8_t>(p, p + n * 4));
  });
  for (int r = 1; r < W; ++r)
    EXPECT_EQ(results.get("r0", Millis(1)), results.get(std::string("r").append(std::to_string(r)), Millis(1))) << "rank " << r;
}

TEST_P(GlooComm, ReduceScatterAllGatherBroadcast) {
  const int W = GetParam();
  const int64_t m = 37;
  on_ranks(W, [&](Communicator& c) {
    const int r = c.rank();
    std::vector<double> in(static_cast<size_t>(m * W));
    for (int64_t i = 0; i < m * W; ++i) in[size_t(i)] = double(i) + 1000.0 * r;
    Tensor tin = Tensor::from_vector(in, {m * W}, DType::f64);
    Tensor out = Tensor::zeros({m}, DType::f64);
    c.reduce_scatter(tin, out, ReduceOp::sum);
    for (int64_t i = 0; i < m; ++i)
      EXPECT_DOUBLE_EQ(out.data<double>()[i], double(W) * double(r * m + i) + 1000.0 * W * (W - 1) / 2) << i;
    // all_gather of each rank's block gives back the whole reduced vector
    Tensor all = Tensor::zeros({m * W}, DType::f64);
    c.all_gather(out, all);
    for (int64_t i = 0; i < m * W; ++i)
      EXPECT_DOUBLE_EQ(all.data<double>()[i], double(W) * double(i) + 1000.0 * W * (W - 1) / 2) << i;
    // In place, as ZeRO-1 gathers the weights: each rank's input is its own block of the output.
    Tensor inplace = Tensor::full({m * W}, -1.0, DType::f64);
    inplace.slice(0, r * m, (r + 1) * m).copy_(out);
    c.all_gather(inplace.slice(0, r * m, (r + 1) * m), inplace);
    EXPECT_EQ(inplace.to_vector<double>(), all.to_vector<double>());
    Tensor b = Tensor::full({5}, double(r + 7), DType::i64);
    c.broadcast(b, W - 1);
    for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(b.data<int64_t>()[i], int64_t(W - 1 + 7));
    c.barrier();
  });
}

TEST_P(GlooComm, AsyncCollectivesCompleteInIssueOrderWhileTheCallerComputes) {
  const int W = GetParam();
  on_ranks(W, [&](Communicator& c) {
    std::vector<Tensor> ts;
    std::vector<std::unique_ptr<Work>> works;
    for (int k = 0; k < 8; ++k) {
      ts.push_back(Tensor::full({1 << 14}, double(k + c.rank()), DType::f32));
      works.push_back(c.all_reduce_async(ts.back(), ReduceOp::sum));
    }
    for (int k = 7; k >= 0; --k) works[size_t(k)]->wait();  // any wait order
    for (int k = 0; k < 8; ++k)
      EXPECT_FLOAT_EQ(ts[size_t(k)].data<float>()[100], float(W * k + W * (W - 1) / 2)) << k;
  });
}

INSTANTIATE_TEST_SUITE_P(Ranks, GlooComm, ::testing::Values(1, 2, 4), [](const auto& p) {
  return std::string("world").append(std::to_string(p.param));
});

TEST(GlooCommFailure, AMissingRankTimesOutNamingTheKeys) {
  if (!gloo_available()) GTEST_SKIP() << "this build has no Gloo (install libgloo-dev)";
  MemoryStore store;
  auto t0 = std::chrono::steady_clock::now();
  try {
    connect_communicator(thread_rank(0, 2), store, kCPU, Millis(1500));
    FAIL() << "connected without rank 1";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("could not connect"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
}

TEST(GlooCommFailure, APeerThatLeavesFailsTheCollectiveInBoundedTime) {
  if (!gloo_available()) GTEST_SKIP() << "this build has no Gloo (install libgloo-dev)";
  MemoryStore store;
  std::atomic<bool> left{false};
  std::string error;
  auto t0 = std::chrono::steady_clock::now();
  std::thread peer([&] {
    auto c = connect_communicator(thread_rank(1, 2), store, kCPU, Millis(3000));
    c.reset();  // rank 1 goes away: its pairs close
    left = true;
  });
  try {
    auto c = connect_communicator(thread_rank(0, 2), store, kCPU, Millis(3000));
    while (!left) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    Tensor t = Tensor::full({1024}, 1.0, DType::f32);
    c->all_reduce(t, ReduceOp::sum);
  } catch (const Error& e) {
    error = e.what();
  }
  peer.join();
  EXPECT_FALSE(error.empty()) << "the all-reduce with a departed peer did not fail";
  EXPECT_NE(error.find("all_reduce"), std::string::npos) << error;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(15));
}

TEST(NcclComm, ABuildWithoutNcclSaysWhatToInstall) {
  if (nccl_available()) GTEST_SKIP() << "this build has NCCL";
  MemoryStore store;
  try {
    connect_communicator(thread_rank(0, 2), store, Device::cuda(0), Millis(100));
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("NCCL"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace natsl::dist

namespace natsl::dist {
namespace {

// The NCCL backend with one rank on the GPU machine: every collective runs through the real communicator
// (stream ordering, non-blocking launches, the polled synchronize) and gives the identity results.
TEST(NcclComm, AWorldOfOneRunsEveryCollectiveOnTheGpu) {
  if (!nccl_available()) GTEST_SKIP() << "this build has no NCCL (CUDA build with libnccl needed)";
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU on this machine";
  MemoryStore store;
  auto comm = connect_communicator(thread_rank(0, 1), store, Device::cuda(0), Millis(60000));
  EXPECT_EQ(comm->backend(), "nccl");
  std::vector<float> v(1000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i) * 0.5f;
  Tensor t = Tensor::from_vector(v, {1000}).to(Device::cuda(0));
  comm->all_reduce(t, ReduceOp::avg);
  Tensor out = Tensor::zeros({1000}, DType::f32, Device::cuda(0));
  comm->reduce_scatter(t, out, ReduceOp::sum);
  Tensor all = Tensor::zeros({1000}, DType::f32, Device::cuda(0));
  comm->all_gather(out, all);
  comm->broadcast(all, 0);
  comm->barrier();
  comm->synchronize();
  EXPECT_EQ(all.to_vector<float>(), v);
}

}  // namespace
}  // namespace natsl::dist
