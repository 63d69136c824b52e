// Token-by-token decoding with the mixers' caches (layers/decode_cache.h, layers/model/lm_decoder.h) against one
// full forward over the same sequence: after a prefill of P tokens, every step's logits equal the forward's
// at that position, for NAtS-L (fixed and learned routing, both branches active), GDN and attention models,
// prompts P in {0, 1, 63, 64, 65, 130} and sequences crossing three 64-token chunk boundaries.
//
// Tolerances (max |decode - forward| over all logits, relative to max |forward logit|, measured at ~1e-15 in
// f64 and <= 5e-7 in f32 on this model):
//   f64: 1e-12 (the same function evaluated in another order);
//   f32: 1e-5  (f32 rounding of the chunked kernels against the token recurrence and small products).
// The KV bytes a cache reports are the bytes of what it holds: the kept softmax chunks and the current chunk.
#include <gtest/gtest.h>


#include <algorithm>
#include <cmath>

#include "autograd/engine.h"
#include "autograd/ops.h"
#include "autograd/ops_gdn.h"
#include "layers/model/causal_lm.h"
#include "layers/model/lm_decoder.h"
#include "layers/natsl_attention.h"
#include "tests/layers/reference_model.h"
#include "tests/test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

constexpr int64_t kSeqLen = 200;  // chunks 0..3: boundaries at 64, 128, 192
constexpr int64_t kVocab = 37;

ModelConfig decode_config(const std::vector<std::string>& layers) {
  ModelConfig c = sized_model({.vocab = kVocab, .hidden = 16, .intermediate = 24}, layers);
  set_gdn_heads(c, {.heads = 2, .head_dim = 8, .expand_v = 2.0});  // V = 16
  // natsl: G = 2, d_a = 4, d_av = 8; attn: head dim 16 / 4 = 4. RoPE: attention layers' positions are rotated
  // at their own offset when decoding.
  set_attn_heads(c, {.heads = 4, .head_dim = 0, .value_dim = 0, .qk_norm = true, .rope = true});
  c.rope_theta = 100.0;
  return c;
}

// Random weights of moderate size, and GDN gates that decay slowly (exp(g) ~ 0.998 per token), so the state
// carried across chunks matters to the outputs.
std::shared_ptr<CausalLM> make_model(const ModelConfig& c, DType dt, uint64_t seed) {
  auto lm = std::make_shared<CausalLM>(c);
  randomize(*lm, seed, 0.3);
  for (const ParameterRef& p : lm->named_parameters()) {
    if (p.name.ends_with("A_log")) p.tensor->fill_(-4.0);
    if (p.name.ends_with("dt_bias")) p.tensor->fill_(-2.0);
  }
  lm->to(dt);
  lm->eval();
  return lm;
}

Tensor token_ids(int64_t B, int64_t T, uint64_t seed) {
  std::vector<int32_t> ids(size_t(B * T));
  uint64_t s = seed;
  for (auto& id : ids) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    id = int32_t((s >> 33) % uint64_t(kVocab));
  }
  return Tensor::from_vector(ids, {B, T});
}

// Logits [B, T, V] (f64) of a prefill of P tokens followed by T - P steps on the same ids.
Tensor decode_logits(LMDecoder& dec, const Tensor& ids, int64_t P) {
  const int64_t T = ids.size(1);
  std::vector<Tensor> parts;
  if (P > 0) parts.push_back(dec.prefill(ids.slice(1, 0, P).contiguous()).to(DType::f64));
  for (int64_t t = P; t < T; ++t) parts.push_back(dec.step(ids.slice(1, t, t + 1).contiguous()).to(DType::f64));
  return concat(parts, 1);
}

struct Diff {
  double max_abs = 0, scale = 0;
  double relative() const { return max_abs / scale; }
};

Diff max_diff(const Tensor& got, const Tensor& want) {
  EXPECT_EQ(got.shape(), want.shape());
  const std::vector<double> a = got.to_vector<double>(), b = want.to_vector<double>();
  Diff d;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    d.max_abs = std::max(d.max_abs, std::abs(a[i] - b[i]));
    d.scale = std::max(d.scale, std::abs(b[i]));
  }
  return d;
}

double tolerance(DType dt) { return dt == DType::f64 ? 1e-12 : 1e-5; }

