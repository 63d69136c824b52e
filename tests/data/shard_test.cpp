#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <regex>

#include "data/crc32.h"
#include "tests/data/data_test_util.h"
#include "data/random_stream.h"
#include "data/shard.h"

namespace natsl {
namespace {

using testing::expect_input_error;
using testing::read_bytes;
using testing::reseal_header;
using testing::shard_bytes;
using testing::TempDir;
using testing::write_bytes;

// Bit-at-a-time CRC-32 straight from the definition, the oracle for the table-driven version.
uint32_t crc32_bitwise(const std::string& s) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : s) {
    c ^= b;
    for (int i = 0; i < 8; ++i) c = (c & 1u) ? (c >> 1) ^ 0xEDB88320u : (c >> 1);
  }
  return ~c;
}

std::vector<uint32_t> random_tokens(size_t n, uint32_t bound, uint64_t seed) {
  RandomStream rs(seed);
  std::vector<uint32_t> v(n);
  for (auto& t : v) t = uint32_t(rs.below(bound));
  return v;
}

TEST(Crc32, CheckValueAndAgreesWithBitwiseDefinition) {
  const char* check = "123456789";
  EXPECT_EQ(crc32_update(0, check, 9), 0xCBF43926u);  // the published CRC-32 check value
  EXPECT_EQ(crc32_update(0, nullptr, 0), 0u);
  RandomStream rs(7);
  for (size_t n : {1, 7, 8, 9, 15, 16, 17, 63, 1000}) {
    std::string s(n, '\0');
    for (auto& c : s) c = char(rs.next_u32());
    EXPECT_EQ(crc32_update(0, s.data(), s.size()), crc32_bitwise(s)) << n;
    // Incremental update over two parts equals the whole.
    size_t k = n / 3;
    EXPECT_EQ(crc32_update(crc32_update(0, s.data(), k), s.data() + k, n - k), crc32_bitwise(s)) << n;
  }
}

TEST(ShardFormat, RoundTripU16AndU32) {
  TempDir dir;
  struct Case {
    uint32_t token_bytes, vocab, bound;
    size_t n;
  };
  for (Case c : {Case{2, 258, 258, 1001}, Case{2, 0, 65536, 777}, Case{4, 100000, 100000, 513},
                 Case{4, 0, 0xFFFFFFFFu, 3}, Case{2, 258, 258, 0}}) {
    std::vector<uint32_t> tokens = random_tokens(c.n, c.bound, c.n + c.token_bytes);
    if (c.n > 1) tokens[1] = c.bound - 1;  // the largest id must survive
    const std::string path = dir.file("s" + std::to_string(c.n) + ".bin");
    write_shard(path, tokens, c.token_bytes, c.vocab);
    EXPECT_EQ(std::filesystem::file_size(path), kShardHeaderBytes + c.n * c.token_bytes);
    EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

    Shard s = Shard::open(path);
    EXPECT_EQ(s.header().version, kShardVersion);
    EXPECT_EQ(s.header().token_bytes, c.token_bytes);
    EXPECT_EQ(s.header().vocab_size, c.vocab);
    EXPECT_EQ(s.size(), int64_t(c.n));
    EXPECT_EQ(s.read_all(), tokens);
    // The header bytes are the documented layout.
    const std::string bytes = read_bytes(path);
    EXPECT_EQ(bytes.substr(0, 8), "NATSLTOK");
    uint64_t count;
    std::memcpy(&count, bytes.data() + 16, 8);
    EXPECT_EQ(count, c.n);
    uint32_t crc;
    std::memcpy(&crc, bytes.data() + 24, 4);
    EXPECT_EQ(crc, crc32_bitwise(bytes.substr(kShardHeaderBytes)));
    uint32_t max_token, header_crc;
    std::memcpy(&max_token, bytes.data() + 32, 4);
    std::memcpy(&header_crc, bytes.data() + 36, 4);
    EXPECT_EQ(max_token, tokens.empty() ? 0u : *std::max_element(tokens.begin(), tokens.end()));
    EXPECT_EQ(s.max_token(), max_token);
    EXPECT_EQ(header_crc, crc32_bitwise(bytes.substr(0, 36)));
    if (c.n > 10 && c.bound <= 0x7FFFFFFF) {
      std::vector<int32_t> window(5);
      s.read(4, 5, window.data());
      for (int i = 0; i < 5; ++i) EXPECT_EQ(uint32_t(window[size_t(i)]), tokens[size_t(4 + i)]);
    }
  }
}

