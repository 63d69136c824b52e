#include "data/loader.h"

#include <algorithm>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_read.h"
#include "data/random_stream.h"

namespace natsl {
namespace {

constexpr uint64_t kLoaderDomain = 0x4C4F4144;  // "LOAD"

void check_shape_options(const char* what, int64_t batch_size, int64_t seq_len, int rank, int world_size) {
  if (batch_size < 1) throw InputError(std::string(what) + ": batch_size must be >= 1, got " + std::to_string(batch_size));
  if (seq_len < 1) throw InputError(std::string(what) + ": seq_len must be >= 1, got " + std::to_string(seq_len));
  NATSL_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, what, ": rank ", rank, " / world_size ", world_size);
}

// Opens every shard and checks it fits the model's vocabulary; returns the vocabulary the ids live in.
std::vector<Shard> open_shards(const std::vector<std::string>& paths, bool verify, int64_t model_vocab,
                               int64_t* vocab_out) {
  if (paths.empty()) throw InputError("no token shards given: set the data path to shard files written by `natsl tokenize`.");
  std::vector<Shard> shards;
  int64_t vocab = 0;
  for (const std::string& p : paths) {
    Shard s = Shard::open(p, verify);
    int64_t v = s.header().vocab_size;
    if (model_vocab > 0) {
      if (v > model_vocab)
        throw InputError("shard '" + p + "' was written for a vocabulary of " + std::to_string(v) +
                         " tokens but the model's vocab_size is " + std::to_string(model_vocab) +
                         "; raise model.vocab_size or use shards of the model's tokenizer.");
      // The real ids, not only the recorded vocabulary: an id >= vocab_size would index past the embedding.
      if (s.size() > 0 && int64_t(s.max_token()) >= model_vocab)
        throw InputError("shard '" + p + "' holds token id " + std::to_string(s.max_token()) + " (first at index " +
                         std::to_string(s.first_token_at_least(uint64_t(model_vocab))) +
                         ") but the model's vocab_size is " + std::to_string(model_vocab) +
                         "; raise model.vocab_size or use shards of the model's tokenizer.");
    }
    if (s.size() > 0) v = std::max(v, int64_t(s.max_token()) + 1);
    vocab = std::max(vocab, v);
    shards.push_back(std::move(s));
  }
  *vocab_out = model_vocab > 0 ? model_vocab : vocab;
  return shards;
}

nlohmann::json shard_identity(const std::vector<Shard>& shards) {
  nlohmann::json arr = nlohmann::json::array();
  for (const Shard& s : shards)
    arr.push_back({{"path", s.path()}, {"tokens", s.size()}, {"crc32", s.header().crc32}});
  return arr;
}

template <class T>
void require_equal(const nlohmann::json& state, const char* key, const T& mine, const std::string& what_to_do) {
  if (!state.contains(key))
    throw InputError(std::string("checkpoint data state has no '") + key + "'; it was not written by this loader kind.");
  T theirs;
  if constexpr (std::is_integral_v<T>)
    theirs = json_integer<T>(state.at(key), std::string("the checkpoint's data state's ") + key);
  else
    theirs = state.at(key).get<T>();
  if (!(theirs == mine)) {
    std::ostringstream os;
    os << "the checkpoint's data state has " << key << " = " << nlohmann::json(theirs).dump() << " but this run has "
       << nlohmann::json(mine).dump() << "; " << what_to_do;
    throw InputError(os.str());
  }
}

}  // namespace

TokenWindowLoader::TokenWindowLoader(const std::vector<std::string>& shard_paths, const LoaderOptions& opts)
    : OptionsSource(opts) {
  check_shape_options("loader", opts.batch_size, opts.seq_len, opts.rank, opts.world_size);
  shards_ = open_shards(shard_paths, opts.verify_checksums, opts.vocab_size, &vocab_size_);
  int64_t acc = 0;
  for (const Shard& s : shards_) {
    acc += std::max<int64_t>(0, s.size() - opts.seq_len);  // starts s with s + seq_len + 1 <= size
    starts_end_.push_back(acc);
  }
  if (acc == 0)
    throw InputError("the training shards (" + std::to_string(shards_.size()) + " files, first '" + shards_[0].path() +
                     "') hold no window of seq_len + 1 = " + std::to_string(opts.seq_len + 1) +
                     " tokens; use a shorter seq_len or more data.");
}

int64_t TokenWindowLoader::total_tokens() const {
  int64_t n = 0;
  for (const Shard& s : shards_) n += s.size();
  return n;
}

std::pair<size_t, int64_t> TokenWindowLoader::window_start(int64_t step, int64_t b) const {
  return window_of_row(step, int64_t(opts_.rank) * opts_.batch_size + b);
}

std::pair<size_t, int64_t> TokenWindowLoader::window_of_row(int64_t step, int64_t row) const {
  RandomStream rs(example_key(opts_.seed, kLoaderDomain, step, row));
  const int64_t g = int64_t(rs.below(uint64_t(starts_end_.back())));
  const size_t shard = size_t(std::upper_bound(starts_end_.begin(), starts_end_.end(), g) - starts_end_.begin());
  const int64_t before = shard == 0 ? 0 : starts_end_[shard - 1];
  return {shard, g - before};
}

