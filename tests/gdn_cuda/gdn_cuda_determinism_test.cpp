// The CUDA GDN backward repeats its bits: the chunk-gradient kernels sum rows and columns of their tiles
// through per-warp slots added in a fixed order (gdn/tile.cuh), not through atomics, so every gradient
// (dq, dk, dv, dg, dbeta, dh0, dmask) is the same on every run: bf16 and f32, with and without a
// state-write mask.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tests/gdn/gdn_test_util.h"

namespace natsl::testing::gdn {
namespace {

const Device kGpu = Device::cuda(0);

Tensor gpu(const Tensor& t) { return t.defined() ? t.to(kGpu) : Tensor(); }

std::vector<std::vector<float>> backward_bits(const GdnArgs& a, const GdnInputs& in, const GdnSaved& saved,
                                              const Tensor& dout) {
  const GdnShape s = GdnShape::of(in.q, in.v, a);
  const DType D = in.q.dtype(), S = in.g.dtype();
  auto out = [&](const Shape& sh, DType dt) {
    Tensor t = Tensor::empty(sh, dt, kGpu);
    poison(t);
    return t;
  };
  GdnGrads g{out(in.q.shape(), D), out(in.k.shape(), D), out(in.v.shape(), D), out(in.g.shape(), S),
             out(in.beta.shape(), S), out({s.N, s.HV, s.K, s.V}, S),
             in.mask.defined() ? out(in.mask.shape(), S) : Tensor()};
  kernels::gdn_chunk_bwd(a, in, saved, dout, Tensor(), g);
  std::vector<std::vector<float>> bits;
  for (const Tensor* t : {&g.dq, &g.dk, &g.dv, &g.dg, &g.dbeta, &g.dh0, &g.dmask})
    if (t->defined()) bits.push_back(t->to(kCPU).to(DType::f32).to_vector<float>());
  return bits;
}

TEST(GdnCuda, BackwardRepeatsBitForBit) {
  NATSL_REQUIRE_GPU();
  const char* names[] = {"dq", "dk", "dv", "dg", "dbeta", "dh0", "dmask"};
  for (DType dt : {DType::bf16, DType::f32})
    for (MaskKind mask : {MaskKind::None, MaskKind::Continuous}) {
      GdnCase c;
      c.B = 2;
      c.T = 1000;
      c.H = c.HV = 3;
      c.K = 128;
      c.V = 256;
      c.h0 = true;
      c.mask = mask;
      c.seed = 91;
      SCOPED_TRACE(std::string(dtype_name(dt)) + (mask == MaskKind::None ? "" : " masked"));
      const GdnArgs a = args_of(c);
      const GdnInputs host = converted(make_inputs(c), dt);
      const GdnInputs in{gpu(host.q), gpu(host.k), gpu(host.v), gpu(host.g), gpu(host.beta), gpu(host.h0),
                         gpu(host.mask)};
      const GdnShape s = GdnShape::of(in.q, in.v, a);
      Tensor o = Tensor::empty(in.v.shape(), dt, kGpu);
      GdnSaved saved{Tensor::empty(in.g.shape(), in.g.dtype(), kGpu),
                     Tensor::empty({c.B, c.T, c.HV, kernels::kGdnChunk}, dt, kGpu)};
      kernels::gdn_chunk_fwd(a, in, o, Tensor(), saved);
      const Tensor dout = gpu(randn(in.v.shape(), 92).to(dt));
      const auto first = backward_bits(a, in, saved, dout);
      for (const auto& v : first)
        for (float x : v) ASSERT_TRUE(std::isfinite(x)) << "non-finite gradient (unwritten output?)";
      for (int rep = 0; rep < 3; ++rep) {
        const auto again = backward_bits(a, in, saved, dout);
        ASSERT_EQ(again.size(), first.size());
        for (size_t i = 0; i < first.size(); ++i)
          EXPECT_TRUE(again[i] == first[i]) << names[i] << " differs on rerun " << rep << " (s.NC = " << s.NC << ")";
      }
    }
}

}  // namespace
}  // namespace natsl::testing::gdn