// The forward's labels of every NAtS-L layer's completed chunks, [layer][chunk][row * Hr + head].
std::vector<std::vector<std::vector<int>>> forward_labels(const CausalLM& lm, int64_t T) {
  std::vector<std::vector<std::vector<int>>> out;
  for (const auto& [name, layer] : natsl_layers(lm)) {
    const Tensor m = layer->last_mask_softmax();  // [B, NC, Hr]
    const std::vector<double> v = m.to(DType::f64).to_vector<double>();
    const int64_t B = m.size(0), NC = m.size(1), Hr = m.size(2);
    std::vector<std::vector<int>> chunks;
    for (int64_t c = 0; c < T / 64; ++c) {
      std::vector<int> row;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < Hr; ++h) row.push_back(v[size_t((b * NC + c) * Hr + h)] > 0.5);
      chunks.push_back(row);
    }
    out.push_back(chunks);
  }
  return out;
}

// Decodes every prompt length against the full forward; checks the NAtS-L labels against the forward's and
// that both branches were used when `both_branches`.
void check_decoding(const ModelConfig& c, DType dt, int64_t B, bool both_branches, uint64_t seed = 7) {
  const auto lm = make_model(c, dt, seed);
  const Tensor ids = token_ids(B, kSeqLen, seed + 100);
  Tensor want;
  std::vector<std::vector<std::vector<int>>> labels;
  {
    NoGradGuard no_grad;
    want = lm->forward(ids).to(DType::f64);
    labels = forward_labels(*lm, kSeqLen);
  }
  if (both_branches) {
    int64_t soft = 0, gdn = 0;
    for (const auto& layer : labels)
      for (const auto& chunk : layer)
        for (int l : chunk) (l ? soft : gdn) += 1;
    EXPECT_GT(soft, 0) << "no completed chunk is labelled softmax: the test would not exercise the kept KV";
    EXPECT_GT(gdn, 0) << "no completed chunk is labelled GDN: the test would not exercise the state commit";
  }
  for (int64_t P : {0, 1, 63, 64, 65, 130}) {
    const std::string dts(dtype_name(dt));
    SCOPED_TRACE("prompt " + std::to_string(P) + " tokens, " + dts);
    LMDecoder dec(*lm);
    const Diff d = max_diff(decode_logits(dec, ids, P), want);
    EXPECT_LT(d.relative(), tolerance(dt)) << "max |diff| " << d.max_abs << " at logit scale " << d.scale;
    std::printf("[ decode ] %s P=%3ld: max |diff| %.3g (relative %.3g)\n", dts.c_str(), long(P), d.max_abs,
                d.relative());
    size_t natsl = 0;
    for (size_t i = 0; i < dec.num_layers(); ++i) {
      if (c.mixer_kinds()[i] != "natsl") continue;
      EXPECT_EQ(dec.cache(i).chunk_labels(), labels.at(natsl)) << "layer " << i << ": decoding routed differently";
      ++natsl;
    }
  }
}

}  // namespace

TEST(Decode, NatslEveryNthRoutingMatchesForward) {
  ModelConfig c = decode_config({"natsl", "gdn", "natsl"});
  c.nats_routing = "every_nth";
  c.nats_routing_every = 2;
  for (DType dt : {DType::f64, DType::f32}) check_decoding(c, dt, 2, true);
}

// The learned router in evaluation mode labels a chunk when its 64th token arrives, from the chunk alone:
// decoding reproduces the forward's labels (checked per layer, chunk, row and head).
TEST(Decode, NatslLearnedRouterMatchesForward) {
  ModelConfig c = decode_config({"natsl", "natsl"});
  for (DType dt : {DType::f64, DType::f32}) check_decoding(c, dt, 2, true);
}

TEST(Decode, NatslRandomAndAllGdnRoutingMatchForward) {
  ModelConfig c = decode_config({"natsl", "gdn"});
  c.nats_routing = "random";
  c.nats_routing_fraction = 0.5;
  check_decoding(c, DType::f64, 1, true);
  c.nats_routing = "all_gdn";
  check_decoding(c, DType::f32, 2, false);
  c.nats_routing = "all_softmax";
  check_decoding(c, DType::f32, 2, false);
}

TEST(Decode, GatedDeltaNetMatchesForward) {
  ModelConfig c = decode_config({"gdn", "gdn"});
  for (DType dt : {DType::f64, DType::f32}) check_decoding(c, dt, 2, false);
  c.use_short_conv = false;
  check_decoding(c, DType::f64, 2, false);
}

TEST(Decode, AttentionMatchesForward) {
  ModelConfig c = decode_config({"attn", "attn"});
  for (DType dt : {DType::f64, DType::f32}) check_decoding(c, dt, 2, false);
  ModelConfig hybrid = decode_config({"attn", "natsl", "gdn"});
  hybrid.nats_routing = "every_nth";
  hybrid.nats_routing_every = 3;
  check_decoding(hybrid, DType::f32, 1, true);
}

