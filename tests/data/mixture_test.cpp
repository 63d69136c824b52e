// MixtureLoader (data/mixture.h): the integer bounds of the sources' shares, sampling proportions, determinism
// per seed and across rank splits, the checkpoint state and what a resume with changed data is told.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>

#include <nlohmann/json.hpp>

#include "data/mixture.h"
#include "tests/data/data_test_util.h"

namespace natsl {
namespace {

using testing::expect_input_error;
using testing::TempDir;

// Source s has one shard of `size` tokens with ids s * 10000 + i (i < 10000): a token names its source.
std::vector<MixtureSource> numbered_sources(const TempDir& dir, const std::vector<double>& weights, int64_t size = 500) {
  std::vector<MixtureSource> out;
  for (size_t s = 0; s < weights.size(); ++s) {
    std::vector<uint32_t> t(static_cast<size_t>(size));
    for (int64_t i = 0; i < size; ++i) t[size_t(i)] = uint32_t(s * 10000 + size_t(i));
    const std::string path = dir.file("src" + std::to_string(s) + ".bin");
    write_shard(path, t, 4, 0);
    out.push_back({"source " + std::to_string(s), {path}, weights[s]});
  }
  return out;
}

LoaderOptions options(int64_t batch_size, int64_t seq_len, uint64_t seed) {
  LoaderOptions o;
  o.batch_size = batch_size;
  o.seq_len = seq_len;
  o.seed = seed;
  return o;
}

std::vector<int32_t> values(const Tensor& t) { return t.to_vector<int32_t>(); }

TEST(MixtureBounds, AreTheNormalisedPrefixSumsTimesTwoToThe64) {
  const std::vector<std::string> names = {"a", "b", "c"};
  // Prefix sums 1/4 and 2/4 of 2^64, exactly.
  EXPECT_EQ(mixture_bounds({1.0, 1.0, 2.0}, names), (std::vector<uint64_t>{0, uint64_t(1) << 62, uint64_t(1) << 63}));
  // Only the ratios matter.
  EXPECT_EQ(mixture_bounds({3.0, 3.0, 6.0}, names), mixture_bounds({0.25, 0.25, 0.5}, names));
  EXPECT_EQ(mixture_bounds({7.0}, {"a"}), std::vector<uint64_t>{0});
  // 0.5 / 1.0 exactly: the first source owns [0, 2^63).
  EXPECT_EQ(mixture_bounds({0.5, 0.3, 0.2}, names)[1], uint64_t(1) << 63);
}

TEST(MixtureBounds, BadWeightsNameTheSource) {
  const std::vector<std::string> names = {"data.text.mix[0] 'x'", "data.text.mix[1] 'y'"};
  for (double w : {0.0, -1.0, std::nan(""), std::numeric_limits<double>::infinity()})
    expect_input_error([&] { mixture_bounds({1.0, w}, names); }, {"data.text.mix[1] 'y'", "finite number > 0"});
  // A weight so small against the other that its share of 2^64 is empty, first or last.
  expect_input_error([&] { mixture_bounds({1e-300, 1.0}, names); }, {"data.text.mix[0] 'x'", "too small"});
  expect_input_error([&] { mixture_bounds({1.0, 1e-300}, names); }, {"data.text.mix[1] 'y'", "too small"});
  expect_input_error([&] { mixture_bounds({1e308, 1e308}, names); }, {"weights sum to inf"});
}

// 3 sources with weights 0.5 / 0.3 / 0.2, 1250 steps of 16 rows = 20000 rows: each source's count n_k is
// within 3 binomial standard deviations of N p_k (|n_k - N p_k| <= 3 sqrt(N p_k (1 - p_k)): 212, 194, 170
// rows). Every row's tokens come from the source source_of_row names, as one window of its shard.
TEST(MixtureLoader, SamplingProportionsAreTheWeights) {
  TempDir dir;
  const std::vector<double> p = {0.5, 0.3, 0.2};
  MixtureLoader mix(numbered_sources(dir, p), options(16, 8, 3));
  const int64_t steps = 1250, N = steps * 16;
  for (int64_t s = 0; s < steps; ++s) {
    auto in = values(mix.next(s).inputs);
    for (int64_t r = 0; r < 16; ++r) {
      const int32_t first = in[size_t(r * 8)];
      ASSERT_EQ(size_t(first / 10000), mix.source_of_row(s, r)) << "step " << s << " row " << r;
      for (int64_t t = 1; t < 8; ++t) ASSERT_EQ(in[size_t(r * 8 + t)], first + t);
    }
  }
  const std::vector<int64_t>& n = mix.rows_served();
  ASSERT_EQ(n.size(), 3u);
  EXPECT_EQ(n[0] + n[1] + n[2], N);
  for (size_t k = 0; k < 3; ++k) {
    const double expected = double(N) * p[k], bound = 3.0 * std::sqrt(double(N) * p[k] * (1.0 - p[k]));
    EXPECT_LE(std::abs(double(n[k]) - expected), bound) << "source " << k << ": " << n[k] << " rows";
    EXPECT_NEAR(mix.share(k), p[k], 1e-15);
  }
}

TEST(MixtureLoader, DeterministicInSeedStepAndRank) {
  TempDir dir;
  auto sources = numbered_sources(dir, {2.0, 1.0});
  MixtureLoader a(sources, options(4, 16, 11)), b(sources, options(4, 16, 11));
  EXPECT_EQ(values(a.next(7).inputs), values(b.next(7).inputs));
  EXPECT_EQ(values(a.next(7).targets), values(b.next(7).targets));
  EXPECT_NE(values(a.next(7).inputs), values(a.next(8).inputs));
  EXPECT_NE(values(a.next(7).inputs), values(MixtureLoader(sources, options(4, 16, 12)).next(7).inputs));

  // Two ranks of 4 rows together are the 8-row single-rank batch, and every rank counts every row.
  LoaderOptions r0 = options(4, 16, 11), r1 = r0;
  r0.world_size = r1.world_size = 2;
  r1.rank = 1;
  MixtureLoader m0(sources, r0), m1(sources, r1), whole(sources, options(8, 16, 11));
  for (int64_t s = 0; s < 5; ++s) {
    auto v0 = values(m0.next(s).inputs), v1 = values(m1.next(s).inputs);
    EXPECT_NE(v0, v1);
    v0.insert(v0.end(), v1.begin(), v1.end());
    EXPECT_EQ(v0, values(whole.next(s).inputs)) << "step " << s;
  }
  EXPECT_EQ(m0.rows_served(), whole.rows_served());
  EXPECT_EQ(m1.rows_served(), whole.rows_served());
}

// A mixture of one source serves what data.text.train over the same shards serves.
TEST(MixtureLoader, OneSourceIsTheTokenWindowLoader) {
  TempDir dir;
  auto sources = numbered_sources(dir, {0.3});
  MixtureLoader mix(sources, options(5, 9, 4));
  TokenWindowLoader plain(sources[0].shard_paths, options(5, 9, 4));
  for (int64_t s = 0; s < 6; ++s) {
    Batch a = mix.next(s), b = plain.next(s);
    EXPECT_EQ(values(a.inputs), values(b.inputs));
    EXPECT_EQ(values(a.targets), values(b.targets));
  }
}

TEST(MixtureLoader, StateRestoreContinuesEveryStream) {
  TempDir dir;
  auto sources = numbered_sources(dir, {0.5, 0.3, 0.2});
  const LoaderOptions o = options(3, 12, 5);
  MixtureLoader a(sources, o);
  for (int s = 0; s < 6; ++s) a.next(s);
  const nlohmann::json st = nlohmann::json::parse(a.state().dump());  // through text, as a checkpoint does
  EXPECT_EQ(st.at("kind"), "token_mixture");
  EXPECT_EQ(st.at("last_step"), 5);
  EXPECT_EQ(st.at("sources").at(1).at("bound"), a.bounds()[1]);
  MixtureLoader b(sources, o);
  b.load_state(st);
  EXPECT_EQ(b.state(), a.state());
  EXPECT_EQ(b.rows_served(), a.rows_served());
  for (int s = 6; s < 9; ++s) {
    Batch na = a.next(s), nb = b.next(s);
    EXPECT_EQ(values(na.inputs), values(nb.inputs));
    EXPECT_EQ(values(na.targets), values(nb.targets));
  }
  EXPECT_EQ(b.state(), a.state());

  // Weights that normalise to the same shares are the same mixture.
  auto scaled = sources;
  for (auto& s : scaled) s.weight *= 10.0;
  MixtureLoader(scaled, o).load_state(st);
}

TEST(MixtureLoader, ResumeWithOtherDataIsRefused) {
  TempDir dir;
  auto sources = numbered_sources(dir, {0.5, 0.3, 0.2});
  const LoaderOptions o = options(3, 12, 5);
  MixtureLoader a(sources, o);
  a.next(0);
  const nlohmann::json st = nlohmann::json::parse(a.state().dump());

  auto reweighted = sources;
  reweighted[2].weight = 0.4;
  expect_input_error([&] { MixtureLoader(reweighted, o).load_state(st); },
                     {"weights of data.text.mix changed", "[0.5,0.3,0.2] -> [0.5,0.3,0.4]", "start a new run"});
  auto fewer = sources;
  fewer.pop_back();
  expect_input_error([&] { MixtureLoader(fewer, o).load_state(st); }, {"has 3 sources", "data.text.mix has 2"});
  LoaderOptions other_seed = o;
  other_seed.seed = 6;
  expect_input_error([&] { MixtureLoader(sources, other_seed).load_state(st); }, {"source 0", "seed", "5", "6"});
  // A plain loader's state given to a mixture, and the reverse.
  TokenWindowLoader plain(sources[0].shard_paths, o);
  expect_input_error([&] { MixtureLoader(sources, o).load_state(plain.state()); },
                     {"kind \"token_windows\"", "data.text.mix"});
  expect_input_error([&] { plain.load_state(st); }, {"kind", "token_mixture"});
  // A counter that is not an integer.
  nlohmann::json bad = st;
  bad["sources"][1]["rows_served"] = 1.5;
  expect_input_error([&] { MixtureLoader(sources, o).load_state(bad); }, {"sources[1].rows_served"});
  bad = st;
  bad["sources"][1]["rows_served"] = -3;
  expect_input_error([&] { MixtureLoader(sources, o).load_state(bad); }, {"sources[1].rows_served is -3"});
  // Same number of tokens, other contents: named by source and shard.
  write_shard(sources[1].shard_paths[0], std::vector<uint32_t>(500, 1), 4, 0);
  expect_input_error([&] { MixtureLoader(sources, o).load_state(st); }, {"source 1", "src1.bin", "different contents"});
}

TEST(MixtureLoader, ASourceWithoutAWindowIsNamed) {
  TempDir dir;
  auto sources = numbered_sources(dir, {1.0, 1.0});
  write_shard(sources[1].shard_paths[0], std::vector<uint32_t>(5, 1), 4, 0);  // shorter than seq_len + 1
  expect_input_error([&] { MixtureLoader(sources, options(2, 8, 0)); }, {"source 1", "no window"});
}

}  // namespace
}  // namespace natsl
