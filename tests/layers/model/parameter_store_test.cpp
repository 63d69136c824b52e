// ParameterStore: one flat layout, parameters as views, grads landing in the flat grad buffer, zero_grad,
// deterministic init, bf16 compute copies, state dict through the master weights.
#include <gtest/gtest.h>

#include <algorithm>

#include "autograd/ops.h"
#include "layers/model/causal_lm.h"
#include "layers/model/parameter_store.h"
#include "tests/layers/reference_model.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

ModelConfig tiny_config() { return tiny_lm_config(/*qk_norm=*/true); }

Batch tiny_batch() {
  return Batch{Tensor::from_vector(std::vector<int32_t>{1, 2, 3, 10, 0, 4}, {2, 3}),
               Tensor::from_vector(std::vector<int32_t>{2, 3, -100, 0, 4, 9}, {2, 3})};
}

bool inside(const Tensor& view, const Tensor& flat) {
  auto* p = static_cast<const char*>(view.data_ptr());
  auto* b = static_cast<const char*>(flat.data_ptr());
  return p >= b && p + view.nbytes() <= b + flat.nbytes();
}

}  // namespace

TEST(ParameterStore, ParametersAreViewsOfOneBuffer) {
  CausalLM lm(tiny_config());
  ParameterStore store(lm);
  EXPECT_EQ(store.num_params(), lm.num_parameters());
  EXPECT_EQ(store.layout().entries().size(), lm.named_parameters().size());
  const Tensor& master = store.master().flat(DType::f32);
  const Tensor& grads = store.grads().flat(DType::f32);
  for (const ParameterRef& p : lm.named_parameters()) {
    EXPECT_TRUE(inside(*p.tensor, master)) << p.name;
    EXPECT_TRUE(p.tensor->requires_grad()) << p.name;
    EXPECT_TRUE(p.tensor->is_leaf()) << p.name;
    ASSERT_TRUE(p.tensor->grad().defined()) << p.name;
    EXPECT_TRUE(inside(p.tensor->grad(), grads)) << p.name;
    EXPECT_EQ(p.tensor->grad().dtype(), DType::f32);
  }
}

TEST(ParameterStore, KeepsTheModuleValuesItWasBuiltFrom) {
  CausalLM lm(tiny_config());
  Generator g(3);
  lm.init_parameters(g);
  StateDict before;
  for (auto& [n, t] : lm.state_dict()) before[n] = t.clone();
  ParameterStore store(lm);
  for (const ParameterRef& p : lm.named_parameters())
    EXPECT_EQ(p.tensor->to_vector<float>(), before.at(p.name).to_vector<float>()) << p.name;
}

TEST(ParameterStore, GradsLandInTheFlatBufferAndAccumulate) {
  CausalLM ref(tiny_config()), lm(tiny_config());
  Generator g1(5), g2(5);
  ref.init_parameters(g1);
  ParameterStore store(lm);
  store.init(g2);
  Batch batch = tiny_batch();

  // Reference gradients from a model without a store.
  ref.loss(batch).backward();
  store.zero_grad();
  lm.loss(batch).backward();
  for (const ParameterRef& p : lm.named_parameters()) {
    Tensor want = ref.find_parameter(p.name)->grad();
    ASSERT_TRUE(want.defined()) << p.name;
    EXPECT_CLOSE(store.grads().view(store.layout().find(p.name)), want, 1e-6, 1e-7);
  }
  // A second backward adds into the same buffer.
  lm.loss(batch).backward();
  for (const ParameterRef& p : lm.named_parameters()) {
    Tensor twice = ref.find_parameter(p.name)->grad().to(DType::f64);
    Tensor got = p.tensor->grad().to(DType::f64);
    EXPECT_CLOSE(got, mul_scalar(twice, 2.0), 1e-6, 1e-6);
  }
  // zero_grad is one memset of the whole buffer.
  store.zero_grad();
  for (double v : store.grads().flat(DType::f32).to_vector<double>()) ASSERT_EQ(v, 0.0);
  for (const ParameterRef& p : lm.named_parameters())
    for (double v : p.tensor->grad().to_vector<double>()) ASSERT_EQ(v, 0.0);
}