void TokenWindowLoader::read_row(int64_t step, int64_t global_row, int32_t* inputs, int32_t* targets) const {
  const int64_t T = opts_.seq_len;
  auto [shard, start] = window_of_row(step, global_row);
  // Inputs are window[0, T), targets window[1, T + 1): read once into inputs, the last token separately.
  shards_[shard].read(start, T, inputs);
  std::copy(inputs + 1, inputs + T, targets);
  shards_[shard].read(start + T, 1, targets + T - 1);
}

Batch TokenWindowLoader::next(int64_t step) {
  const int64_t first = int64_t(opts_.rank) * opts_.batch_size;
  return make_batch(step, [&](int64_t b, int32_t* in, int32_t* tg) { read_row(step, first + b, in, tg); });
}

nlohmann::json TokenWindowLoader::state() const {
  return {{"kind", "token_windows"},
          {"seed", opts_.seed},
          {"seq_len", opts_.seq_len},
          {"global_batch_rows", opts_.batch_size * opts_.world_size},
          {"shards", shard_identity(shards_)},
          {"last_step", last_step_}};
}

void TokenWindowLoader::load_state(const nlohmann::json& st) {
  const std::string fix = "resume with the data settings of the checkpoint or start a new run.";
  require_equal(st, "kind", std::string("token_windows"), fix);
  require_equal(st, "seed", opts_.seed, fix);
  require_equal(st, "seq_len", opts_.seq_len, fix);
  require_equal(st, "global_batch_rows", opts_.batch_size * opts_.world_size, fix);
  const nlohmann::json& theirs = st.at("shards");
  if (theirs.size() != shards_.size())
    throw InputError("the checkpoint was trained on " + std::to_string(theirs.size()) + " shards but this run has " +
                     std::to_string(shards_.size()) + "; " + fix);
  for (size_t i = 0; i < shards_.size(); ++i) {
    const std::string field = "the checkpoint's data state's shards[" + std::to_string(i) + "].";
    if (json_integer<int64_t>(theirs[i].at("tokens"), field + "tokens") != shards_[i].size() ||
        json_integer<uint32_t>(theirs[i].at("crc32"), field + "crc32") != shards_[i].header().crc32)
      throw InputError("shard " + std::to_string(i) + " ('" + shards_[i].path() +
                       "') has different contents from the checkpoint's shard '" +
                       theirs[i].at("path").get<std::string>() + "'; " + fix);
  }
  last_step_ = json_integer<int64_t>(st.at("last_step"), "the checkpoint's data state's last_step");
}

std::string TokenWindowLoader::describe() const {
  std::ostringstream os;
  os << "token windows: " << shards_.size() << " shards, " << total_tokens() << " tokens, batch " << opts_.batch_size
     << " x " << opts_.seq_len << " (rank " << opts_.rank << "/" << opts_.world_size << "), seed " << opts_.seed;
  return os.str();
}

ValidationWindows::ValidationWindows(const std::vector<std::string>& shard_paths, const ValidationOptions& opts)
    : opts_(opts) {
  check_shape_options("validation", opts.batch_size, opts.seq_len, opts.rank, opts.world_size);
  int64_t vocab = 0;
  shards_ = open_shards(shard_paths, opts.verify_checksums, opts.vocab_size, &vocab);
  for (size_t i = 0; i < shards_.size(); ++i) {
    const int64_t n = shards_[i].size();
    for (int64_t s = 0; n - s >= 2; s += opts.seq_len)
      windows_.push_back({i, s, std::min(opts.seq_len + 1, n - s)});
  }
  if (windows_.empty())
    throw InputError("the validation shards (first '" + shards_[0].path() + "') hold fewer than 2 tokens; give held-out shards.");
}

int64_t ValidationWindows::num_batches() const {
  const int64_t per_step = opts_.batch_size * opts_.world_size;
  return (num_windows() + per_step - 1) / per_step;
}

int64_t ValidationWindows::scored_tokens() const {
  int64_t n = 0;
  for (const Window& w : windows_) n += w.len - 1;
  return n;
}

Batch ValidationWindows::batch(int64_t i) const {
  NATSL_CHECK(i >= 0 && i < num_batches(), "validation batch ", i, " out of range [0, ", num_batches(), ")");
  const int64_t B = opts_.batch_size, T = opts_.seq_len;
  Batch batch{Tensor::zeros({B, T}, DType::i32), Tensor::full({B, T}, double(kIgnoreIndex), DType::i32)};
  int32_t* in = batch.inputs.data<int32_t>();
  int32_t* tg = batch.targets.data<int32_t>();
  std::vector<int32_t> buf(size_t(T + 1));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t w = (i * opts_.world_size + opts_.rank) * B + b;
    if (w >= num_windows()) break;
    const Window& win = windows_[size_t(w)];
    shards_[win.shard].read(win.start, win.len, buf.data());
    std::copy(buf.begin(), buf.begin() + (win.len - 1), in + b * T);
    std::copy(buf.begin() + 1, buf.begin() + win.len, tg + b * T);
  }
  return batch;
}

std::optional<Batch> ValidationWindows::next() {
  if (cursor_ >= num_batches()) return std::nullopt;
  return batch(cursor_++);
}

}  // namespace natsl
