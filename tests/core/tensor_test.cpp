#include <gtest/gtest.h>

#include "core/tensor.h"
#include "tests/test_util.h"

using namespace natsl;

TEST(Tensor, FactoriesAndMetadata) {
  Tensor t = Tensor::full({2, 3}, 1.5);
  EXPECT_EQ(t.shape(), (Shape{2, 3}));
  EXPECT_EQ(t.strides(), (Shape{3, 1}));
  EXPECT_EQ(t.numel(), 6);
  EXPECT_TRUE(t.is_contiguous());
  for (float v : t.to_vector<float>()) EXPECT_EQ(v, 1.5f);
  Tensor z = Tensor::zeros({4}, DType::i64);
  for (int64_t v : z.to_vector<int64_t>()) EXPECT_EQ(v, 0);
  EXPECT_FALSE(Tensor().defined());
  EXPECT_THROW(Tensor().shape(), Error);
}

TEST(Tensor, ViewsShareStorage) {
  std::vector<float> v(24);
  for (int i = 0; i < 24; ++i) v[i] = float(i);
  Tensor t = Tensor::from_vector(v, {2, 3, 4});
  Tensor r = t.view({6, 4});
  EXPECT_EQ(r.storage(), t.storage());
  Tensor tr = t.transpose(1, 2);  // [2, 4, 3]
  EXPECT_FALSE(tr.is_contiguous());
  EXPECT_EQ(tr.shape(), (Shape{2, 4, 3}));
  auto c = tr.contiguous().to_vector<float>();
  // element [b, i, j] of the transpose is t[b, j, i] = b*12 + j*4 + i
  for (int b = 0; b < 2; ++b)
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 3; ++j) EXPECT_EQ(c[b * 12 + i * 3 + j], float(b * 12 + j * 4 + i));
  Tensor s = t.slice(2, 1, 3);  // [2, 3, 2]
  auto sv = s.contiguous().to_vector<float>();
  EXPECT_EQ(sv[0], 1.f);
  EXPECT_EQ(sv[1], 2.f);
  EXPECT_EQ(sv[2], 5.f);
  // writing through a view changes the base
  s.fill_(-1.0);
  EXPECT_EQ(t.to_vector<float>()[1], -1.f);
  EXPECT_EQ(t.to_vector<float>()[0], 0.f);
  EXPECT_THROW(tr.view({24}), Error);
  EXPECT_EQ(tr.reshape({24}).numel(), 24);
  Tensor sel = t.select(0, 1);
  EXPECT_EQ(sel.shape(), (Shape{3, 4}));
  EXPECT_EQ(sel.to_vector<float>()[0], 12.f);
  Tensor p = t.permute({2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  EXPECT_EQ(p.contiguous().to_vector<float>()[1], 4.f);
  EXPECT_EQ(t.view({-1, 4}).shape(), (Shape{6, 4}));
  EXPECT_EQ(t.unsqueeze(0).shape(), (Shape{1, 2, 3, 4}));
  EXPECT_EQ(t.unsqueeze(3).squeeze(3).shape(), (Shape{2, 3, 4}));
}

TEST(Tensor, DtypeConversionRoundsBf16ToNearestEven) {
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1.0).
  Tensor t = Tensor::from_vector(std::vector<float>{1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -2.5f}, {3});
  auto b = t.to(DType::bf16).to_vector<float>();
  EXPECT_EQ(b[0], 1.0f);
  EXPECT_EQ(b[1], 1.0f + 4.0f / 256);
  EXPECT_EQ(b[2], -2.5f);
  auto i = t.to(DType::i32).to_vector<int32_t>();
  EXPECT_EQ(i[2], -2);
}

TEST(Tensor, ExpandIsBroadcastView) {
  Tensor t = Tensor::from_vector(std::vector<double>{1, 2, 3}, {3});
  Tensor e = t.expand({2, 3});
  EXPECT_EQ(e.strides(), (Shape{0, 1}));
  auto v = e.contiguous().to_vector<double>();
  EXPECT_EQ(v, (std::vector<double>{1, 2, 3, 1, 2, 3}));
  EXPECT_THROW(t.expand({2, 4}), Error);
}

TEST(Tensor, CudaRoundTrip) {
  NATSL_REQUIRE_GPU();
  Tensor t = natsl::testing::randn({5, 7}, 1, DType::f32);
  Tensor g = t.to(Device::cuda(0));
  EXPECT_TRUE(g.device().is_cuda());
  Tensor back = g.transpose(0, 1).contiguous().to(kCPU);
  EXPECT_EQ(back.to_vector<float>(), t.transpose(0, 1).contiguous().to_vector<float>());
  Tensor h = g.to(DType::bf16).to(kCPU);
  EXPECT_EQ(h.to_vector<float>(), t.to(DType::bf16).to_vector<float>());
}
