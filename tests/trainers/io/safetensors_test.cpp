// The hand-written safetensors writer/reader: exact bytes of a small file as the format specifies them,
// round trips of every dtype, and rejection of damaged files with the file named.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "trainers/io/safetensors.h"
#include "tests/test_util.h"
#include "tests/trainers/trainer_test_util.h"

namespace natsl {
namespace {

using testing::read_text;
using testing::TempDir;
using testing::write_text;

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char(uint8_t(v >> (8 * i)));
  return s;
}

std::string f32_bytes(std::vector<float> v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4); }

TEST(SafeTensors, KnownByteLayout) {
  TempDir dir;
  Tensor a = Tensor::from_vector<float>({1.0f, -2.0f}, {2});
  Tensor b = Tensor::from_vector<float>({0.5f}, {1, 1});
  write_safetensors(dir / "t.safetensors", {{"b", b}, {"a", a}});
  // Header: JSON with sorted keys, no spaces, padded with spaces to a multiple of 8; tensors in given order.
  std::string json = R"({"a":{"data_offsets":[4,12],"dtype":"F32","shape":[2]},)"
                     R"("b":{"data_offsets":[0,4],"dtype":"F32","shape":[1,1]}})";
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string expected = le64(json.size()) + json;
  expected += std::string("\x00\x00\x00\x3f", 4);                  // 0.5f
  expected += std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8);  // 1.0f, -2.0f
  EXPECT_EQ(read_text(dir / "t.safetensors"), expected);
}

TEST(SafeTensors, ReadsAHandMadeFile) {
  // A BF16 [3] tensor and an I32 scalar with metadata, written byte by byte from the format description.
  TempDir dir;
  std::string json = R"({"__metadata__":{"format":"pt"},"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},)"
                     R"("n":{"dtype":"I32","shape":[],"data_offsets":[6,10]}})";
  std::string data = std::string("\x80\x3f\x00\xc0\x00\x00", 6) + std::string("\x07\x00\x00\x00", 4);
  write_text(dir / "h.safetensors", le64(json.size()) + json + data);
  SafeTensorsReader r(dir / "h.safetensors");
  EXPECT_EQ(r.metadata().at("format"), "pt");
  Tensor w = r.read("w");
  EXPECT_EQ(w.dtype(), DType::bf16);
  EXPECT_EQ(w.to_vector<float>(), (std::vector<float>{1.0f, -2.0f, 0.0f}));
  Tensor n = r.read("n");
  EXPECT_EQ(n.dim(), 0);
  EXPECT_EQ(n.to_vector<int32_t>(), std::vector<int32_t>{7});
}

TEST(SafeTensors, RoundTripEveryDtype) {
  TempDir dir;
  std::vector<std::pair<std::string, Tensor>> ts = {
      {"x.f32", testing::randn({3, 5}, 1, DType::f32)},
      {"x.bf16", testing::randn({7}, 2, DType::bf16)},
      {"x.f64", testing::randn({2, 1, 3}, 3, DType::f64)},
      {"x.i32", Tensor::from_vector<int32_t>({1, -2, 3}, {3})},
      {"x.i64", Tensor::from_vector<int64_t>({int64_t(1) << 40}, {1})},
      {"x.u8", Tensor::from_vector<uint8_t>({255, 0}, {2})},
      {"x.empty", Tensor::empty({0, 4}, DType::f32)},
  };
  write_safetensors(dir / "r.safetensors", ts, {{"k", "v"}});
  SafeTensorsReader r(dir / "r.safetensors");
  EXPECT_EQ(r.entries().size(), ts.size());
  EXPECT_EQ(r.metadata().at("k"), "v");
  for (const auto& [name, t] : ts) {
    Tensor back = r.read(name);
    ASSERT_EQ(back.dtype(), t.dtype()) << name;
    ASSERT_EQ(back.shape(), t.shape()) << name;
    EXPECT_EQ(std::memcmp(back.data_ptr(), t.data_ptr(), t.nbytes()), 0) << name;
  }
  Tensor wrong = Tensor::empty({5, 3}, DType::f32);
  EXPECT_THROW(r.read_into("x.f32", wrong), InputError);
  EXPECT_THROW(r.read("absent"), InputError);
}

void expect_rejected(const std::string& path, const std::string& bytes, const std::string& why) {
  write_text(path, bytes);
  try {
    SafeTensorsReader r(path);
    ADD_FAILURE() << "accepted a bad file: " << why;
  } catch (const InputError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(path), std::string::npos) << m;
    EXPECT_NE(m.find(why), std::string::npos) << m;
  }
}

TEST(SafeTensors, RejectsDamagedFiles) {
  TempDir dir;
  const std::string p = dir / "bad.safetensors";
  std::string good_json = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::string good = le64(good_json.size()) + good_json + f32_bytes({1, 2});
  { SafeTensorsReader ok((write_text(p, good), p)); }
  expect_rejected(p, "abc", "only 3 bytes");
  expect_rejected(p, le64(1000) + "{}", "does not fit");
  expect_rejected(p, le64(4) + "{a:1", "not JSON");
  expect_rejected(p, good.substr(0, good.size() - 1), "truncated");
  std::string j = R"({"a":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})";
  expect_rejected(p, le64(j.size()) + j + f32_bytes({1, 2}), "unsupported dtype");
  j = R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})";
  expect_rejected(p, le64(j.size()) + j + f32_bytes({1, 2}), "does not match its shape");
  j = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  expect_rejected(p, le64(j.size()) + j + f32_bytes({1, 2}), "does not start where");
  j = R"({"a":{"dtype":"F32","shape":[2]}})";
  expect_rejected(p, le64(j.size()) + j + f32_bytes({1, 2}), "lacks dtype, shape or data_offsets");
  EXPECT_THROW(SafeTensorsReader(dir / "absent.safetensors"), InputError);
}

// Header numbers are untrusted: products that wrap around 2^64 (reported as 0 elements before the checked
// arithmetic) and dims that do not fit int64 are refused, not turned into tiny or negative shapes.
TEST(SafeTensors, RejectsShapesWhoseSizeOverflows) {
  TempDir dir;
  const std::string p = dir / "overflow.safetensors";
  auto file = [](const std::string& entry) {
    std::string j = "{\"a\":" + entry + "}";
    return le64(j.size()) + j;
  };
  // 2^32 x 2^32 elements = 2^64: wraps to 0, which matched the empty span [0, 0].
  expect_rejected(p, file(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]})"),
                  "element count overflows");
  expect_rejected(p, file(R"({"dtype":"U8","shape":[4611686018427387904,4,1],"data_offsets":[0,0]})"),
                  "element count overflows");
  // 2^62 F32 elements = 2^64 bytes: the element count fits, the byte count wraps to 0.
  expect_rejected(p, file(R"({"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]})"),
                  "byte count overflows");
  // A dim of 2^63 is not an int64 (it read back as a negative dim); with a 0 dim the bytes matched.
  expect_rejected(p, file(R"({"dtype":"U8","shape":[9223372036854775808,0],"data_offsets":[0,0]})"), "bad shape");
  // An end past the data region is named as such.
  expect_rejected(p, file(R"({"dtype":"U8","shape":[8],"data_offsets":[0,8]})") + "1234", "past the 4 data bytes");
}

}  // namespace
}  // namespace natsl
