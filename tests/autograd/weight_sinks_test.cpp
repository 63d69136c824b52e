// Gradient sinks of the ops with weight-gradient kernels (autograd/function.h weight_grad_sink; kernels/nn.h
// weight_grad_writes / accumulate_dw): rmsnorm, short_conv, short_conv_l2norm, embedding, rmsnorm_gate and
// mix_norm_gate (kernels/mix_norm_gate.h, accumulate_dgamma) add their weight gradient straight into the parameter's
// preset .grad, to_dtype adds a cast parameter's gradient there in one pass, and
// chunk_mean_pool adds its dx into its input's pending gradient (engine.h input_grad_sink). Each: the .grad bits equal
// the plain path's (a fresh gradient, then AccumulateGrad's add into the preset values) in f64 and f32; for bf16 data
// with an f32 .grad, the f32 weight gradient of the kernel (no bf16 rounding) followed by the add; and the node really
// returned the sink.
#include <functional>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "autograd/ops_natsl.h"
#include "kernels/mix_norm_gate.h"
#include "kernels/nn.h"
#include "kernels/router.h"
#include "tests/autograd/grad_sink_test_util.h"
#include "tests/ops_test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

// An op with one weight: run(param) makes the op's output from `param`; kernel_dw(dw) writes the op's plain weight
// gradient for dL/dout = c into dw (f32 for bf16 data: the reference of the bf16 sink).
struct WeightOp {
  std::string name;
  Tensor weight;  // the weight's values, in the data's dtype
  std::function<Tensor(const Tensor&)> run;
  std::function<void(const Tensor&)> kernel_dw;
  size_t weight_input;  // the weight's position among the node's inputs
};

void check_weight_sink(const WeightOp& op, const Tensor& c, uint64_t seed) {
  const DType dt = op.weight.dtype();
  const DType gdt = dt == DType::bf16 ? DType::f32 : dt;  // a bf16 run's parameters have an f32 .grad
  const std::string what = op.name + " " + std::string(dtype_name(dt));
  PresetGrad p = with_preset_grad(op.weight, gdt, seed);
  op.run(p.param).backward(c);
  Tensor g;
  if (dt == DType::bf16) {
    g = Tensor::empty(op.weight.shape(), DType::f32);
    op.kernel_dw(g);
  } else {  // the op's own backward into a fresh gradient (a parameter without a preset .grad)
    Tensor fresh = op.weight.detach().clone().set_requires_grad(true);
    op.run(fresh).backward(c);
    g = fresh.grad();
  }
  expect_preset_grad(p, accumulated(p.prior, g), what);
  if (dt == DType::bf16) {
    // The plain path rounds the gradient to bf16 before widening it: somewhere that gives other bits.
    Tensor fresh = op.weight.detach().clone().set_requires_grad(true);
    op.run(fresh).backward(c);
    ASSERT_EQ(fresh.grad().dtype(), DType::bf16) << what;
    const std::vector<double> rounded = host(accumulated(p.prior, fresh.grad())), got = host(p.grad);
    int differ = 0;
    for (size_t i = 0; i < got.size(); ++i) differ += got[i] != rounded[i];
    EXPECT_GT(differ, 0) << what << ": the bf16 weight gradient was rounded to bf16";
  }
  // The node handed the sink back (AccumulateGrad adds nothing), and a second backward adds again.
  PresetGrad p2 = with_preset_grad(op.weight, gdt, seed + 1);
  const std::vector<Tensor> grads = node_gradients_in_backward(op.run(p2.param), c);
  ASSERT_GT(grads.size(), op.weight_input) << what;
  EXPECT_TRUE(grads[op.weight_input].same(p2.param.grad())) << what << ": the node did not return the sink";
  expect_preset_grad(p2, accumulated(p2.prior, g), what + " (node)");
  op.run(p2.param).backward(c);
  expect_preset_grad(p2, accumulated(accumulated(p2.prior, g), g), what + " (twice)");
}

const DType kDtypes[] = {DType::f64, DType::f32, DType::bf16};

}  // namespace

