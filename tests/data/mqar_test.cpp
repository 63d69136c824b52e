#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "core/config_key_error.h"
#include "data/synthetic.h"
#include "tests/data/data_test_util.h"

namespace natsl {
namespace {

using namespace testing;  // natsl::testing: tests/data/data_test_util.h

// Re-derives the example's structure from its tokens alone and checks every rule of the generator.
void check_example(const MqarOptions& o, const std::vector<int32_t>& in, const std::vector<int32_t>& tg) {
  const int64_t L = o.seq_len, V = o.vocab_size, k = o.num_kv_pairs, ctx = 2 * k * o.num_passes;
  ASSERT_EQ(int64_t(in.size()), L);
  ASSERT_EQ(int64_t(tg.size()), L);
  std::map<int32_t, int32_t> kv;
  std::set<int32_t> vals;
  for (int64_t i = 0; i < k; ++i) {
    const int32_t key = in[size_t(2 * i)], val = in[size_t(2 * i + 1)];
    ASSERT_GE(key, 1);
    ASSERT_LT(key, V / 2);
    ASSERT_GE(val, V / 2);
    ASSERT_LT(val, V);
    ASSERT_TRUE(kv.emplace(key, val).second) << "repeated key " << key;
    ASSERT_TRUE(vals.insert(val).second) << "repeated value " << val;
  }
  for (int64_t p = 1; p < o.num_passes; ++p)
    for (int64_t i = 0; i < 2 * k; ++i) ASSERT_EQ(in[size_t(2 * k * p + i)], in[size_t(i)]) << "pass " << p;
  std::set<int32_t> queried;
  int64_t answers = 0;
  for (int64_t t = 0; t < L; ++t) {
    if (tg[size_t(t)] == kIgnoreIndex) continue;
    ++answers;
    ASSERT_GE(t, ctx) << "an answer inside the key-value region";
    ASSERT_EQ((t - ctx) % 2, 0) << "queries sit at even offsets of the query region";
    auto it = kv.find(in[size_t(t)]);
    ASSERT_NE(it, kv.end()) << "answer position " << t << " does not hold a key";
    ASSERT_EQ(tg[size_t(t)], it->second) << "wrong value for key " << it->first;
    ASSERT_TRUE(queried.insert(it->first).second) << "key queried twice";
  }
  EXPECT_EQ(answers, k);
  for (int64_t t = 0; t < L; ++t) ASSERT_TRUE(in[size_t(t)] >= 0 && in[size_t(t)] < V);
  if (!o.random_non_queries) {
    int64_t nonzero = 0;
    for (int64_t t = ctx; t < L; ++t) nonzero += in[size_t(t)] != 0;
    EXPECT_EQ(nonzero, k) << "without random filler only the k queries are non-zero";
  }
}

TEST(Mqar, AnswersAreTheValuesOfTheQueriedKeys) {
  struct Cfg {
    int64_t V, L, k, passes;
    bool random;
  };
  for (Cfg c : {Cfg{8192, 64, 4, 1, true}, Cfg{8192, 128, 8, 1, false}, Cfg{8192, 256, 16, 1, true},
                Cfg{300, 64, 8, 2, false}, Cfg{67, 66, 11, 2, true}, Cfg{8192, 256, 64, 1, true}}) {
    MqarOptions o;
    o.vocab_size = c.V;
    o.seq_len = c.L;
    o.num_kv_pairs = c.k;
    o.num_passes = c.passes;
    o.random_non_queries = c.random;
    o.batch_size = 7;
    o.seed = uint64_t(c.L + c.k);
    MqarSource src(o);
    for (int64_t step = 0; step < 4; ++step) {
      Batch b = src.next(step);
      ASSERT_EQ(b.inputs.shape(), (Shape{7, c.L}));
      auto in = b.inputs.to_vector<int32_t>(), tg = b.targets.to_vector<int32_t>();
      for (int64_t r = 0; r < 7; ++r) {
        SCOPED_TRACE("V " + std::to_string(c.V) + " L " + std::to_string(c.L) + " k " + std::to_string(c.k) + " row " +
                     std::to_string(r));
        check_example(o, std::vector<int32_t>(in.begin() + r * c.L, in.begin() + (r + 1) * c.L),
                      std::vector<int32_t>(tg.begin() + r * c.L, tg.begin() + (r + 1) * c.L));
      }
    }
  }
}

// The first query gap is drawn with P(g) ∝ (g+1)^(a-1); later ones from the rest (numpy's sequential
// choice without replacement). Checks the first draw's law, and that the second never repeats it.
TEST(Mqar, GapDistributionFollowsThePowerLaw) {
  MqarOptions o;
  o.seq_len = 64;
  o.num_kv_pairs = 4;  // ctx 8, 28 slots
  o.random_non_queries = false;
  o.batch_size = 50;
  MqarSource src(o);
  std::vector<double> p(28);
  double z = 0;
  for (int g = 0; g < 28; ++g) z += p[size_t(g)] = std::pow(g + 1.0, o.power_a - 1.0);
  for (double& v : p) v /= z;
  std::vector<int> first_gap(28, 0);
  const int n = 6000;
  for (int s = 0; s < n / 50; ++s) {
    Batch b = src.next(s);
    auto in = b.inputs.to_vector<int32_t>();
    for (int r = 0; r < 50; ++r) {
      const int32_t key1 = in[size_t(r * 64)];  // the first key drawn is the first in the kv region
      for (int g = 0; g < 28; ++g)
        if (in[size_t(r * 64 + 8 + 2 * g)] == key1) ++first_gap[size_t(g)];
    }
  }
  for (int g : {0, 1, 2, 5}) {
    const double sd = std::sqrt(p[size_t(g)] * (1 - p[size_t(g)]) / n);
    EXPECT_NEAR(first_gap[size_t(g)] / double(n), p[size_t(g)], 4.5 * sd) << "gap " << g;
  }
  double tail_p = 0;
  int tail = 0;
  for (int g = 10; g < 28; ++g) tail_p += p[size_t(g)], tail += first_gap[size_t(g)];
  EXPECT_NEAR(tail / double(n), tail_p, 4.5 * std::sqrt(tail_p * (1 - tail_p) / n));
}

TEST(Mqar, KeysAndFillerAreUniform) {
  MqarOptions o;
  o.vocab_size = 1000;
  o.seq_len = 128;
  o.num_kv_pairs = 8;
  o.batch_size = 64;
  MqarSource src(o);
  double key_sum = 0, filler_sum = 0;
  int64_t keys = 0, filler = 0;
  for (int s = 0; s < 20; ++s) {
    Batch b = src.next(s);
    auto in = b.inputs.to_vector<int32_t>(), tg = b.targets.to_vector<int32_t>();
    for (int r = 0; r < 64; ++r) {
      for (int i = 0; i < 8; ++i) key_sum += in[size_t(r * 128 + 2 * i)], ++keys;
      for (int t = 17; t < 128; t += 2) filler_sum += in[size_t(r * 128 + t)], ++filler;  // odd query slots
    }
  }
  // Keys uniform on [1, 500): mean 250, sd 144; filler uniform on [0, 1000): mean 499.5, sd 289.
  EXPECT_NEAR(key_sum / double(keys), 250.0, 5 * 144 / std::sqrt(double(keys)));
  EXPECT_NEAR(filler_sum / double(filler), 499.5, 5 * 289 / std::sqrt(double(filler)));
}

TEST(Mqar, DeterministicInSeedStepRankAndStateRestores) {
  MqarOptions o;
  o.batch_size = 4;
  o.seed = 3;
  MqarSource a(o), b(o);
  EXPECT_EQ(a.next(9).inputs.to_vector<int32_t>(), b.next(9).inputs.to_vector<int32_t>());
  EXPECT_NE(a.next(9).inputs.to_vector<int32_t>(), a.next(10).inputs.to_vector<int32_t>());
  MqarOptions r1 = o, whole = o;
  r1.rank = 1;
  r1.world_size = 2;
  whole.batch_size = 8;
  auto w = MqarSource(whole).next(2).targets.to_vector<int32_t>();
  auto v1 = MqarSource(r1).next(2).targets.to_vector<int32_t>();
  EXPECT_NE(v1, std::vector<int32_t>(w.begin(), w.begin() + 4 * 64));
  EXPECT_EQ(v1, std::vector<int32_t>(w.begin() + 4 * 64, w.end()));

  a.next(41);
  MqarOptions other = o;
  other.num_kv_pairs = 8;
  expect_state_restores(a, 42, other, {"num_kv_pairs", "4", "8"});
}

TEST(Mqar, ZoologyPreconditionsAreInputErrors) {
  using C = ErrorCase<MqarOptions>;
  expect_source_errors<MqarSource>(MqarOptions{}, {
      C{[](MqarOptions& o) { o.seq_len = 63; }, {"mqar", "seq_len", "even"}},
      C{[](MqarOptions& o) { o.vocab_size = 64; }, {"vocab_size", "exceed seq_len"}},
      C{[](MqarOptions& o) { o.num_kv_pairs = 17; }, {"num_kv_pairs", "68", "exceeds seq_len 64"}},  // 2*17 + 2*17 > 64
  });
  MqarOptions o;
  o.num_kv_pairs = 16;
  EXPECT_NO_THROW(MqarSource{o});  // exactly fits: 64 == 64
}

// validate(MqarOptions) names the field at fault in key(), which the run config maps to its own key
// (data.mqar.*, train.seq_len, ...; tests/trainers/data_factory_test.cpp).
TEST(Mqar, PreconditionErrorsNameTheOptionField) {
  using C = FieldCase<MqarOptions>;
  expect_invalid_fields(MqarOptions{}, {
      C{[](MqarOptions& o) { o.seq_len = 63; }, "seq_len"},
      C{[](MqarOptions& o) { o.vocab_size = o.seq_len; }, "vocab_size"},
      C{[](MqarOptions& o) { o.num_kv_pairs = 0; }, "num_kv_pairs"},
      C{[](MqarOptions& o) { o.num_kv_pairs = 17; }, "num_kv_pairs"},  // 68 > 64
      C{[](MqarOptions& o) { o.num_passes = 0; }, "num_passes"},
      C{[](MqarOptions& o) { o.power_a = 0; }, "power_a"},
      C{[](MqarOptions& o) { o.batch_size = 0; }, "batch_size"},
  });
}

TEST(AnswerScore, CountsOnlyAnswerPositions) {
  const int32_t I = int32_t(kIgnoreIndex);
  Tensor targets = Tensor::from_vector<int32_t>({I, 5, I, 7, /**/ I, I, I, I, /**/ 1, 2, 3, I}, {3, 4});
  Tensor preds = Tensor::from_vector<int32_t>({9, 5, 9, 7, /**/ 0, 0, 0, 0, /**/ 1, 0, 3, 4}, {3, 4});
  AnswerScore s = score_answers(preds, targets);
  EXPECT_EQ(s.total, 5);
  EXPECT_EQ(s.correct, 4);
  EXPECT_EQ(s.rows, 2);
  EXPECT_EQ(s.rows_exact, 1);
  EXPECT_DOUBLE_EQ(s.accuracy(), 0.8);
  EXPECT_DOUBLE_EQ(s.exact_match(), 0.5);
}

}  // namespace
}  // namespace natsl
