// The data-parallel pieces below the trainer: gradient buckets launched from the backward (threads as Gloo
// ranks), and the ZeRO-1 sharded AdamW against the whole-buffer one.
#include <gtest/gtest.h>

#include <thread>

#include "trainers/optim/adamw.h"
#include "autograd/ops.h"
#include "layers/model/causal_lm.h"
#include "layers/model/parameter_store.h"
#include "tests/layers/reference_model.h"
#include "trainers/dist/data_parallel.h"
#include "trainers/dist/memory_store.h"
#include "tests/trainers/dist/dist_test_util.h"

namespace natsl::dist {
namespace {

Batch batch_of(int which) {
  std::vector<int32_t> in, tg;
  for (int i = 0; i < 12; ++i) {
    in.push_back((i * 7 + which * 3) % 11);
    tg.push_back((i * 5 + which * 11 + 1) % 11);
  }
  return Batch{Tensor::from_vector(in, {2, 6}), Tensor::from_vector(tg, {2, 6})};
}

TEST(GradReducer, BucketsCoverEveryEntryOnceInReverseLayoutOrder) {
  CausalLM lm(testing::tiny_lm_config(true));
  ParameterStore store(lm);
  MemoryStore kv;
  LaunchInfo li;
  li.launcher = "test";
  if (!gloo_available()) GTEST_SKIP() << "this build has no Gloo (install libgloo-dev)";
  auto comm = connect_communicator(li, kv, kCPU, Millis(5000));
  GradReducer r(*comm, store.grads(), 256);
  const auto buckets = r.bucket_ranges();
  ASSERT_GT(buckets.size(), 2u);
  std::vector<int> seen(store.layout().entries().size(), 0);
  int64_t prev_begin = store.layout().total(DType::f32) + 1;
  for (const auto& b : buckets) {
    EXPECT_LE(b.end, prev_begin);  // later buckets lie earlier in the buffer
    prev_begin = b.begin;
    for (int e : b.entries) {
      ++seen[size_t(e)];
      const FlatEntry& fe = store.layout().entries()[size_t(e)];
      EXPECT_GE(fe.offset, b.begin);
      EXPECT_LE(fe.offset + fe.numel(), b.end);
    }
  }
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], 1) << store.layout().entries()[i].name;
}

TEST(GradReducer, AveragesGradientsAndStartsBucketsDuringTheBackward) {
  if (!gloo_available()) GTEST_SKIP() << "this build has no Gloo (install libgloo-dev)";
  const int W = 2;
  // The reference: one process, the mean of the two ranks' losses.
  CausalLM ref(testing::tiny_lm_config(true));
  Generator g(7);
  ref.init_parameters(g);
  ParameterStore ref_store(ref);
  ref_store.zero_grad();
  for (int k = 0; k < W; ++k) mul_scalar(ref.loss(batch_of(k)), 1.0 / W).backward();
  const std::vector<float> want = ref_store.grads().flat(DType::f32).to_vector<float>();

  MemoryStore kv;
  std::vector<std::vector<float>> got(W);
  std::vector<int64_t> early(W), buckets(W);
  std::vector<std::thread> ranks;
  for (int r = 0; r < W; ++r)
    ranks.emplace_back([&, r] {
      auto comm = connect_communicator(testing::thread_rank(r, W), kv, kCPU, Millis(20000));
      CausalLM lm(testing::tiny_lm_config(true));
      Generator gr(7);
      lm.init_parameters(gr);
      ParameterStore st(lm);
      GradReducer red(*comm, st.grads(), 256);
      st.zero_grad();
      {
        auto hook = red.arm();
        lm.loss(batch_of(r)).backward();
      }
      red.finish();
      got[size_t(r)] = st.grads().flat(DType::f32).to_vector<float>();
      early[size_t(r)] = red.launched_during_backward();
      buckets[size_t(r)] = red.num_buckets();
    });
  for (auto& t : ranks) t.join();
  for (int r = 0; r < W; ++r) {
    ASSERT_EQ(got[size_t(r)].size(), want.size());
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_NEAR(got[size_t(r)][i], want[i], 1e-6 + 1e-5 * std::abs(want[i])) << "rank " << r << " element " << i;
    EXPECT_EQ(got[size_t(r)], got[0]) << "the ranks' averaged gradients differ in their bits";
    EXPECT_GT(buckets[size_t(r)], 2);
    // Buckets whose parameters the backward finished first went out before the backward ended.
    EXPECT_GT(early[size_t(r)], 0);
  }
}

TEST(ZeroAdamW, ShardedUpdatesEqualTheWholeBufferUpdateBitForBit) {
  const int W = 3;
  CausalLM lm(testing::tiny_lm_config(true));
  Generator g(11);
  lm.init_parameters(g);
  // A store sharded W ways (rank 0's master shard): its compute buffer holds the whole weights the forward
  // reads; each rank's optimizer updates its own copy of its shard, and the shards are copied back into the
  // compute buffer after each step (what the trainer's all-gather does).
  ParameterStore st(lm, kCPU, Precision::f32, W, 0);
  ASSERT_TRUE(st.sharded());
  const int64_t total = st.layout().total(DType::f32);
  ASSERT_EQ(total % (W * FlatLayout::kFlatAlign), 0);
  const std::vector<bool> decay = st.decay_mask();
  const AdamWOptions opt{1e-2, 0.9, 0.95, 1e-8, 0.1};
  const Tensor compute = st.compute().flat(DType::f32);
  // The whole-buffer optimizer on a copy of the weights.
  FlatBuffer whole_params(st.layout(), kCPU);
  whole_params.flat(DType::f32).copy_(compute);
  AdamW whole(whole_params, st.grads(), decay, opt);
  std::vector<std::unique_ptr<AdamW>> shards;
  std::vector<Tensor> shard_params;
  for (int r = 0; r < W; ++r) {
    const ShardRange sh = shard_of(total, W, r);
    EXPECT_EQ(sh.size() * W, total);
    shard_params.push_back(compute.slice(0, sh.begin, sh.end).clone());
    shards.push_back(std::make_unique<AdamW>(st.layout(), shard_params.back(),
                                             st.grads().flat(DType::f32).slice(0, sh.begin, sh.end), decay, opt,
                                             sh.begin));
  }
  EXPECT_EQ(st.master_shard().to_vector<float>(), shard_params[0].to_vector<float>());
  for (int step = 0; step < 3; ++step) {
    st.zero_grad();
    lm.loss(batch_of(step)).backward();
    const Tensor scale = Tensor::full({1}, 0.5, DType::f32);
    whole.step(scale);
    for (int r = 0; r < W; ++r) {
      shards[size_t(r)]->step(scale);
      const ShardRange sh = shard_of(total, W, r);
      compute.slice(0, sh.begin, sh.end).copy_(shard_params[size_t(r)]);
    }
  }
  EXPECT_EQ(compute.to_vector<float>(), whole_params.flat(DType::f32).to_vector<float>());
  const auto m = whole.exp_avg().flat(DType::f32).to_vector<float>();
  for (int r = 0; r < W; ++r) {
    const auto ms = shards[size_t(r)]->exp_avg_shard().to_vector<float>();
    const int64_t b = shards[size_t(r)]->shard_begin();
    for (size_t i = 0; i < ms.size(); ++i) ASSERT_EQ(ms[i], m[size_t(b) + i]) << "rank " << r << " element " << i;
  }
}

}  // namespace
}  // namespace natsl::dist