TEST(ShardFormat, WriterRejectsTokensThatDoNotFit) {
  TempDir dir;
  std::vector<uint32_t> big = {1, 70000};
  EXPECT_THROW(write_shard(dir.file("a.bin"), big, 2, 0), Error);
  std::vector<uint32_t> over_vocab = {1, 258};
  EXPECT_THROW(write_shard(dir.file("b.bin"), over_vocab, 2, 258), Error);
  EXPECT_EQ(token_bytes_for_vocab(258), 2u);
  EXPECT_EQ(token_bytes_for_vocab(65536), 2u);
  EXPECT_EQ(token_bytes_for_vocab(65537), 4u);
}

class ShardValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    path = dir.file("good.bin");
    write_shard(path, random_tokens(300, 258, 1), 2, 258);
    good = read_bytes(path);
  }
  std::string with(const std::string& bytes) {
    write_bytes(path, bytes);
    return path;
  }
  TempDir dir;
  std::string path, good;
};

TEST_F(ShardValidation, MissingFile) {
  expect_input_error([&] { Shard::open(dir.file("nope.bin")); }, {"nope.bin", "does not exist", "natsl tokenize"});
}

TEST_F(ShardValidation, TruncatedTokens) {
  expect_input_error([&] { Shard::open(with(good.substr(0, good.size() - 3))); },
                     {"good.bin", "truncated", "300 tokens", "Re-create"});
}

TEST_F(ShardValidation, TruncatedHeader) {
  expect_input_error([&] { Shard::open(with(good.substr(0, 20))); }, {"good.bin", "truncated", "header"});
}

TEST_F(ShardValidation, ExtraBytesAfterTokens) {
  expect_input_error([&] { Shard::open(with(good + "xx")); }, {"good.bin", "malformed", "300 tokens"});
}

TEST_F(ShardValidation, BadMagic) {
  std::string b = good;
  b.replace(0, 8, "GPT2TOKS");
  expect_input_error([&] { Shard::open(with(b)); }, {"good.bin", "not a natsl token shard", "GPT2TOKS", "NATSLTOK"});
  expect_input_error([&] { Shard::open(with("")); }, {"good.bin", "empty file"});
}

TEST_F(ShardValidation, BadVersionAndWidth) {
  std::string b = good;
  b[8] = 9;
  expect_input_error([&] { Shard::open(with(b)); }, {"good.bin", "version 9", "reads versions 1 and 2"});
  b = good;
  b[12] = 3;
  expect_input_error([&] { Shard::open(with(reseal_header(b))); }, {"good.bin", "token_bytes 3"});
}

TEST_F(ShardValidation, ChecksumMismatch) {
  std::string b = good;
  b[kShardHeaderBytes + 101] ^= 0x10;
  expect_input_error([&] { Shard::open(with(b)); }, {"good.bin", "corrupt", "CRC-32"});
  EXPECT_NO_THROW(Shard::open(path, /*verify_checksum=*/false));  // the opt-out skips only the CRC
}

TEST_F(ShardValidation, CorruptHeaderIsRefused) {
  std::string b = good;
  b[29] ^= 0x01;  // vocab_size 258 -> 259: only the header CRC can tell
  expect_input_error([&] { Shard::open(with(b)); }, {"good.bin", "corrupt header", "CRC-32"});
  expect_input_error([&] { Shard::open(with(b), /*verify_checksum=*/false); }, {"good.bin", "corrupt header"});
  expect_input_error([&] { Shard::open(with(good.substr(0, 36))); }, {"good.bin", "truncated", "40-byte header"});
}

// The scenario of issue 12: a header that says vocab 258 over a token 300 used to open (and train until
// that window was drawn). Every id is now checked against the recorded vocab_size at open.
TEST_F(ShardValidation, IdAtOrAboveTheRecordedVocabIsRefused) {
  std::vector<uint32_t> t = {256, 1, 2, 3, 300, 257, 7};
  expect_input_error([&] { Shard::open(with(shard_bytes(1, 2, t, 258))); },
                     {"good.bin", "token id 300", "index 4", "vocab_size 258"});
  expect_input_error([&] { Shard::open(with(shard_bytes(1, 2, t, 258)), /*verify_checksum=*/false); },
                     {"good.bin", "token id 300"});
  expect_input_error([&] { Shard::open(with(shard_bytes(2, 2, t, 258))); },
                     {"good.bin", "token id 300", "index 4", "vocab_size 258"});
  expect_input_error([&] { Shard::open(with(shard_bytes(2, 4, {258}, 258)), /*verify_checksum=*/false); },
                     {"good.bin", "token id 258", "index 0"});
  EXPECT_EQ(Shard::open(with(shard_bytes(1, 2, t, 301))).max_token(), 300u);
}