TEST(WeightGradSink, RmsNorm) {
  uint64_t seed = 10;
  for (DType dt : kDtypes) {
    const Shape s{2, 5, 24};
    Tensor x = randn(s, seed++, DType::f64, 2.0).to(dt), c = randn(s, seed++).to(dt);
    Tensor w = rand_uniform({24}, seed++, 0.5, 1.5).to(dt);
    const double eps = 1e-6;
    WeightOp op{"rmsnorm", w, [&](const Tensor& p) { return rmsnorm(x, p, eps); },
                [&](const Tensor& dw) {
                  Tensor rstd = Tensor::empty({2, 5}, kernels::stat_dtype(dt));
                  kernels::rmsnorm_fwd(x, w, eps, Tensor::empty(s, dt), rstd);
                  kernels::rmsnorm_bwd(x, w, rstd, c, Tensor::empty(s, dt), dw);
                },
                1};
    check_weight_sink(op, c, seed++);
  }
}

TEST(WeightGradSink, ShortConv) {
  uint64_t seed = 20;
  for (DType dt : kDtypes)
    for (int64_t W : {4, 3}) {
      const Shape s{2, 37, 24};
      Tensor x = randn(s, seed++).to(dt), c = randn(s, seed++).to(dt);
      Tensor w = randn({24, W}, seed++, DType::f64, 0.5).to(dt);
      WeightOp op{"short_conv W" + std::to_string(W), w, [&](const Tensor& p) { return short_conv(x, p, true); },
                  [&](const Tensor& dw) { kernels::short_conv_bwd(x, w, true, c, Tensor::empty(s, dt), dw); }, 1};
      check_weight_sink(op, c, seed++);
    }
}

TEST(WeightGradSink, ShortConvL2Norm) {
  uint64_t seed = 30;
  for (DType dt : kDtypes) {
    const Shape s{2, 19, 32};
    const int64_t group = 8;
    const double eps = 1e-6;
    Tensor x = randn(s, seed++).to(dt), c = randn(s, seed++).to(dt);
    Tensor w = randn({32, 4}, seed++, DType::f64, 0.5).to(dt);
    WeightOp op{"short_conv_l2norm", w, [&](const Tensor& p) { return short_conv_l2norm(x, p, true, group, eps); },
                [&](const Tensor& dw) {
                  Tensor y = Tensor::empty(s, dt), rnorm = Tensor::empty({2, 19, 4}, kernels::stat_dtype(dt));
                  kernels::short_conv_l2norm_fwd(x, w, true, group, eps, y, rnorm);
                  kernels::short_conv_l2norm_bwd(x, w, true, group, y, rnorm, c, Tensor::empty(s, dt), dw);
                },
                1};
    check_weight_sink(op, c, seed++);
  }
}

TEST(WeightGradSink, Embedding) {
  uint64_t seed = 40;
  for (DType dt : kDtypes) {
    const int64_t V = 11, D = 24;
    Tensor ids = random_ids({3, 7}, V - 2, seed++);  // 21 draws from 9 ids: repeats, and ids no token uses
    Tensor c = randn({3, 7, D}, seed++).to(dt);
    Tensor w = randn({V, D}, seed++).to(dt);
    WeightOp op{"embedding", w, [&](const Tensor& p) { return embedding(p, ids); },
                [&](const Tensor& dw) {
                  dw.zero_();
                  kernels::embedding_bwd(ids, c, dw);
                },
                0};
    check_weight_sink(op, c, seed++);
  }
}

TEST(WeightGradSink, RmsNormGate) {
  uint64_t seed = 80;
  for (DType dt : kDtypes) {
    const Shape s{2, 5, 24};
    const double eps = 1e-6;
    Tensor x = randn(s, seed++, DType::f64, 2.0).to(dt), z = randn(s, seed++).to(dt), c = randn(s, seed++).to(dt);
    Tensor w = rand_uniform({24}, seed++, 0.5, 1.5).to(dt);
    WeightOp op{"rmsnorm_gate", w, [&](const Tensor& p) { return rmsnorm_gate(x, p, z, eps); },
                [&](const Tensor& dw) {
                  Tensor rstd = Tensor::empty({2, 5}, kernels::stat_dtype(dt));
                  kernels::norm_gate_fwd(x, z, w, eps, Tensor::empty(s, dt), rstd);
                  kernels::norm_gate_bwd(x, z, w, rstd, c, Tensor::empty(s, dt), Tensor::empty(s, dt), dw);
                },
                1};
    check_weight_sink(op, c, seed++);
  }
}