// The KV bytes reported are those held: per (row, router head) the kept softmax chunks (64 positions x G
// heads x (d_a + d_av) values each), plus the current chunk's keys/values of every head; a GDN layer holds
// none, an attention layer every position.
TEST(Decode, KvCacheBytesAreWhatIsHeld) {
  const int64_t B = 2, Hr = 2, G = 2, Ha = 4, Da = 4, Dav = 8, E = 4;  // E: f32 bytes
  const int64_t per_pos_head = (Da + Dav) * E;
  for (const char* routing : {"every_nth", "all_gdn", "learned"}) {
    SCOPED_TRACE(routing);
    ModelConfig c = decode_config({"natsl", "gdn", "attn"});
    c.nats_routing = routing;
    c.nats_routing_every = 2;
    const auto lm = make_model(c, DType::f32, 11);
    const Tensor ids = token_ids(B, kSeqLen, 5);
    LMDecoder dec(*lm);
    dec.prefill(ids.slice(1, 0, 100).contiguous());
    for (int64_t t = 100; t < kSeqLen; ++t) {
      dec.step(ids.slice(1, t, t + 1).contiguous());
      const int64_t pos = t + 1, current = pos % 64;
      int64_t kept = 0;  // (row, head) chunk pairs kept
      for (const auto& chunk : dec.cache(0).chunk_labels())
        for (int l : chunk) kept += l;
      EXPECT_EQ(int64_t(dec.cache(0).chunk_labels().size()), pos / 64);
      const int64_t natsl = kept * 64 * G * per_pos_head + current * B * Ha * per_pos_head;
      ASSERT_EQ(dec.cache(0).kv_bytes(), natsl) << "position " << pos;
      if (std::string(routing) == "all_gdn") {
        ASSERT_EQ(natsl, current * B * Ha * per_pos_head);  // only the current chunk
      }
      if (std::string(routing) == "every_nth") {
        ASSERT_EQ(kept, ((pos / 64 + 1) / 2) * B * Hr);  // chunks 0, 2, ... by every row and head
      }
      EXPECT_EQ(dec.cache(1).kv_bytes(), 0);
      const int64_t attn = pos * B * 4 * (4 + 4) * E;  // 4 heads of dims 4 and 4
      ASSERT_EQ(dec.cache(2).kv_bytes(), attn);
      ASSERT_EQ(dec.kv_bytes(), natsl + attn);
      // Full attention over every layer's q/k/v widths: natsl 4 x (4 + 8), gdn 2 x (8 + 16), attn 4 x (4 + 4).
      ASSERT_EQ(dec.full_attention_kv_bytes(), B * pos * (Ha * (Da + Dav) + 2 * (8 + 16) + 4 * 8) * E);
    }
    EXPECT_GT(dec.state_bytes(), 0);
  }
}

// A topk model cannot decode (its labels compare a chunk with later ones), and a decoder needs eval mode.
TEST(Decode, RefusesNonCausalRoutingAndTrainingMode) {
  ModelConfig c = decode_config({"natsl"});
  c.nats_routing = "topk";
  const auto lm = make_model(c, DType::f32, 3);
  LMDecoder dec(*lm);
  EXPECT_THROW(dec.prefill(token_ids(1, 70, 1)), InputError);
  lm->train();
  EXPECT_THROW(LMDecoder{*lm}, Error);
}

// The tensor-op GDN step (what a GPU decodes with when the recurrent kernel lacks the head dim) against the
// recurrent kernel, chained over a few tokens from a random state.
TEST(Decode, GdnStepOpsMatchTheRecurrentKernel) {
  for (DType dt : {DType::f64, DType::f32}) {
    const DType S = dt == DType::f64 ? DType::f64 : DType::f32;
    const int64_t B = 2, H = 3, K = 5, V = 7;
    Tensor ha = randn({B, H, K, V}, 1, S, 0.5), hb = ha;
    double worst = 0;
    for (uint64_t t = 0; t < 5; ++t) {
      const Tensor q = l2norm(randn({B, 1, H, K}, 10 + t, dt)), k = l2norm(randn({B, 1, H, K}, 20 + t, dt));
      const Tensor v = randn({B, 1, H, V}, 30 + t, dt);
      const Tensor g = mul_scalar(sigmoid(randn({B, 1, H}, 40 + t, S)), -0.3), beta = sigmoid(randn({B, 1, H}, 50 + t, S));
      const GdnOpResult a = gated_delta_rule_recurrent(q, k, v, g, beta, 0.4, ha);
      const GdnOpResult b = gated_delta_rule_step_ops(q, k, v, g, beta, 0.4, hb);
      worst = std::max({worst, max_diff(b.o, a.o).max_abs, max_diff(b.ht, a.ht).max_abs});
      ha = a.ht;
      hb = b.ht;
    }
    EXPECT_LT(worst, dt == DType::f64 ? 1e-13 : 1e-5) << dtype_name(dt);
  }
}