TEST(ParameterStore, InitIsDeterministicPerSeed) {
  ModelConfig c = tiny_config();
  CausalLM a(c), b(c), d(c);
  ParameterStore sa(a), sb(b), sd(d);
  Generator ga(77), gb(77), gd(78);
  sa.init(ga);
  sb.init(gb);
  sd.init(gd);
  auto va = sa.master().flat(DType::f32).to_vector<float>();
  EXPECT_EQ(va, sb.master().flat(DType::f32).to_vector<float>());
  EXPECT_NE(va, sd.master().flat(DType::f32).to_vector<float>());
  // Same values as the module's own init: the layout order is the parameter order.
  CausalLM m(c);
  Generator gm(77);
  m.init_parameters(gm);
  for (const ParameterRef& p : a.named_parameters())
    EXPECT_EQ(p.tensor->to_vector<float>(), m.find_parameter(p.name)->to_vector<float>()) << p.name;
  // Norms are 1, weights have roughly the configured std.
  for (const ParameterRef& p : a.named_parameters()) {
    auto v = p.tensor->to_vector<double>();
    if (p.meta->init.kind == InitKind::Ones) {
      for (double x : v) ASSERT_EQ(x, 1.0) << p.name;
    } else if (v.size() >= 64) {
      double ss = 0;
      for (double x : v) ss += x * x;
      EXPECT_NEAR(std::sqrt(ss / double(v.size())), 0.02, 0.006) << p.name;
    }
  }
}

TEST(ParameterStore, DecayMask) {
  CausalLM lm(tiny_config());
  ParameterStore store(lm);
  auto with_emb = store.decay_mask(true), without_emb = store.decay_mask(false);
  const auto& entries = store.layout().entries();
  for (size_t i = 0; i < entries.size(); ++i) {
    bool norm = entries[i].name.find("norm") != std::string::npos;
    bool emb = entries[i].name == "model.embeddings.weight";
    EXPECT_EQ(with_emb[i], !norm) << entries[i].name;
    EXPECT_EQ(without_emb[i], !norm && !emb) << entries[i].name;
  }
}

TEST(ParameterStore, Bf16ComputeCopyFollowsTheMaster) {
  CausalLM lm(tiny_config());
  ParameterStore store(lm, kCPU, Precision::bf16);
  Generator g(9);
  store.init(g);
  const Tensor& master = store.master().flat(DType::f32);
  for (const ParameterRef& p : lm.named_parameters()) {
    EXPECT_EQ(p.tensor->dtype(), DType::bf16) << p.name;
    EXPECT_TRUE(inside(*p.tensor, store.compute().flat(DType::f32))) << p.name;
    EXPECT_EQ(p.tensor->grad().dtype(), DType::f32) << p.name;
  }
  EXPECT_EQ(store.compute().flat(DType::f32).to_vector<float>(), master.to(DType::bf16).to_vector<float>());
  // An optimizer step writes the master; the compute copy follows only on sync.
  master.fill_(0.3);
  EXPECT_NE(lm.find_parameter("model.norm.weight")->to_vector<float>()[0], float(bf16(0.3f)));
  store.sync_compute_from_master();
  EXPECT_EQ(lm.find_parameter("model.norm.weight")->to_vector<float>()[0], float(bf16(0.3f)));
}

TEST(ParameterStore, StateDictIsTheMasterAndLoadsStrictly) {
  ModelConfig c = tiny_config();
  CausalLM a(c), b(c);
  ParameterStore sa(a, kCPU, Precision::bf16), sb(b, kCPU, Precision::bf16);
  Generator g(1);
  sa.init(g);
  sb.load_state_dict(sa.state_dict());
  EXPECT_EQ(sa.master().flat(DType::f32).to_vector<float>(), sb.master().flat(DType::f32).to_vector<float>());
  EXPECT_EQ(sa.compute().flat(DType::f32).to_vector<float>(), sb.compute().flat(DType::f32).to_vector<float>());
  for (auto& [n, t] : sa.state_dict()) EXPECT_EQ(t.dtype(), DType::f32) << n;
  StateDict bad = sa.state_dict();
  bad.erase("lm_head.weight");
  EXPECT_THROW(sb.load_state_dict(bad, "x.safetensors"), InputError);
}

TEST(ParameterStore, MovesToTheGpuAndBack) {
  NATSL_REQUIRE_GPU();
  CausalLM lm(tiny_config());
  ParameterStore store(lm);
  Generator g(2);
  store.init(g);
  Batch batch = tiny_batch();
  double cpu_loss = lm.loss(batch).item();
  store.to(Device::cuda(0));
  EXPECT_TRUE(lm.find_parameter("lm_head.weight")->device().is_cuda());
  store.zero_grad();
  Tensor loss = lm.loss(batch);
  EXPECT_NEAR(loss.item(), cpu_loss, 1e-4);
  loss.backward();
  EXPECT_TRUE(lm.find_parameter("lm_head.weight")->grad().device().is_cuda());
  store.to(kCPU);
  EXPECT_TRUE(lm.find_parameter("lm_head.weight")->device().is_cpu());
}