TEST(WeightGradSink, MixNormGateBothGammas) {
  // The output mixing's two norm weights (node inputs 4 and 5), each with a preset .grad: both get the plain path's
  // bits (bf16 data: the kernel's f32 gradients, then the add), the node returns both sinks, a second backward adds
  // again.
  uint64_t seed = 90;
  for (DType dt : kDtypes) {
    const std::string what = "mix_norm_gate " + std::string(dtype_name(dt));
    const DType gdt = dt == DType::bf16 ? DType::f32 : dt;
    const Shape s{2, 5, 3, 16}, ws{2, 5, 3, 2}, rows{2, 5, 3};
    const double eps = 1e-6;
    Tensor og = randn(s, seed++).to(dt), oa = randn(s, seed++, DType::f64, 3.0).to(dt);
    Tensor wl = randn(ws, seed++).to(dt), z = randn(s, seed++).to(dt), c = randn(s, seed++).to(dt);
    Tensor gg = rand_uniform({16}, seed++, 0.5, 1.5).to(dt), ga = rand_uniform({16}, seed++, 0.5, 1.5).to(dt);
    auto run = [&](const Tensor& pg, const Tensor& pa) { return mix_norm_gate(og, oa, wl, z, pg, pa, eps); };
    // The plain gradients: the kernel into fresh tensors of .grad's dtype (f32 for bf16 data: the sink's reference;
    // in f32 and f64 the plain op's own path, checked below).
    Tensor dgg = Tensor::empty({16}, gdt), dga = Tensor::empty({16}, gdt);
    {
      Tensor rg = Tensor::empty(rows, kernels::stat_dtype(dt)), ra = Tensor::empty(rows, kernels::stat_dtype(dt));
      kernels::mix_norm_gate_fwd(og, oa, wl, z, gg, ga, eps, Tensor::empty(s, dt), rg, ra);
      auto e = [&](const Shape& sh) { return Tensor::empty(sh, dt); };
      kernels::mix_norm_gate_bwd(og, oa, wl, z, gg, ga, rg, ra, c, e(s), e(s), e(ws), e(s), dgg, dga);
    }
    Tensor fg = gg.detach().clone().set_requires_grad(true), fa = ga.detach().clone().set_requires_grad(true);
    run(fg, fa).backward(c);
    if (dt != DType::bf16) {
      expect_bits(fg.grad(), dgg, what + " plain dgamma_g");
      expect_bits(fa.grad(), dga, what + " plain dgamma_a");
    }
    PresetGrad pg = with_preset_grad(gg, gdt, seed++), pa = with_preset_grad(ga, gdt, seed++);
    run(pg.param, pa.param).backward(c);
    expect_preset_grad(pg, accumulated(pg.prior, dgg), what + " gamma_g");
    expect_preset_grad(pa, accumulated(pa.prior, dga), what + " gamma_a");
    if (dt == DType::bf16) {  // the plain path's bf16 rounding would give other bits somewhere
      ASSERT_EQ(fg.grad().dtype(), DType::bf16) << what;
      const std::vector<double> rounded = host(accumulated(pg.prior, fg.grad())), got = host(pg.grad);
      int differ = 0;
      for (size_t i = 0; i < got.size(); ++i) differ += got[i] != rounded[i];
      EXPECT_GT(differ, 0) << what << ": dgamma_g was rounded to bf16";
    }
    PresetGrad pg2 = with_preset_grad(gg, gdt, seed++), pa2 = with_preset_grad(ga, gdt, seed++);
    const std::vector<Tensor> grads = node_gradients_in_backward(run(pg2.param, pa2.param), c);
    ASSERT_EQ(grads.size(), 6u) << what;
    EXPECT_TRUE(grads[4].same(pg2.param.grad())) << what << ": the node did not return gamma_g's sink";
    EXPECT_TRUE(grads[5].same(pa2.param.grad())) << what << ": the node did not return gamma_a's sink";
    expect_preset_grad(pg2, accumulated(pg2.prior, dgg), what + " gamma_g (node)");
    expect_preset_grad(pa2, accumulated(pa2.prior, dga), what + " gamma_a (node)");
    run(pg2.param, pa2.param).backward(c);
    expect_preset_grad(pg2, accumulated(accumulated(pg2.prior, dgg), dgg), what + " gamma_g (twice)");
    expect_preset_grad(pa2, accumulated(accumulated(pa2.prior, dga), dga), what + " gamma_a (twice)");
  }
}