// Decoding on the GPU (layers/model/lm_decoder.h): after a prefill of P tokens, every step's logits match one
// full forward over the same tokens, on the GPU and against the CPU forward; NAtS-L layers route as the
// forward does. Head dims 64 (the recurrent GDN kernel) and 32 (the tensor-op step). Skipped without a GPU.
// Tolerances, relative to max |logit|: f32 1e-3 (cuBLAS / flash kernels against small products), bf16 5e-2.
using namespace natsl;

namespace {

ModelConfig decode_config(int64_t head_dim, const std::string& routing) {
  ModelConfig c = sized_model({.vocab = 97, .hidden = 64, .intermediate = 96}, {"natsl", "gdn", "attn"});
  set_gdn_heads(c, {.heads = 2, .head_dim = head_dim, .expand_v = 2.0});
  set_attn_heads(c, {.heads = 4, .head_dim = 0, .value_dim = 0, .qk_norm = true, .rope = true});
  c.nats_routing = routing;
  c.nats_routing_every = 2;
  return c;
}

double max_rel_diff(const Tensor& got, const Tensor& want) {
  const std::vector<double> a = got.to(kCPU).to(DType::f64).to_vector<double>();
  const std::vector<double> b = want.to(kCPU).to(DType::f64).to_vector<double>();
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return std::isfinite(diff) ? diff / scale : INFINITY;
}

void check_gpu_decoding(int64_t head_dim, const std::string& routing, DType dt, double tol) {
  const ModelConfig c = decode_config(head_dim, routing);
  CausalLM cpu(c), gpu(c);
  Generator gen(5);
  cpu.init_parameters(gen);
  gpu.load_state_dict(cpu.state_dict());
  gpu.to(Device::cuda(0));
  gpu.to(dt);
  cpu.eval();
  gpu.eval();
  const int64_t B = 2, T = 200;
  const Tensor r = natsl::testing::rand_uniform({B, T}, 9, 0, double(c.vocab_size) - 1e-9);
  std::vector<int32_t> v;
  for (double x : r.to_vector<double>()) v.push_back(int32_t(x));
  const Tensor ids = Tensor::from_vector(v, {B, T});
  NoGradGuard no_grad;
  const Tensor want_cpu = cpu.forward(ids), want_gpu = gpu.forward(ids);
  const Tensor gpu_mask = natsl_layers(gpu).at(0).second->last_mask_softmax().to(kCPU).to(DType::f64);
  for (int64_t P : {1, 64, 130}) {
    SCOPED_TRACE("K " + std::to_string(head_dim) + ", " + routing + ", prompt " + std::to_string(P));
    LMDecoder dec(gpu);
    std::vector<Tensor> parts{dec.prefill(ids.slice(1, 0, P).contiguous())};
    for (int64_t t = P; t < T; ++t) parts.push_back(dec.step(ids.slice(1, t, t + 1).contiguous()));
    const Tensor got = concat(parts, 1);
    EXPECT_LT(max_rel_diff(got, want_gpu), tol) << "against the GPU forward";
    EXPECT_LT(max_rel_diff(got, want_cpu), tol) << "against the CPU forward";
    const std::vector<double> m = gpu_mask.to_vector<double>();  // [B, NC, Hr]
    const auto labels = dec.cache(0).chunk_labels();
    ASSERT_EQ(labels.size(), size_t(T / 64));
    const int64_t NC = gpu_mask.size(1), Hr = gpu_mask.size(2);
    for (size_t ch = 0; ch < labels.size(); ++ch)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < Hr; ++h)
          EXPECT_EQ(labels[ch][size_t(b * Hr + h)], int(m[size_t((b * NC + int64_t(ch)) * Hr + h)] > 0.5))
              << "chunk " << ch << " row " << b << " head " << h;
  }
}

}  // namespace

TEST(DecodeCuda, NatslGdnAttentionModelMatchesForwardF32) {
  NATSL_REQUIRE_GPU();
  for (int64_t K : {64, 128})  // the CUDA GDN kernels take K in {64, 128, 192, 256}
    for (const char* routing : {"every_nth", "learned"}) check_gpu_decoding(K, routing, DType::f32, 1e-3);
}

TEST(DecodeCuda, NatslGdnAttentionModelMatchesForwardBf16) {
  NATSL_REQUIRE_GPU();
  check_gpu_decoding(64, "every_nth", DType::bf16, 5e-2);
}
