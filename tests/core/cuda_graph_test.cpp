// core/cuda_graph.h: capture once, replay many; the graph's memory rules (allocator.h).
#include <gtest/gtest.h>

#include "autograd/engine.h"
#include "autograd/ops.h"
#include "core/allocator.h"
#include "core/cuda_graph.h"
#include "tests/cuda_test_util.h"
#include "tests/test_util.h"

namespace natsl {
namespace {
using namespace testing;

// y = (x @ w) * x + b with temporaries inside: what a captured step looks like in small.
Tensor small_step(const Tensor& x, const Tensor& w, const Tensor& b) {
  NoGradGuard no_grad;
  const Tensor p = matmul(x, w);
  const Tensor s = mul(p, x);
  return add(s, b);
}

TEST(CudaGraph, NeedsACudaDevice) {
  EXPECT_THROW(CudaGraph g(Device::cpu()), Error);
}

TEST(CudaGraph, ReplaysReadTheInputsOfTheirTimeAndKeepTheMemoryTheyUse) {
  NATSL_REQUIRE_GPU();
  const int64_t n = 96;
  Tensor x = to_gpu(randn({n, n}, 1, DType::f32));
  const Tensor w = to_gpu(randn({n, n}, 2, DType::f32));
  Tensor b = to_gpu(randn({n, n}, 3, DType::f32));
  const Tensor b_copy = b.clone();
  const Tensor eager0 = small_step(x, w, b);  // also the lazy set-up, outside the capture
  Tensor y;
  CudaGraph g(gpu());
  g.capture([&] { y = small_step(x, w, b); });
  ASSERT_TRUE(g.captured());
  EXPECT_GT(g.num_nodes(), 2);
  EXPECT_GT(g.pool_bytes(), 0);
  // The capture ran nothing; the first replay computes what the eager run did.
  g.replay();
  expect_same_bits(y, eager0, "first replay");
  // A replay reads the inputs as they are when it runs.
  x.copy_(to_gpu(randn({n, n}, 4, DType::f32)));
  const Tensor eager1 = small_step(x, w, b_copy);
  g.replay();
  expect_same_bits(y, eager1, "replay after new inputs");
  // b was alive when the capture ended: dropping our handle must not hand its memory to anyone else while the
  // graph lives. New tensors of its size, filled with garbage, must not change the next replay.
  b = Tensor();
  std::vector<Tensor> others;
  for (int i = 0; i < 8; ++i) others.push_back(Tensor::full({n, n}, 1e30, DType::f32, gpu()));
  g.replay();
  expect_same_bits(y, eager1, "replay after its bias handle was dropped");
  // The graph's own memory (its temporaries, freed inside the capture) is never handed out either: eager tensors
  // made now, of every size the step used, keep their marks through a replay.
  std::vector<Tensor> marked;
  for (int i = 0; i < 6; ++i)
    for (const Shape& sh : {Shape{n, n}, Shape{n}, Shape{4 * n, n}})
      marked.push_back(Tensor::full(sh, 7.0, DType::f32, gpu()));
  g.replay();
  for (const Tensor& t : marked) expect_same_bits(t, Tensor::full(t.shape(), 7.0, DType::f32, gpu()), "marked");
  expect_same_bits(y, eager1, "replay beside the marked tensors");
}

TEST(CudaGraph, UntaggedDeviceMemoryIsRefusedInsideACapture) {
  NATSL_REQUIRE_GPU();
  const Tensor x = to_gpu(randn({8, 8}, 9, DType::f32));
  (void)small_step(x, x, x);  // lazy set-up (the matrix products' workspace) outside the capture
  CudaGraph g(gpu());
  try {
    g.capture([&] { (void)allocate(gpu(), 4096); });
    FAIL() << "untagged memory inside a capture must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("untagged CUDA memory"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(g.captured());
}

TEST(CudaGraph, AHostReadInsideTheCaptureFailsAndLeavesTheDeviceUsable) {
  NATSL_REQUIRE_GPU();
  const Tensor x = to_gpu(randn({8, 8}, 5, DType::f32));
  const Tensor w = to_gpu(randn({8, 8}, 6, DType::f32));
  (void)small_step(x, w, x);  // lazy set-up (the matrix products' workspace) outside the capture
  CudaGraph g(gpu());
  try {
    g.capture([&] {
      const Tensor y = small_step(x, w, x);
      (void)y.to_vector<float>();  // a synchronising read: not capturable
    });
    FAIL() << "a host read inside a capture must fail";
  } catch (const Error& e) {
    // The CUDA error of the read names the capture (cudaErrorStreamCaptureUnsupported / ...Invalidated).
    const std::string msg = e.what();
    EXPECT_NE(msg.find("CUDA graph capture on cuda:0 failed"), std::string::npos) << msg;
    EXPECT_NE(msg.find("captur", msg.find("failed: ") + 8), std::string::npos) << msg;
  }
  EXPECT_FALSE(g.captured());
  // Eager work goes on, with the same results as before the attempt; a new graph may be captured.
  const Tensor a = small_step(x, w, x), ref = small_step(x.to(kCPU), w.to(kCPU), x.to(kCPU));
  expect_match(a, f64(ref), kF32, "eager after a failed capture");
  CudaGraph g2(gpu());
  Tensor y;
  g2.capture([&] { y = small_step(x, w, x); });
  g2.replay();
  expect_same_bits(y, a, "a second graph after the failed one");
}

TEST(CudaGraph, OneGraphPerDeviceAtATime) {
  NATSL_REQUIRE_GPU();
  const Tensor x = to_gpu(randn({4, 4}, 7, DType::f32));
  (void)small_step(x, x, x);  // lazy set-up outside the capture
  CudaGraph g(gpu());
  Tensor y;
  g.capture([&] { y = small_step(x, x, x); });
  CudaGraph g2(gpu());
  EXPECT_THROW(g2.capture([&] { (void)small_step(x, x, x); }), Error);
  g.replay();
  expect_same_bits(y, small_step(x, x, x), "the first graph still replays");
}

}  // namespace
}  // namespace natsl