TEST(WeightGradSink, MixNormGateOneGammaIsLeftToAccumulateGrad) {
  // The kernel has one accumulate flag for both gammas: where only gamma_g is a parameter (gamma_a a constant), or
  // both gammas are one parameter, the op makes fresh gradients and AccumulateGrad adds them, as before the sinks
  // (bf16 data: the bf16 gradient widened).
  uint64_t seed = 100;
  for (DType dt : kDtypes) {
    const std::string what = "mix_norm_gate " + std::string(dtype_name(dt));
    const DType gdt = dt == DType::bf16 ? DType::f32 : dt;
    const Shape s{3, 2, 8}, ws{3, 2, 2};
    Tensor og = randn(s, seed++).to(dt), oa = randn(s, seed++).to(dt), wl = randn(ws, seed++).to(dt);
    Tensor z = randn(s, seed++).to(dt), c = randn(s, seed++).to(dt);
    Tensor gg = rand_uniform({8}, seed++, 0.5, 1.5).to(dt), ga = rand_uniform({8}, seed++, 0.5, 1.5).to(dt);
    {
      Tensor fresh = gg.detach().clone().set_requires_grad(true);
      mix_norm_gate(og, oa, wl, z, fresh, ga, 1e-6).backward(c);
      PresetGrad p = with_preset_grad(gg, gdt, seed++);
      mix_norm_gate(og, oa, wl, z, p.param, ga, 1e-6).backward(c);
      expect_preset_grad(p, accumulated(p.prior, fresh.grad()), what + " gamma_g alone");
      PresetGrad p2 = with_preset_grad(gg, gdt, seed++);
      const std::vector<Tensor> grads = node_gradients_in_backward(mix_norm_gate(og, oa, wl, z, p2.param, ga, 1e-6), c);
      ASSERT_EQ(grads.size(), 6u) << what;
      EXPECT_FALSE(grads[4].same(p2.param.grad())) << what << ": gamma_g alone got a sink";
      EXPECT_EQ(grads[4].dtype(), dt) << what;
      expect_bits(p2.grad, p2.prior, what + " gamma_g alone: the node left .grad to AccumulateGrad");
    }
    {
      Tensor fresh = gg.detach().clone().set_requires_grad(true);
      mix_norm_gate(og, oa, wl, z, fresh, fresh, 1e-6).backward(c);
      PresetGrad p = with_preset_grad(gg, gdt, seed++);
      mix_norm_gate(og, oa, wl, z, p.param, p.param, 1e-6).backward(c);
      expect_preset_grad(p, accumulated(p.prior, fresh.grad()), what + " one parameter for both");
    }
  }
}

TEST(WeightGradSink, ToDtypeOfAParameter) {
  // A parameter cast for its use: its gradient is added (and cast) straight into its .grad. f32 -> bf16 (a master
  // weight used in bf16) and f64 -> f64 (a copy) give the plain path's bits; a bf16 parameter with an f32 .grad cast
  // to f32 (the router weight of a bf16 run) gets the f32 gradient itself, not its bf16 rounding.
  uint64_t seed = 50;
  struct Case {
    DType param, to, grad;
  };
  for (const Case& k : {Case{DType::f32, DType::bf16, DType::f32}, Case{DType::f64, DType::f64, DType::f64},
                        Case{DType::f32, DType::f64, DType::f32}, Case{DType::bf16, DType::f32, DType::f32}}) {
    const std::string what = "to_dtype " + std::string(dtype_name(k.param)) + " -> " + std::string(dtype_name(k.to));
    Tensor w = randn({6, 9}, seed++).to(k.param), c = randn({6, 9}, seed++).to(k.to);
    PresetGrad p = with_preset_grad(w, k.grad, seed++);
    to_dtype(p.param, k.to).backward(c);
    // The plain path: the gradient cast back to the parameter's dtype, then AccumulateGrad's add; for the bf16
    // parameter, the f32 gradient without that rounding.
    const Tensor g = k.param == DType::bf16 ? c : c.to(k.param);
    expect_preset_grad(p, accumulated(p.prior, g), what);
    PresetGrad p2 = with_preset_grad(w, k.grad, seed++);
    const std::vector<Tensor> grads = node_gradients_in_backward(to_dtype(p2.param, k.to), c);
    ASSERT_EQ(grads.size(), 1u) << what;
    EXPECT_TRUE(grads[0].same(p2.param.grad())) << what << ": the node did not return the sink";
    expect_preset_grad(p2, accumulated(p2.prior, g), what + " (node)");
  }
}

