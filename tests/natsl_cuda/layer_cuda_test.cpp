// The whole NatslAttention layer on the GPU (router, sparse attention, masked GDN, mixing kernels, cuBLAS
// projections) against the same layer on the CPU in f64: output, every parameter gradient (the router
// weight's straight-through one included), the labels and attn_frac; f32 and bf16, at GPU-kernel head sizes
// (d_a 64, d_av 128; GDN K 128, V 256) with T not a multiple of 64. Also a GDN + NAtS-L language model's
// loss and backward on the GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "data/batch.h"
#include "layers/causal_lm.h"
#include "layers/natsl_attention.h"
#include "tests/layers/reference_model.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

const Device kGpu = Device::cuda(0);

ModelConfig gpu_config() {
  ModelConfig c;
  c.vocab_size = 50;
  c.hidden_size = 96;
  c.num_layers = 1;
  c.num_heads = 2;
  c.head_dim = 128;  // K 128, V 256
  c.expand_v = 2.0;
  c.num_attn_heads = 4;  // d_a 64, d_av 128
  c.attn_head_dim = 64;
  c.attn_value_dim = 128;
  c.attn_qk_norm = true;
  c.attn_rope = false;
  c.intermediate_size = 64;
  return c;
}

// Labels decided by the input: feature h carries +-1.5 per chunk and router head h reads it.
double label(int64_t b, int64_t chunk, int64_t h) { return (b + chunk + h) % 3 == 0 ? 1 : -1; }

struct Pair {
  std::shared_ptr<NatslAttention> cpu, gpu;
  Tensor x64;
};
Pair make_pair(const ModelConfig& c, DType gpu_dtype, int64_t B, int64_t T) {
  Pair p{std::make_shared<NatslAttention>(c, 0), std::make_shared<NatslAttention>(c, 0), Tensor()};
  randomize(*p.cpu, 17, 0.08);
  const int64_t d = c.hidden_size, H = c.num_heads;
  // A_log / dt_bias as at init (decays in a realistic range), norm weights near 1.
  for (const ParameterRef& r : p.cpu->named_parameters()) {
    Vec v = r.tensor->to_vector<double>();
    if (r.name == "A_log") for (double& e : v) e = std::log(1.0 + 4.0 * std::abs(e) / 0.08);
    if (r.name == "dt_bias") for (double& e : v) e = -3.0 + e;
    if (r.name.find("norm") != std::string::npos) for (double& e : v) e += 1.0;
    if (r.name == "nats_layer.weight")
      for (int64_t o = 0; o < 2 * H; ++o)
        for (int64_t e = 0; e < d; ++e) v[size_t(o * d + e)] = e == o / 2 ? (o % 2 == 0 ? 1.0 : -1.0) : 0.1 * v[size_t(o * d + e)];
    r.tensor->copy_(tensor(v, r.meta->shape));
  }
  p.x64 = randn({B, T, d}, 23, DType::f64, 1.0);
  double* xp = p.x64.data<double>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) xp[(b * T + t) * d + h] += 1.5 * label(b, t / 64, h);
  p.gpu->load_state_dict(p.cpu->state_dict());
  p.gpu->to(gpu_dtype);
  p.gpu->to(kGpu);
  return p;
}

void expect_rel(const Tensor& got, const Tensor& ref, double tol, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_TRUE(got.defined());
  const ErrorStats e = compare(got.to(kCPU).to(DType::f64), ref);
  EXPECT_TRUE(e.finite);
  EXPECT_LE(e.rel_rms, tol);
}

void expect_layer_matches(DType dt, double tol, bool reference_backward) {
  ModelConfig c = gpu_config();
  c.reference_attn_backward = reference_backward;
  const int64_t B = 2, T = 200;
  Pair p = make_pair(c, dt, B, T);
  const Tensor R = randn({B, T, c.hidden_size}, 29, DType::f64);

  Tensor out64 = p.cpu->forward(p.x64);
  out64.backward(R);
  Tensor xg = p.x64.to(dt).to(kGpu).set_requires_grad(true);
  Tensor out = p.gpu->forward(xg);
  out.backward(R.to(dt).to(kGpu));

  EXPECT_EQ(compare(p.gpu->last_mask_softmax().to(kCPU).to(DType::f64), p.cpu->last_mask_softmax()).max_abs, 0.0);
  EXPECT_EQ(compare(p.gpu->last_mask_gdn().to(kCPU).to(DType::f64), p.cpu->last_mask_gdn()).max_abs, 0.0);
  std::map<std::string, double> s64, sg;
  p.cpu->collect_stats(s64);
  p.gpu->collect_stats(sg);
  EXPECT_DOUBLE_EQ(sg["attn_frac"], s64["attn_frac"]);

  expect_rel(out, out64, tol, "out");
  std::map<std::string, Tensor> g64;
  for (const ParameterRef& r : p.cpu->named_parameters()) g64[r.name] = r.tensor->grad();
  for (const ParameterRef& r : p.gpu->named_parameters()) expect_rel(r.tensor->grad(), g64[r.name], 2 * tol, r.name);
}

}  // namespace

TEST(NatslCudaLayer, F32MatchesCpuF64) {
  NATSL_REQUIRE_GPU();
  expect_layer_matches(DType::f32, 5e-3, false);  // TF32-level matmuls
}
TEST(NatslCudaLayer, F32ReferenceBackwardMatchesCpuF64) {
  NATSL_REQUIRE_GPU();
  expect_layer_matches(DType::f32, 5e-3, true);
}
TEST(NatslCudaLayer, Bf16MatchesCpuF64) {
  NATSL_REQUIRE_GPU();
  expect_layer_matches(DType::bf16, 4e-2, false);
}

TEST(NatslCudaLayer, HybridLanguageModelLossAndBackward) {
  NATSL_REQUIRE_GPU();
  ModelConfig c = gpu_config();
  c.num_layers = 2;
  c.layers = {"gdn", "natsl"};
  CausalLM cpu(c), gpu(c);
  Generator gen(5);
  cpu.init_parameters(gen);
  gpu.load_state_dict(cpu.state_dict());
  gpu.to(kGpu);
  const int64_t B = 2, T = 150;
  std::vector<int32_t> ids(size_t(B * T)), tg(size_t(B * T));
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = int32_t((i * 7 + 3) % 50);
    tg[i] = int32_t((i * 11 + 1) % 50);
  }
  Batch b;
  b.inputs = Tensor::from_vector(ids, {B, T});
  b.targets = Tensor::from_vector(tg, {B, T});
  Tensor l_cpu = cpu.loss(b), l_gpu = gpu.loss(b);
  EXPECT_NEAR(l_gpu.item(), l_cpu.item(), 1e-3);
  l_cpu.backward();
  l_gpu.backward();
  for (const ParameterRef& r : gpu.named_parameters()) {
    const Tensor* ref = cpu.find_parameter(r.name);
    expect_rel(r.tensor->grad(), ref->grad().to(DType::f64), 2e-2, r.name);
  }
}
