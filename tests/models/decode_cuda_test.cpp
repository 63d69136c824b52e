// Decoding on the GPU (layers/lm_decoder.h): after a prefill of P tokens, every step's logits match one
// full forward over the same tokens, on the GPU and against the CPU forward; NAtS-L layers route as the
// forward does. Head dims 64 (the recurrent GDN kernel) and 32 (the tensor-op step). Skipped without a GPU.
// Tolerances, relative to max |logit|: f32 1e-3 (cuBLAS / flash kernels against small products), bf16 5e-2.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "autograd/engine.h"
#include "autograd/ops.h"
#include "layers/causal_lm.h"
#include "layers/lm_decoder.h"
#include "layers/natsl_attention.h"
#include "tests/test_util.h"

using namespace natsl;

namespace {

ModelConfig decode_config(int64_t head_dim, const std::string& routing) {
  ModelConfig c;
  c.vocab_size = 97;
  c.hidden_size = 64;
  c.num_layers = 3;
  c.layers = {"natsl", "gdn", "attn"};
  c.num_heads = 2;
  c.head_dim = head_dim;
  c.num_attn_heads = 4;
  c.attn_qk_norm = true;
  c.intermediate_size = 96;
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