TEST(ParameterStore, Bf16BackwardAccumulatesIntoF32Grads) {
  ModelConfig c = tiny_config();
  CausalLM ref(c), lm(c);
  Generator g1(4), g2(4);
  ParameterStore sr(ref), store(lm, kCPU, Precision::bf16);
  sr.init(g1);
  store.init(g2);
  StateDict rounded;  // the reference runs in f32 on the bf16-rounded weights
  for (const ParameterRef& p : lm.named_parameters()) rounded[p.name] = p.tensor->to(DType::f32);
  sr.load_state_dict(rounded);
  Batch batch = tiny_batch();
  sr.zero_grad();
  ref.loss(batch).backward();
  store.zero_grad();
  lm.loss(batch).backward();
  // bf16 activations: about 0.5% relative RMS error observed; allow 3%.
  EXPECT_CLOSE(store.grads().flat(DType::f32), sr.grads().flat(DType::f32), 0.03, 0.05);
  EXPECT_GT(compare(sr.grads().flat(DType::f32), Tensor::zeros({sr.layout().total(DType::f32)})).max_abs, 1e-4);
}

// ZeRO-1: a store sharded W ways keeps rank r's range of the f32 master weights (the same values an unsharded
// store of the same padded layout holds there) and the whole weights in its compute buffer; set_parameter
// writes both; sync_compute_from_master refreshes only the shard's range.
TEST(ParameterStore, ShardedStoreKeepsItsRangeOfTheMasterAndTheWholeComputeWeights) {
  const int W = 3;
  for (Precision prec : {Precision::f32, Precision::bf16}) {
    for (int rank = 0; rank < W; ++rank) {
      SCOPED_TRACE("rank " + std::to_string(rank) + " " + precision_name(prec));
      CausalLM whole_lm(tiny_config()), lm(tiny_config());
      ParameterStore whole(whole_lm, kCPU, Precision::f32, 1), st(lm, kCPU, prec, W, rank);
      Generator g1(21), g2(21);
      whole.init(g1);
      st.init(g2);
      ASSERT_TRUE(st.sharded());
      EXPECT_THROW(st.master(), Error);
      const int64_t total = st.layout().total(DType::f32), n = total / W;
      ASSERT_EQ(total % W, 0);
      EXPECT_EQ(st.shard_begin(), n * rank);
      EXPECT_EQ(st.shard_end(), n * (rank + 1));
      ASSERT_EQ(st.master_shard().numel(), n);
      // The unsharded layout has no padding at its end; compare entry by entry through the names.
      const Tensor shard = st.master_shard();
      const auto sv = shard.to_vector<float>();
      for (size_t i = 0; i < st.layout().entries().size(); ++i) {
        const FlatEntry& e = st.layout().entries()[i];
        const auto wv = whole.master().view(whole.layout().find(e.name)).to_vector<float>();
        const int64_t lo = std::max(e.offset, st.shard_begin()), hi = std::min(e.offset + e.numel(), st.shard_end());
        for (int64_t k = lo; k < hi; ++k) ASSERT_EQ(sv[size_t(k - st.shard_begin())], wv[size_t(k - e.offset)]) << e.name;
        // The compute copy holds the whole parameter (bf16-rounded for bf16).
        const auto cv = st.compute().view(int(i)).to_vector<float>();
        const auto want = prec == Precision::bf16 ? whole.master().view(whole.layout().find(e.name)).to(DType::bf16).to_vector<float>() : wv;
        ASSERT_EQ(cv, want) << e.name;
      }
      // An optimizer step writes the shard; only the shard's range of the compute weights follows on sync.
      const std::vector<float> before = st.compute().flat(DType::f32).to_vector<float>();
      shard.fill_(0.25);
      st.sync_compute_from_master();
      const std::vector<float> after = st.compute().flat(DType::f32).to_vector<float>();
      for (int64_t k = 0; k < total; ++k) {
        const bool mine = k >= st.shard_begin() && k < st.shard_end();
        ASSERT_EQ(after[size_t(k)], mine ? 0.25f : before[size_t(k)]) << k;
      }
      // set_parameter writes the compute copy whole and the master where the shard overlaps it.
      const int last = int(st.layout().entries().size()) - 1;
      const FlatEntry& e = st.layout().entries()[size_t(last)];
      st.set_parameter(last, Tensor::full(e.shape, 0.5, DType::f32));
      for (float x : st.compute().view(last).to_vector<float>()) ASSERT_EQ(x, 0.5f);
      const auto sv2 = st.master_shard().to_vector<float>();
      for (int64_t k = std::max(e.offset, st.shard_begin()); k < std::min(e.offset + e.numel(), st.shard_end()); ++k)
        ASSERT_EQ(sv2[size_t(k - st.shard_begin())], 0.5f);
    }
  }
}