TEST(WeightGradSink, NotOfferedWhereTheKernelCannotWriteTheGrad) {
  // An f32 weight with an f64 .grad (no kernel writes f64 from f32 data): the op makes its own gradient and
  // AccumulateGrad adds it, as before.
  Tensor x = randn({3, 8}, 60).to(DType::f32), c = randn({3, 8}, 61).to(DType::f32);
  PresetGrad p = with_preset_grad(rand_uniform({8}, 62, 0.5, 1.5).to(DType::f32), DType::f64, 63);
  const std::vector<Tensor> grads = node_gradients_in_backward(rmsnorm(x, p.param, 1e-6), c);
  ASSERT_EQ(grads.size(), 2u);
  EXPECT_FALSE(grads[1].same(p.param.grad()));
  EXPECT_EQ(grads[1].dtype(), DType::f32);
  expect_bits(p.grad, p.prior, "an f64 .grad is left to AccumulateGrad");
}

namespace {

// u = x (a copy) whose backward records the data pointer of the gradient reaching u, and passes it on.
Tensor pointer_probe(const Tensor& x, const void** reached) {
  Tensor u = x.detach().clone();
  record("pointer_probe", {x}, {&u}, [reached](std::vector<Tensor>& g) -> std::vector<Tensor> {
    *reached = g[0].data_ptr();
    return {g[0]};
  });
  return u;
}

// z = u (a copy) whose backward sends 3 dz back to u and records where that gradient lives (u's pending gradient
// until the other uses of u add theirs).
Tensor pending_probe(const Tensor& u, const void** sent) {
  Tensor z = u.detach().clone();
  record("pending_probe", {u}, {&z}, [sent](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor d = mul_scalar(g[0].detach(), 3.0);
    *sent = d.data_ptr();
    return {d};
  });
  return z;
}

}  // namespace

TEST(InputGradSink, ChunkMeanPoolAddsIntoItsInputsPendingGradient) {
  // u feeds the pool and another op; the other op's backward runs first (the engine's order for add(p, z)), so the
  // pool adds its dx into u's pending gradient in place: the gradient reaching u is that very tensor, with the bits
  // of the plain dx added by the engine.
  uint64_t seed = 70;
  for (DType dt : kDtypes) {
    const std::string what = "chunk_mean_pool " + std::string(dtype_name(dt));
    const int64_t B = 2, T = 13, d = 8, C = 4, NC = (T + C - 1) / C;
    Tensor x = randn({B, T, d}, seed++).to(dt).set_requires_grad(true);
    Tensor c = randn({B, NC, d}, seed++).to(dt);
    const void* sent = nullptr;
    const void* reached = nullptr;
    {
      Tensor u = pointer_probe(x, &reached);
      add(sum(mul(chunk_mean_pool(u, C), c)), sum(pending_probe(u, &sent))).backward();
    }
    EXPECT_TRUE(sent != nullptr && reached == sent) << what << ": the pool's dx did not go into the pending gradient";
    Tensor other = Tensor::full({B, T, d}, 3.0, dt), dx = Tensor::empty({B, T, d}, dt);
    kernels::chunk_mean_pool_bwd(c, C, dx);
    Tensor want = Tensor::empty({B, T, d}, dt);
    kernels::binary_fwd(kernels::BinaryOp::Add, other, dx, want);
    expect_bits(x.grad(), want, what);
  }
}
