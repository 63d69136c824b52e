#include "data/mixture.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_read.h"
#include "data/random_stream.h"

namespace natsl {
namespace {

constexpr uint64_t kMixtureDomain = 0x4D495853;  // "MIXS"
const char* const kFix = "resume with the data.text.mix of the checkpoint or start a new run.";

}  // namespace

std::vector<uint64_t> mixture_bounds(const std::vector<double>& weights, const std::vector<std::string>& names) {
  NATSL_CHECK(weights.size() == names.size(), "mixture_bounds: ", weights.size(), " weights, ", names.size(), " names");
  if (weights.empty()) throw InputError("a data mixture needs at least one source");
  double total = 0.0;
  for (size_t k = 0; k < weights.size(); ++k) {
    if (!std::isfinite(weights[k]) || weights[k] <= 0.0)
      throw InputError(names[k] + ": weight " + fmt::format("{}", weights[k]) +
                       " must be a finite number > 0 (weights are normalised over the sources)");
    total += weights[k];
  }
  if (!std::isfinite(total))
    throw InputError(names[0] + ": the weights sum to " + fmt::format("{}", total) + "; use smaller weights");
  std::vector<uint64_t> bounds = {0};
  double prefix = 0.0;
  for (size_t k = 1; k < weights.size(); ++k) {
    prefix += weights[k - 1];
    const double q = prefix / total;  // in (0, 1]
    // q < 1 has at most 53 significant bits, so q * 2^64 is exact and below 2^64; truncation is the floor.
    const uint64_t b = q < 1.0 ? uint64_t(std::ldexp(q, 64)) : 0;
    if (q >= 1.0 || b <= bounds.back())
      throw InputError((q >= 1.0 ? names[k] : names[k - 1]) + ": its weight is too small against the others' (" +
                       fmt::format("{}", total) + " in all) to get any row; raise it or drop the source");
    bounds.push_back(b);
  }
  return bounds;
}

MixtureLoader::MixtureLoader(const std::vector<MixtureSource>& sources, const LoaderOptions& opts)
    : OptionsSource(opts) {
  for (const MixtureSource& s : sources) {
    names_.push_back(s.name);
    weights_.push_back(s.weight);
  }
  bounds_ = mixture_bounds(weights_, names_);
  for (const MixtureSource& s : sources) {
    try {
      sources_.emplace_back(s.shard_paths, opts);
    } catch (const InputError& e) {
      throw InputError(s.name + ": " + e.what());
    }
    vocab_size_ = std::max(vocab_size_, sources_.back().vocab_size());
  }
  rows_served_.assign(sources_.size(), 0);
}

size_t MixtureLoader::source_of_row(int64_t step, int64_t global_row) const {
  const uint64_t u = RandomStream(example_key(opts_.seed, kMixtureDomain, step, global_row)).next_u64();
  return size_t(std::upper_bound(bounds_.begin(), bounds_.end(), u) - bounds_.begin()) - 1;
}

double MixtureLoader::share(size_t k) const {
  const double end = k + 1 < bounds_.size() ? double(bounds_[k + 1]) : 0x1.0p64;
  return (end - double(bounds_[k])) * 0x1.0p-64;
}

Batch MixtureLoader::next(int64_t step) {
  const int64_t B = opts_.batch_size, first = int64_t(opts_.rank) * B;
  // Every rank counts the rows of all ranks, so the saved counts do not depend on which rank writes them.
  std::vector<size_t> src(size_t(B * opts_.world_size));
  for (size_t g = 0; g < src.size(); ++g) ++rows_served_[src[g] = source_of_row(step, int64_t(g))];
  return make_batch(step, [&](int64_t b, int32_t* in, int32_t* tg) {
    sources_[src[size_t(first + b)]].read_row(step, first + b, in, tg);
  });
}

void MixtureLoader::skip(int64_t step) {
  for (int64_t g = 0; g < opts_.batch_size * opts_.world_size; ++g) ++rows_served_[source_of_row(step, g)];
  last_step_ = std::max(last_step_, step);
}

nlohmann::json MixtureLoader::state() const {
  nlohmann::json sources = nlohmann::json::array();
  for (size_t k = 0; k < sources_.size(); ++k)
    sources.push_back({{"name", names_[k]},
                       {"weight", weights_[k]},
                       {"bound", bounds_[k]},
                       {"rows_served", rows_served_[k]},
                       {"windows", sources_[k].state()}});
  return {{"kind", "token_mixture"}, {"sources", sources}, {"last_step", last_step_}};
}

void MixtureLoader::load_state(const nlohmann::json& st) {
  const std::string field = "the checkpoint's data state's ";
  const nlohmann::json& kind = st.at("kind");
  if (kind != "token_mixture")
    throw InputError("the checkpoint's data state is of kind " + kind.dump() +
                     " but this run trains on a mixture (data.text.mix); " + kFix);
  const nlohmann::json& theirs = st.at("sources");
  if (!theirs.is_array() || theirs.size() != sources_.size())
    throw InputError("the checkpoint's data mixture has " +
                     (theirs.is_array() ? std::to_string(theirs.size()) : std::string("no list of")) +
                     " sources but this run's data.text.mix has " + std::to_string(sources_.size()) + "; " + kFix);
  // The same mixture = the same integer bounds (weights that normalise to the same shares are the same).
  bool same_bounds = true;
  nlohmann::json their_weights = nlohmann::json::array(), my_weights = nlohmann::json::array();
  for (size_t k = 0; k < sources_.size(); ++k) {
    const nlohmann::json& src = theirs.at(k);
    const std::string at = field + "sources[" + std::to_string(k) + "].bound";
    same_bounds = same_bounds && json_integer<uint64_t>(src.at("bound"), at) == bounds_[k];
    their_weights.push_back(src.at("weight"));
    my_weights.push_back(weights_[k]);
  }
  if (!same_bounds)
    throw InputError("the weights of data.text.mix changed since the checkpoint (" + their_weights.dump() + " -> " +
                     my_weights.dump() + "): the resumed run would not continue the same streams; " + kFix);
  std::vector<int64_t> rows(sources_.size());
  for (size_t k = 0; k < sources_.size(); ++k) {
    const nlohmann::json& src = theirs.at(k);
    try {
      sources_[k].load_state(src.at("windows"));
    } catch (const InputError& e) {
      throw InputError(names_[k] + ": " + e.what());
    }
    const std::string at = field + "sources[" + std::to_string(k) + "].rows_served";
    rows[k] = json_integer<int64_t>(src.at("rows_served"), at);
    if (rows[k] < 0) throw InputError(at + " is " + std::to_string(rows[k]) + " (the file is corrupt or was edited)");
  }
  last_step_ = json_integer<int64_t>(st.at("last_step"), field + "last_step");
  rows_served_ = std::move(rows);
}

std::string MixtureLoader::describe() const {
  std::ostringstream os;
  os << "token mixture: " << sources_.size() << " sources, batch " << opts_.batch_size << " x " << opts_.seq_len
     << " (rank " << opts_.rank << "/" << opts_.world_size << "), seed " << opts_.seed;
  return os.str();
}

std::string MixtureLoader::describe_sources(int64_t micro_batches) const {
  const double rows = double(micro_batches) * double(opts_.batch_size * opts_.world_size);
  std::string out;
  for (size_t k = 0; k < sources_.size(); ++k) {
    const TokenWindowLoader& s = sources_[k];
    // Each row reads seq_len + 1 tokens of its source and trains on seq_len of them.
    const double epochs = share(k) * rows * double(opts_.seq_len) / double(s.total_tokens());
    out += fmt::format("{}  {}: weight {} (share {:.2f}%), {} tokens; {:.3g} epochs expected over the run",
                       k ? "\n" : "", names_[k], weights_[k], 100.0 * share(k), s.total_tokens(), epochs);
  }
  return out;
}

}  // namespace natsl
