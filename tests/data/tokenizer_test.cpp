#include <gtest/gtest.h>

#include "data/shard.h"
#include "data/tokenize.h"
#include "data/tokenizer.h"
#include "tests/data/data_test_util.h"

namespace natsl {
namespace {

using namespace testing;  // natsl::testing: the helpers of data_test_util.h

std::vector<uint32_t> concat_shards(const std::vector<std::string>& paths, int64_t max_per_shard) {
  std::vector<uint32_t> all;
  for (const std::string& p : paths) {
    Shard s = Shard::open(p);
    EXPECT_LE(s.size(), max_per_shard) << p;
    EXPECT_EQ(s.header().vocab_size, ByteTokenizer::kVocabSize);
    EXPECT_EQ(s.header().token_bytes, 2u);
    auto v = s.read_all();
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}

std::vector<uint32_t> bytes_of(const std::string& s) {
  std::vector<uint32_t> v;
  for (unsigned char c : s) v.push_back(c);
  return v;
}

TEST(ByteTokenizer, RoundTripOnShakespeare) {
  const std::string text = read_bytes(shared_data("tinyshakespeare.txt")).substr(0, 4096);
  ASSERT_EQ(text.size(), 4096u);
  std::vector<uint32_t> ids = ByteTokenizer::encode(text, true, true);
  ASSERT_EQ(ids.size(), text.size() + 2);
  EXPECT_EQ(ids.front(), 256u);
  EXPECT_EQ(ids.back(), 257u);
  for (size_t i = 0; i < text.size(); ++i) ASSERT_EQ(ids[i + 1], uint32_t(static_cast<unsigned char>(text[i])));
  EXPECT_EQ(ByteTokenizer::decode(ids), text);
  // Every byte value, including NUL and the high half, survives.
  std::string all(256, '\0');
  for (int b = 0; b < 256; ++b) all[size_t(b)] = char(b);
  EXPECT_EQ(ByteTokenizer::decode(ByteTokenizer::encode(all)), all);
  EXPECT_THROW(ByteTokenizer::decode({65, 300}), Error);
}

TEST(Tokenize, TwoDocumentsSplitIntoShardsAndValidation) {
  TempDir dir;
  const std::string doc1 = read_bytes(shared_data("tinyshakespeare.txt")).substr(0, 3001);
  const std::string doc2_body = "Well. \xC3\xA9t\xC3\xA9 and more text\nsecond line\n";
  write_bytes(dir.file("a.txt"), doc1);
  write_bytes(dir.file("b.txt"), "\xEF\xBB\xBF" + doc2_body);  // with a UTF-8 BOM, which is dropped
  TokenizeOptions opt;
  opt.val_fraction = 0.1;
  opt.max_tokens_per_shard = 1000;
  TokenizeReport r = tokenize_files({dir.file("a.txt"), dir.file("b.txt")}, dir.file("out"), opt);

  const size_t cut1 = size_t(0.9 * double(doc1.size())), cut2 = size_t(0.9 * double(doc2_body.size()));
  std::vector<uint32_t> train{256}, val;
  auto add = [](std::vector<uint32_t>& v, const std::string& s) { auto b = bytes_of(s); v.insert(v.end(), b.begin(), b.end()); };
  add(train, doc1.substr(0, cut1));
  train.push_back(256);
  add(train, doc2_body.substr(0, cut2));
  add(val, doc1.substr(cut1));
  val.push_back(257);
  add(val, doc2_body.substr(cut2));
  val.push_back(257);

  EXPECT_EQ(r.documents, 2);
  EXPECT_EQ(r.train_tokens, int64_t(train.size()));
  EXPECT_EQ(r.val_tokens, int64_t(val.size()));
  EXPECT_EQ(r.train_shards.size(), (train.size() + 999) / 1000);
  EXPECT_EQ(r.train_shards[0], dir.file("out.train.000000.bin"));
  EXPECT_EQ(r.val_shards, std::vector<std::string>{dir.file("out.val.000000.bin")});
  EXPECT_EQ(concat_shards(r.train_shards, 1000), train);
  EXPECT_EQ(concat_shards(r.val_shards, 1000), val);
}

TEST(Tokenize, NoValidationWrapsEachDocument) {
  TempDir dir;
  write_bytes(dir.file("a.txt"), "abc");
  write_bytes(dir.file("b.txt"), "");
  TokenizeReport r = tokenize_files({dir.file("a.txt"), dir.file("b.txt")}, dir.file("o"), {});
  EXPECT_TRUE(r.val_shards.empty());
  EXPECT_EQ(concat_shards(r.train_shards, 1 << 30), (std::vector<uint32_t>{256, 97, 98, 99, 257, 256, 257}));
}

// The split of evals.md: tinyshakespeare train bytes [0, 1003854), validation [1003854, 1115394).
TEST(Tokenize, ShakespeareNinetyTenSplitMatchesTheProtocol) {
  TempDir dir;
  TokenizeOptions opt;
  opt.val_fraction = 0.1;
  TokenizeReport r = tokenize_files({shared_data("tinyshakespeare.txt")}, dir.file("shakes"), opt);
  EXPECT_EQ(r.train_tokens, 1 + 1003854);
  EXPECT_EQ(r.val_tokens, 111540 + 1);
  Shard val = Shard::open(r.val_shards.at(0));
  const std::string text = read_bytes(shared_data("tinyshakespeare.txt"));
  EXPECT_EQ(val.token(0), uint32_t(static_cast<unsigned char>(text[1003854])));
}

TEST(Tokenize, BadArgumentsAreInputErrors) {
  TempDir dir;
  write_bytes(dir.file("a.txt"), "abc");
  expect_input_error([&] { tokenize_files({dir.file("missing.txt")}, dir.file("o"), {}); }, {"missing.txt", "does not exist"});
  expect_input_error([&] { tokenize_files({dir.file("a.txt")}, dir.file("nodir/o"), {}); }, {"nodir", "does not exist"});
  expect_input_error([&] { tokenize_files({}, dir.file("o"), {}); }, {"at least one input"});
  TokenizeOptions bad;
  bad.val_fraction = 1.0;
  expect_input_error([&] { tokenize_files({dir.file("a.txt")}, dir.file("o"), bad); }, {"val_fraction"});
}

}  // namespace
}  // namespace natsl