// A version-2 header's max_token must be the real one: it is what lets an unverified open skip the scan.
TEST_F(ShardValidation, RecordedMaxTokenIsChecked) {
  const std::vector<uint32_t> t = {5, 9, 300, 4};
  EXPECT_EQ(Shard::open(with(shard_bytes(2, 2, t, 0))).max_token(), 300u);
  expect_input_error([&] { Shard::open(with(shard_bytes(2, 2, t, 0, /*max_token=*/100))); },
                     {"good.bin", "largest token id is 300", "max_token 100"});
  // Without verification the header is trusted (its own CRC still guards it against flipped bits).
  EXPECT_EQ(Shard::open(with(shard_bytes(2, 2, t, 0, 100)), /*verify_checksum=*/false).max_token(), 100u);
}

// Shards written before version 2 (32-byte header, no max_token) keep working; their max id is found at open.
TEST_F(ShardValidation, ReadsVersion1Shards) {
  const std::vector<uint32_t> t = {256, 72, 105, 257, 70000, 3};
  for (bool verify : {true, false}) {
    Shard s = Shard::open(with(shard_bytes(1, 4, t, 0)), verify);
    EXPECT_EQ(s.header().version, 1u);
    EXPECT_EQ(s.header().header_bytes(), kShardHeaderBytesV1);
    EXPECT_EQ(s.read_all(), t);
    EXPECT_EQ(s.max_token(), 70000u);
  }
  Shard e = Shard::open(with(shard_bytes(1, 2, {}, 258)));
  EXPECT_EQ(e.size(), 0);
  EXPECT_EQ(e.max_token(), 0u);
}

TEST_F(ShardValidation, DescribeNamesTheFields) {
  std::string d = describe_shard(path);
  EXPECT_NE(d.find("300 tokens"), std::string::npos) << d;
  EXPECT_NE(d.find("u16"), std::string::npos) << d;
  EXPECT_NE(d.find("vocab_size 258"), std::string::npos) << d;
}

TEST(ShardPaths, FileDirectoryGlobAndNothing) {
  TempDir dir;
  for (const char* n : {"x.train.000001.bin", "x.train.000000.bin", "x.val.000000.bin"})
    write_shard(dir.file(n), std::vector<uint32_t>{1, 2, 3}, 2, 0);
  EXPECT_EQ(resolve_shard_paths(dir.file("x.val.000000.bin")), std::vector<std::string>{dir.file("x.val.000000.bin")});
  EXPECT_EQ(resolve_shard_paths(dir.file("x.train.*.bin")),
            (std::vector<std::string>{dir.file("x.train.000000.bin"), dir.file("x.train.000001.bin")}));
  EXPECT_EQ(resolve_shard_paths(dir.path()).size(), 3u);
  expect_input_error([&] { resolve_shard_paths(dir.file("y.*.bin")); }, {"y.*.bin", "no token shards"});
  expect_input_error([&] { resolve_shard_paths(dir.file("missing.bin")); }, {"missing.bin"});
}

// Runs the Python writer printed in docs/data-format.md and reads its output here.
TEST(ShardFormat, PythonWriterFromDocsIsReadable) {
  if (std::system("python3 -c 'import zlib' >/dev/null 2>&1") != 0) GTEST_SKIP() << "no python3 on this machine";
  const std::string doc = read_bytes(std::string(NATSL_SOURCE_DIR) + "/docs/data-format.md");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(doc, m, std::regex("```python\\n([\\s\\S]*?)```"))) << "no python block in the doc";
  TempDir dir;
  const std::string script = dir.file("w.py");
  write_bytes(script, m[1].str() +
                          "write_natsl_shard('" + dir.file("py16.bin") + "', [256, 72, 105, 257, 0, 65535], 0)\n"
                          "write_natsl_shard('" + dir.file("py32.bin") + "', [5, 70000, 4294967295], 0)\n"
                          "write_natsl_shard('" + dir.file("pyv.bin") + "', [1, 2], 100000)\n");
  ASSERT_EQ(std::system(("python3 " + script).c_str()), 0);
  Shard a = Shard::open(dir.file("py16.bin"));
  EXPECT_EQ(a.header().token_bytes, 2u);
  EXPECT_EQ(a.read_all(), (std::vector<uint32_t>{256, 72, 105, 257, 0, 65535}));
  Shard b = Shard::open(dir.file("py32.bin"));
  EXPECT_EQ(b.header().token_bytes, 4u);
  EXPECT_EQ(b.read_all(), (std::vector<uint32_t>{5, 70000, 4294967295u}));
  Shard c = Shard::open(dir.file("pyv.bin"));
  EXPECT_EQ(c.header().token_bytes, 4u);
  EXPECT_EQ(c.header().vocab_size, 100000u);
  EXPECT_EQ(a.header().version, kShardVersion);
  EXPECT_EQ(a.max_token(), 65535u);
  EXPECT_EQ(b.max_token(), 4294967295u);
  EXPECT_EQ(c.max_token(), 2u);
}

}  // namespace
}  // namespace natsl
