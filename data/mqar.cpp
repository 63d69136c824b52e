#include "data/mqar.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "core/config_key_error.h"
#include "core/error.h"
#include "data/synthetic_state.h"

namespace natsl {
namespace {

constexpr uint64_t kMqarDomain = 0x4D514152;  // "MQAR"

// k distinct values of [lo, hi) in draw order: sequential uniform draws, rejecting repeats, which is
// sampling without replacement.
std::vector<int32_t> distinct_uniform(RandomStream& rs, int64_t lo, int64_t hi, int64_t k) {
  std::vector<int32_t> out;
  std::unordered_set<int32_t> seen;
  out.reserve(size_t(k));
  while (int64_t(out.size()) < k) {
    int32_t v = int32_t(lo + int64_t(rs.below(uint64_t(hi - lo))));
    if (seen.insert(v).second) out.push_back(v);
  }
  return out;
}

// k distinct slots drawn one after another, each with probability ∝ weight among those not yet drawn
// (numpy's choice(replace=False, p=...)). Efraimidis-Spirakis: slot g gets an exponential time
// E_g = -ln(u_g) / w_g; the order of the smallest k times is distributed as that sequential draw.
std::vector<int64_t> weighted_distinct(RandomStream& rs, const std::vector<double>& w, int64_t k) {
  std::vector<std::pair<double, int64_t>> t(w.size());
  for (size_t g = 0; g < w.size(); ++g) t[g] = {-std::log(rs.uniform()) / w[g], int64_t(g)};
  std::partial_sort(t.begin(), t.begin() + k, t.end());
  std::vector<int64_t> out(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) out[size_t(i)] = t[size_t(i)].second;
  return out;
}

// `option`: the MqarOptions field at fault, which the run config's data factory maps to its config key.
void fail(const char* option, const std::string& msg) { throw ConfigKeyError(option, "mqar: " + msg); }

}  // namespace

void validate(const MqarOptions& o) {
  if (o.seq_len < 2 || o.seq_len % 2 != 0)
    fail("seq_len", "seq_len must be even and >= 2, got " + std::to_string(o.seq_len) + ".");
  if (o.vocab_size <= o.seq_len)
    fail("vocab_size",
         "vocab_size (" + std::to_string(o.vocab_size) + ") must exceed seq_len (" + std::to_string(o.seq_len) + ").");
  if (o.num_kv_pairs < 1) fail("num_kv_pairs", "num_kv_pairs must be >= 1, got " + std::to_string(o.num_kv_pairs) + ".");
  if (o.num_passes < 1) fail("num_passes", "num_passes must be >= 1, got " + std::to_string(o.num_passes) + ".");
  if (2 * o.num_kv_pairs * o.num_passes + 2 * o.num_kv_pairs > o.seq_len)
    fail("num_kv_pairs", "2 * num_kv_pairs * num_passes + 2 * num_kv_pairs = " +
                             std::to_string(2 * o.num_kv_pairs * o.num_passes + 2 * o.num_kv_pairs) +
                             " exceeds seq_len " + std::to_string(o.seq_len) +
                             "; use fewer pairs or a longer sequence.");
  if (!(o.power_a > 0)) fail("power_a", "power_a must be > 0, got " + std::to_string(o.power_a) + ".");
  if (o.batch_size < 1) fail("batch_size", "batch_size must be >= 1, got " + std::to_string(o.batch_size) + ".");
  NATSL_CHECK(o.world_size >= 1 && o.rank >= 0 && o.rank < o.world_size, "mqar rank ", o.rank, "/", o.world_size);
}

MqarExample generate_mqar(const MqarOptions& o, const std::vector<double>& gap_weights, RandomStream& rs) {
  const int64_t L = o.seq_len, V = o.vocab_size, k = o.num_kv_pairs;
  const int64_t ctx = 2 * k * o.num_passes;
  std::vector<int32_t> keys = distinct_uniform(rs, 1, V / 2, k);
  std::vector<int32_t> values = distinct_uniform(rs, V / 2, V, k);
  std::vector<int64_t> gaps = weighted_distinct(rs, gap_weights, k);

  MqarExample ex{std::vector<int32_t>(size_t(L), 0), std::vector<int32_t>(size_t(L), int32_t(kIgnoreIndex))};
  for (int64_t p = 0; p < o.num_passes; ++p)
    for (int64_t i = 0; i < k; ++i) {
      ex.inputs[size_t(2 * k * p + 2 * i)] = keys[size_t(i)];
      ex.inputs[size_t(2 * k * p + 2 * i + 1)] = values[size_t(i)];
    }
  for (int64_t i = 0; i < k; ++i) {
    const size_t pos = size_t(ctx + 2 * gaps[size_t(i)]);
    ex.inputs[pos] = keys[size_t(i)];
    ex.targets[pos] = values[size_t(i)];
  }
  if (o.random_non_queries)
    for (int32_t& t : ex.inputs)
      if (t == 0) t = int32_t(rs.below(uint64_t(V)));
  return ex;
}

MqarSource::MqarSource(const MqarOptions& o) : OptionsSource(o) {
  validate(o);
  const int64_t space = (o.seq_len - 2 * o.num_kv_pairs * o.num_passes) / 2;
  gap_weights_.resize(size_t(space));
  for (int64_t g = 0; g < space; ++g) gap_weights_[size_t(g)] = std::pow(double(g + 1), o.power_a - 1.0);
}

MqarExample MqarSource::example(int64_t step, int64_t b) const {
  RandomStream rs(example_key(opts_.seed, kMqarDomain, step, int64_t(opts_.rank) * opts_.batch_size + b));
  return generate_mqar(opts_, gap_weights_, rs);
}

Batch MqarSource::next(int64_t step) {
  return make_batch(step, [&](int64_t b, int32_t* in, int32_t* tg) {
    const MqarExample ex = example(step, b);
    std::copy(ex.inputs.begin(), ex.inputs.end(), in);
    std::copy(ex.targets.begin(), ex.targets.end(), tg);
  });
}

nlohmann::json MqarSource::state() const {
  return synthetic_state("mqar",
                         {{"vocab_size", opts_.vocab_size},
                          {"seq_len", opts_.seq_len},
                          {"num_kv_pairs", opts_.num_kv_pairs},
                          {"power_a", opts_.power_a},
                          {"num_passes", opts_.num_passes},
                          {"random_non_queries", opts_.random_non_queries}},
                         opts_.batch_size * opts_.world_size, opts_.seed, last_step_);
}

void MqarSource::load_state(const nlohmann::json& st) { last_step_ = check_synthetic_state(st, state()); }

std::string MqarSource::describe() const {
  std::ostringstream os;
  os << "MQAR: V " << opts_.vocab_size << ", L " << opts_.seq_len << ", k " << opts_.num_kv_pairs << ", power_a "
     << opts_.power_a << ", passes " << opts_.num_passes << (opts_.random_non_queries ? ", random filler" : ", zero filler")
     << synthetic_batch_text(opts_.batch_size, opts_.rank, opts_.world_size, opts_.seed);
  return os.str();
}

}  // namespace natsl
