#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "tests/data/data_test_util.h"

namespace natsl {
namespace {

using testing::expect_input_error;
using testing::TempDir;

// Shard s holds the ids s * 100000 + i, i = 0..n-1, so every token names its shard and position.
std::vector<std::string> numbered_shards(const TempDir& dir, const std::vector<int64_t>& sizes) {
  std::vector<std::string> paths;
  for (size_t s = 0; s < sizes.size(); ++s) {
    std::vector<uint32_t> t(static_cast<size_t>(sizes[s]));  // not size_t(...): clang parses that as a declaration
    for (int64_t i = 0; i < sizes[s]; ++i) t[size_t(i)] = uint32_t(s * 100000 + i);
    char name[32];
    std::snprintf(name, sizeof name, "n%zu.bin", s);
    paths.push_back(dir.file(name));
    write_shard(paths.back(), t, 4, 0);
  }
  return paths;
}

std::vector<int32_t> values(const Tensor& t) { return t.to_vector<int32_t>(); }

TEST(TokenWindowLoader, RowsAreContiguousWindowsOfOneShard) {
  TempDir dir;
  const std::vector<int64_t> sizes = {40, 7, 200};  // the 7-token shard is shorter than a window
  auto paths = numbered_shards(dir, sizes);
  const LoaderOptions o{.batch_size = 5, .seq_len = 9};
  TokenWindowLoader loader(paths, o);
  EXPECT_EQ(loader.total_tokens(), 247);
  for (int64_t step = 0; step < 50; ++step) {
    Batch b = loader.next(step);
    ASSERT_EQ(b.inputs.shape(), (Shape{5, 9}));
    ASSERT_EQ(b.targets.shape(), (Shape{5, 9}));
    auto in = values(b.inputs), tg = values(b.targets);
    for (int64_t r = 0; r < 5; ++r) {
      const int32_t first = in[size_t(r * 9)];
      const int64_t shard = first / 100000, pos = first % 100000;
      ASSERT_NE(shard, 1) << "a window from a shard shorter than seq_len + 1";
      ASSERT_LE(pos + 10, sizes[size_t(shard)]);
      for (int64_t t = 0; t < 9; ++t) {
        ASSERT_EQ(in[size_t(r * 9 + t)], first + t);
        ASSERT_EQ(tg[size_t(r * 9 + t)], first + t + 1);
      }
    }
  }
}

TEST(TokenWindowLoader, StartsAreUniformOverAllValidStarts) {
  TempDir dir;
  auto paths = numbered_shards(dir, {30, 60});  // T = 9: 21 and 51 valid starts
  const LoaderOptions o{.batch_size = 16, .seq_len = 9};
  TokenWindowLoader loader(paths, o);
  std::map<std::pair<size_t, int64_t>, int> count;
  const int steps = 500;
  for (int s = 0; s < steps; ++s)
    for (int64_t b = 0; b < 16; ++b) ++count[loader.window_start(s, b)];
  EXPECT_EQ(count.size(), 72u);  // every valid start is drawn, nothing else
  const double expected = steps * 16.0 / 72.0, sigma = std::sqrt(expected);
  int in_first = 0;
  for (auto& [k, c] : count) {
    EXPECT_LT(std::abs(c - expected), 5 * sigma) << k.first << ":" << k.second;
    if (k.first == 0) in_first += c;
  }
  EXPECT_NEAR(in_first / (steps * 16.0), 21.0 / 72.0, 0.02);
}

TEST(TokenWindowLoader, DeterministicInSeedStepAndRank) {
  TempDir dir;
  auto paths = numbered_shards(dir, {5000, 3000});
  const LoaderOptions o{.batch_size = 4, .seq_len = 16, .seed = 11};
  TokenWindowLoader a(paths, o), b(paths, o);
  EXPECT_EQ(values(a.next(7).inputs), values(b.next(7).inputs));
  EXPECT_EQ(values(a.next(7).inputs), values(a.next(7).inputs));
  EXPECT_NE(values(a.next(7).inputs), values(a.next(8).inputs));
  LoaderOptions other_seed = o;
  other_seed.seed = 12;
  EXPECT_NE(values(a.next(7).inputs), values(TokenWindowLoader(paths, other_seed).next(7).inputs));

  // Two ranks of 4 rows draw different windows, and together they are the 8-row single-rank batch.
  LoaderOptions r0 = o, r1 = o, whole = o;
  r0.world_size = r1.world_size = 2;
  r1.rank = 1;
  whole.batch_size = 8;
  auto v0 = values(TokenWindowLoader(paths, r0).next(3).inputs);
  auto v1 = values(TokenWindowLoader(paths, r1).next(3).inputs);
  EXPECT_NE(v0, v1);
  std::vector<int32_t> joined = v0;
  joined.insert(joined.end(), v1.begin(), v1.end());
  EXPECT_EQ(joined, values(TokenWindowLoader(paths, whole).next(3).inputs));
}

TEST(TokenWindowLoader, StateRestoreGivesTheSameNextBatch) {
  TempDir dir;
  auto paths = numbered_shards(dir, {5000, 3000});
  const LoaderOptions o{.batch_size = 3, .seq_len = 12, .seed = 5};
  TokenWindowLoader a(paths, o);
  for (int s = 0; s < 4; ++s) a.next(s);
  const nlohmann::json st = nlohmann::json::parse(a.state().dump());  // through text, as a checkpoint does
  EXPECT_EQ(st.at("last_step"), 3);
  TokenWindowLoader b(paths, o);
  b.load_state(st);
  EXPECT_EQ(b.state(), a.state());
  Batch na = a.next(4), nb = b.next(4);
  EXPECT_EQ(values(na.inputs), values(nb.inputs));
  EXPECT_EQ(values(na.targets), values(nb.targets));

  LoaderOptions changed = o;
  changed.seed = 6;
  expect_input_error([&] { TokenWindowLoader(paths, changed).load_state(st); }, {"seed", "5", "6"});
  changed = o;
  changed.seq_len = 13;
  expect_input_error([&] { TokenWindowLoader(paths, changed).load_state(st); }, {"seq_len"});
  // Same number of tokens, different contents.
  write_shard(paths[1], std::vector<uint32_t>(3000, 1), 4, 0);
  expect_input_error([&] { TokenWindowLoader(paths, o).load_state(st); }, {"n1.bin", "different contents"});
}

TEST(TokenWindowLoader, BadDataIsRefusedAtStart) {
  TempDir dir;
  auto paths = numbered_shards(dir, {20, 30});
  LoaderOptions o;
  o.seq_len = 30;  // needs 31 tokens in one shard
  expect_input_error([&] { TokenWindowLoader(paths, o); }, {"n0.bin", "seq_len + 1 = 31"});
  o.seq_len = 8;
  expect_input_error([&] { TokenWindowLoader({paths[0], dir.file("gone.bin")}, o); }, {"gone.bin", "does not exist"});
  o.vocab_size = 1000;  // shard 1 holds ids 100000..100029
  expect_input_error([&] { TokenWindowLoader(paths, o); }, {"n1.bin", "100029", "vocab_size is 1000"});
  write_shard(dir.file("v.bin"), std::vector<uint32_t>(50, 3), 2, 258);
  o.vocab_size = 256;
  expect_input_error([&] { TokenWindowLoader({dir.file("v.bin")}, o); }, {"v.bin", "258"});
  o.vocab_size = 258;
  EXPECT_EQ(TokenWindowLoader({dir.file("v.bin")}, o).vocab_size(), 258);
}

// Issue 12: the recorded vocab_size is not enough; every shard's real largest id is checked against the
// model's vocab_size before training, for the training and the validation loader alike.
TEST(TokenWindowLoader, TokenIdsAboveTheModelVocabAreRefusedAtStart) {
  TempDir dir;
  std::vector<uint32_t> t(64, 7);
  t[40] = 300;
  write_shard(dir.file("ok.bin"), std::vector<uint32_t>(64, 5), 2, 258);
  write_shard(dir.file("unrecorded.bin"), t, 2, 0);  // vocab not recorded, holds 300
  testing::write_bytes(dir.file("v1.bin"), testing::shard_bytes(1, 2, t, 0));  // an old shard: scanned at open
  testing::write_bytes(dir.file("lying.bin"), testing::shard_bytes(1, 2, t, 258));  // says 258, holds 300
  LoaderOptions o;
  o.seq_len = 8;
  o.vocab_size = 258;
  ValidationOptions vo;
  vo.seq_len = 8;
  vo.vocab_size = 258;
  for (const char* name : {"unrecorded.bin", "v1.bin"}) {
    const std::vector<std::string> paths = {dir.file("ok.bin"), dir.file(name)};
    expect_input_error([&] { TokenWindowLoader(paths, o); }, {name, "token id 300", "index 40", "vocab_size is 258"});
    expect_input_error([&] { ValidationWindows(paths, vo); }, {name, "token id 300", "vocab_size is 258"});
  }
  expect_input_error([&] { TokenWindowLoader({dir.file("lying.bin")}, o); },
                     {"lying.bin", "token id 300", "index 40", "vocab_size 258"});
  o.vocab_size = 301;
  EXPECT_EQ(TokenWindowLoader({dir.file("unrecorded.bin"), dir.file("v1.bin")}, o).vocab_size(), 301);
  o.vocab_size = 0;  // no model vocabulary: the ids' own range
  EXPECT_EQ(TokenWindowLoader({dir.file("ok.bin"), dir.file("unrecorded.bin")}, o).vocab_size(), 301);
}

TEST(ValidationWindows, CoverEveryTokenOnceAcrossRanks) {
  TempDir dir;
  // T = 8: 17 tokens -> 2 full windows (the trailing 1-token window is dropped); 19 -> 2 full + 1 of 2
  // tokens; 5 -> one partial window.
  const std::vector<int64_t> sizes = {17, 19, 5};
  auto paths = numbered_shards(dir, sizes);
  const int world = 2;
  std::vector<int64_t> batches;
  std::multiset<int32_t> scored;  // targets over all ranks
  int64_t scored_expected = 0;
  for (int rank = 0; rank < world; ++rank) {
    ValidationOptions o;
    o.batch_size = 2;
    o.seq_len = 8;
    o.rank = rank;
    o.world_size = world;
    ValidationWindows v(paths, o);
    EXPECT_EQ(v.num_windows(), 6);
    scored_expected = v.scored_tokens();
    batches.push_back(v.num_batches());
    int64_t n = 0;
    while (auto b = v.next()) {
      ++n;
      auto in = values(b->inputs), tg = values(b->targets);
      for (size_t i = 0; i < tg.size(); ++i) {
        if (tg[i] == kIgnoreIndex) {
          EXPECT_EQ(in[i], 0);
          continue;
        }
        EXPECT_EQ(tg[i], in[i] + 1);  // the numbered shards make the next token id + 1
        scored.insert(tg[i]);
      }
    }
    EXPECT_EQ(n, v.num_batches());
    v.reset();
    EXPECT_TRUE(v.next().has_value());
  }
  EXPECT_EQ(batches[0], batches[1]);  // equal batch counts on every rank
  EXPECT_EQ(batches[0], 2);           // 6 windows / (2 rows * 2 ranks)
  std::multiset<int32_t> expected;
  for (size_t s = 0; s < sizes.size(); ++s)
    for (int64_t i = 1; i < sizes[s]; ++i) expected.insert(int32_t(s * 100000 + i));
  EXPECT_EQ(scored, expected);
  EXPECT_EQ(scored_expected, int64_t(expected.size()));
}

// Every evaluation scores the same tokens: batch i is a function of the shards and the shape alone, the same
// on a second pass and in another process (a fresh instance), whatever was read before.
TEST(ValidationWindows, EveryEvaluationSeesTheSameTokens) {
  TempDir dir;
  auto paths = numbered_shards(dir, {300, 41});
  ValidationOptions o;
  o.batch_size = 3;
  o.seq_len = 16;
  ValidationWindows first(paths, o);
  std::vector<std::vector<int32_t>> seen;
  while (auto b = first.next()) seen.push_back(values(b->targets));
  ASSERT_EQ(int64_t(seen.size()), first.num_batches());
  ASSERT_GT(seen.size(), 2u);
  EXPECT_NE(seen[0], seen[1]);
  first.reset();
  ValidationWindows fresh(paths, o);
  for (int64_t i = int64_t(seen.size()) - 1; i >= 0; --i) {  // in another order, too
    EXPECT_EQ(values(first.batch(i).targets), seen[size_t(i)]) << "batch " << i;
    EXPECT_EQ(values(fresh.batch(i).targets), seen[size_t(i)]) << "batch " << i;
  }
}

}  // namespace
}  // namespace natsl
