#include <gtest/gtest.h>

#include "core/flat_buffer.h"
#include "tests/test_util.h"

using namespace natsl;

TEST(FlatBuffer, ViewsTileOneBufferPerDtype) {
  FlatLayout L;
  int a = L.add("a", {3, 5}, DType::f32);
  int b = L.add("b", {7}, DType::bf16);
  int c = L.add("c", {130}, DType::f32);
  EXPECT_THROW(L.add("a", {1}, DType::f32), Error);
  EXPECT_EQ(L.entries()[size_t(c)].offset, 64);  // aligned after a's 15 elements
  EXPECT_EQ(L.total(DType::f32), 64 + 192);
  EXPECT_EQ(L.total(DType::bf16), 64);
  FlatBuffer buf(L, kCPU);
  EXPECT_EQ(buf.view(a).storage(), buf.flat(DType::f32).storage());
  EXPECT_EQ(buf.view(b).storage(), buf.flat(DType::bf16).storage());
  buf.view(c).fill_(2.0);
  auto flat = buf.flat(DType::f32).to_vector<float>();
  for (int i = 0; i < 64; ++i) EXPECT_EQ(flat[size_t(i)], 0.f);
  for (int i = 64; i < 64 + 130; ++i) EXPECT_EQ(flat[size_t(i)], 2.f);
  buf.zero_();
  for (float v : buf.view(c).to_vector<float>()) EXPECT_EQ(v, 0.f);
  // The same layout in another dtype (f32 moments for bf16 params).
  FlatBuffer m(L, kCPU, DType::f32);
  EXPECT_EQ(m.view(b).dtype(), DType::f32);
  EXPECT_EQ(m.view(b).shape(), (Shape{7}));
}

TEST(Errors, CheckNamesConditionAndPlace) {
  try {
    NATSL_CHECK(1 + 1 == 3, "arithmetic is off by ", 1);
    FAIL() << "no throw";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("arithmetic is off by 1"), std::string::npos) << m;
    EXPECT_NE(m.find("1 + 1 == 3"), std::string::npos) << m;
    EXPECT_NE(m.find("flat_buffer_test.cpp"), std::string::npos) << m;
    EXPECT_EQ(e.kind(), ErrorKind::Internal);
  }
  EXPECT_THROW(Device::parse("gpu"), InputError);
  EXPECT_EQ(Device::parse("cuda:3"), Device::cuda(3));
}

TEST(Allocator, CpuIsAlignedAndCounted) {
  int64_t before = memory_stats(kCPU).in_use;
  {
    Tensor t = Tensor::empty({1000}, DType::f64);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % 64, 0u);
    EXPECT_GE(memory_stats(kCPU).in_use, before + 8000);
  }
  EXPECT_EQ(memory_stats(kCPU).in_use, before);
}

TEST(Allocator, CudaOutOfMemoryNamesTheRequest) {
  NATSL_REQUIRE_GPU();
  try {
    Tensor t = Tensor::empty({int64_t(1) << 50}, DType::f32, Device::cuda(0));
    FAIL() << "allocating 4 PiB succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::OutOfMemory);
    EXPECT_NE(std::string(e.what()).find("asked for"), std::string::npos) << e.what();
  }
}
