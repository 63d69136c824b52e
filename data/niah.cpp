#include "data/niah.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/config_key_error.h"
#include "core/error.h"
#include "data/synthetic_state.h"
#include "data/tokenizer.h"

namespace natsl {
namespace {

constexpr uint64_t kNiahDomain = 0x4E494148;  // "NIAH"

// Keys are "adjective-noun" from these lists (our substitute for RULER's wonderwords draw).
constexpr const char* kAdjectives[64] = {
    "amber",   "ancient", "bold",    "brave",   "bright",  "calm",    "clever",  "cold",    "crimson", "curious",
    "daring",  "dusty",   "eager",   "early",   "fancy",   "fierce",  "gentle",  "giant",   "golden",  "happy",
    "hidden",  "hollow",  "humble",  "icy",     "jolly",   "kind",    "lively",  "lonely",  "lucky",   "mellow",
    "misty",   "modern",  "narrow",  "noble",   "odd",     "orange",  "pale",    "patient", "plain",   "proud",
    "quick",   "quiet",   "rapid",   "rough",   "royal",   "rusty",   "salty",   "shiny",   "silent",  "silver",
    "sleepy",  "smooth",  "snowy",   "solid",   "steady",  "stormy",  "sunny",   "swift",   "tender",  "tiny",
    "vivid",   "wild",    "windy",   "wooden"};
constexpr const char* kNouns[64] = {
    "anchor",  "apple",   "arrow",   "badger",  "basket",  "beacon",  "bridge",  "candle",  "canyon",  "castle",
    "cherry",  "cloud",   "comet",   "copper",  "crystal", "desert",  "dragon",  "eagle",   "ember",   "falcon",
    "feather", "forest",  "garden",  "glacier", "harbor",  "hammer",  "island",  "jungle",  "kettle",  "ladder",
    "lantern", "meadow",  "mirror",  "monkey",  "needle",  "ocean",   "orchard", "otter",   "pebble",  "pepper",
    "pillow",  "planet",  "pocket",  "rabbit",  "river",   "rocket",  "saddle",  "shadow",  "spider",  "statue",
    "thunder", "tiger",   "tunnel",  "turtle",  "valley",  "violin",  "wagon",   "walrus",  "whistle", "willow",
    "window",  "wizard",  "yacht",   "zebra"};

constexpr const char* kNoiseUnit =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

struct PromptParts {
  std::string head, needle, tail, answer_lead, value, answer_end;
};

PromptParts prompt_parts(NiahValue kind, const std::string& key, const std::string& value) {
  const std::string noun = kind == NiahValue::Number ? "number" : "uuid";
  PromptParts p;
  p.head = "A special magic " + noun + " is hidden within the following text. Make sure to memorize it. " +
           "I will quiz you about the " + noun + " afterwards.\n";
  p.needle = "One of the special magic " + noun + "s for " + key + " is: " + value + ".";
  p.tail = "\nWhat is the special magic " + noun + " for " + key + " mentioned in the provided text? The special magic " +
           noun + " for " + key + " mentioned in the provided text is";
  p.answer_lead = " ";
  p.value = value;
  p.answer_end = ".";
  return p;
}

std::string make_value(NiahValue kind, RandomStream& rs) {
  if (kind == NiahValue::Number) return std::to_string(1000000 + rs.below(9000000));
  unsigned char b[16];
  for (int i = 0; i < 16; i += 4) {
    uint32_t w = rs.next_u32();
    for (int j = 0; j < 4; ++j) b[i + j] = static_cast<unsigned char>(w >> (8 * j));
  }
  b[6] = static_cast<unsigned char>((b[6] & 0x0F) | 0x40);  // version 4
  b[8] = static_cast<unsigned char>((b[8] & 0x3F) | 0x80);  // variant 10xx: y in {8, 9, a, b}
  char s[40];
  std::snprintf(s, sizeof s, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
                b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return s;
}

bool ends_sentence(const std::string& w) {
  char c = w.back();
  return c == '.' || c == '!' || c == '?';
}

void fail(const std::string& msg) { throw InputError("niah: " + msg); }

// `option`: the NiahOptions field at fault, which the run config's data factory maps to its config key.
void fail_option(const char* option, const std::string& msg) { throw ConfigKeyError(option, "niah: " + msg); }

}  // namespace

std::vector<double> niah_depth_grid() {
  std::vector<double> g(40);
  for (int i = 0; i < 40; ++i) g[size_t(i)] = double(std::lround(100.0 * i / 39.0));
  return g;
}

void validate(const NiahOptions& o) {
  if (o.vocab_size < 256)
    fail_option("vocab_size", "vocab_size must be >= 256 (byte tokens), got " + std::to_string(o.vocab_size) + ".");
  if (o.batch_size < 1) fail_option("batch_size", "batch_size must be >= 1, got " + std::to_string(o.batch_size) + ".");
  if (o.depth_percent > 100)
    fail_option("depth_percent", "depth_percent must be in [0, 100] (or negative for the 40-point grid).");
  NATSL_CHECK(o.world_size >= 1 && o.rank >= 0 && o.rank < o.world_size, "niah rank ", o.rank, "/", o.world_size);
  // The key at fault is the haystack: essay_path is only read for it, so an empty one was never set.
  if (o.haystack == NiahHaystack::Essay && o.essay_path.empty())
    fail_option("haystack", "haystack is essay but essay_path names no file; give a held-out text file (never "
                            "training text) in essay_path, or use the noise haystack.");
  // The longest key and value must fit with an empty haystack.
  std::string longest_key;
  for (const char* a : kAdjectives)
    for (const char* n : kNouns) longest_key = std::max(longest_key, std::string(a) + "-" + n,
                                                        [](const auto& x, const auto& y) { return x.size() < y.size(); });
  PromptParts p = prompt_parts(o.value, longest_key, std::string(o.value == NiahValue::Number ? 7 : 36, '0'));
  const int64_t need = int64_t(niah_uses_bos(o.vocab_size)) +
                       int64_t(p.head.size() + p.needle.size() + p.tail.size() + p.answer_lead.size() +
                               p.value.size() + p.answer_end.size());
  if (o.seq_len + 1 < need)
    fail_option("seq_len", "seq_len " + std::to_string(o.seq_len) + " is too short for the prompt; use at least " +
                               std::to_string(need - 1) + ".");
}

NiahSource::NiahSource(const NiahOptions& o) : OptionsSource(o) {
  validate(o);
  if (o.haystack == NiahHaystack::Essay) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(o.essay_path, ec))
      fail("the essay haystack needs essay_path, a held-out text file; '" + o.essay_path + "' does not exist.");
    std::ifstream f(o.essay_path, std::ios::binary);
    std::istringstream text{std::string{std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()}};
    for (std::string w; text >> w;) essay_words_.push_back(w);
    if (essay_words_.empty()) fail("essay file '" + o.essay_path + "' holds no words.");
  }
}

NiahExample NiahSource::generate(RandomStream& rs) const {
  NiahExample ex;
  ex.key = std::string(kAdjectives[rs.below(64)]) + "-" + kNouns[rs.below(64)];
  ex.value = make_value(opts_.value, rs);
  static const std::vector<double> grid = niah_depth_grid();
  ex.depth_percent = opts_.depth_percent >= 0 ? opts_.depth_percent : grid[rs.below(grid.size())];
  const PromptParts p = prompt_parts(opts_.value, ex.key, ex.value);
  const int64_t fixed = int64_t(use_bos()) + int64_t(p.head.size() + p.tail.size() + p.answer_lead.size() +
                                                     p.value.size() + p.answer_end.size());
  const int64_t budget = opts_.seq_len + 1 - fixed;  // bytes available for CONTEXT
  const int64_t needle_len = int64_t(p.needle.size());

  std::string context;
  if (opts_.haystack == NiahHaystack::Noise) {
    const int64_t unit = int64_t(std::char_traits<char>::length(kNoiseUnit));
    const int64_t n = std::max<int64_t>(0, (budget - needle_len) / (unit + 1));  // n units + needle, '\n'-joined
    ex.haystack_units = n;
    ex.needle_index = int64_t(double(n) * ex.depth_percent / 100.0);
    for (int64_t i = 0; i <= n; ++i) {
      if (i == ex.needle_index) {
        if (i > 0) context += '\n';
        ex.needle_begin = int64_t(context.size());
        context += p.needle;
      }
      if (i < n) {
        if (!context.empty()) context += '\n';
        context += kNoiseUnit;
      }
    }
  } else {
    // Largest n with (sum of n word lengths + n - 1 spaces) + 1 space + needle <= budget.
    int64_t n = 0, len = needle_len;
    const int64_t W = int64_t(essay_words_.size());
    while (true) {
      int64_t add = int64_t(essay_words_[size_t(n % W)].size()) + 1;
      if (len + add > budget) break;
      len += add;
      ++n;
    }
    std::vector<std::string> sentences;
    std::string cur;
    for (int64_t i = 0; i < n; ++i) {
      const std::string& w = essay_words_[size_t(i % W)];
      if (!cur.empty()) cur += ' ';
      cur += w;
      if (ends_sentence(w)) sentences.push_back(std::move(cur)), cur.clear();
    }
    if (!cur.empty()) sentences.push_back(std::move(cur));
    const int64_t ns = int64_t(sentences.size());
    ex.haystack_units = ns;
    ex.needle_index = int64_t(double(ns) * ex.depth_percent / 100.0);
    for (int64_t i = 0; i <= ns; ++i) {
      if (i == ex.needle_index) {
        if (!context.empty()) context += ' ';
        ex.needle_begin = int64_t(context.size());
        context += p.needle;
      }
      if (i < ns) {
        if (!context.empty()) context += ' ';
        context += sentences[size_t(i)];
      }
    }
  }
  NATSL_CHECK(int64_t(context.size()) <= budget, "niah context ", context.size(), " exceeds budget ", budget);

  std::vector<int32_t>& t = ex.tokens;
  t.reserve(size_t(opts_.seq_len + 1));
  auto append = [&t](const std::string& s) {
    for (char c : s) t.push_back(int32_t(static_cast<unsigned char>(c)));
  };
  if (use_bos()) t.push_back(int32_t(ByteTokenizer::kBos));
  append(p.head);
  ex.context_begin = int64_t(t.size());
  ex.needle_begin += ex.context_begin;
  append(context);
  ex.context_end = int64_t(t.size());
  append(p.tail);
  append(p.answer_lead);
  ex.answer_begin = int64_t(t.size());
  append(p.value);
  ex.answer_end = int64_t(t.size());
  append(p.answer_end);
  const int32_t pad = use_bos() ? int32_t(ByteTokenizer::kEos) : int32_t('\n');
  t.resize(size_t(opts_.seq_len + 1), pad);
  return ex;
}

NiahExample NiahSource::example(int64_t step, int64_t b) const {
  RandomStream rs(example_key(opts_.seed, kNiahDomain, step, int64_t(opts_.rank) * opts_.batch_size + b));
  return generate(rs);
}

Batch NiahSource::next(int64_t step) {
  const int64_t T = opts_.seq_len;
  return make_batch(step, [&](int64_t b, int32_t* in, int32_t* tg) {
    const NiahExample ex = example(step, b);
    std::copy(ex.tokens.begin(), ex.tokens.begin() + T, in);
    std::fill(tg, tg + T, int32_t(kIgnoreIndex));  // only the answer's tokens are targets
    for (int64_t pos = ex.answer_begin; pos < ex.answer_end; ++pos) tg[pos - 1] = ex.tokens[size_t(pos)];
  });
}

nlohmann::json NiahSource::state() const {
  return synthetic_state("niah",
                         {{"seq_len", opts_.seq_len},
                          {"vocab_size", opts_.vocab_size},
                          {"haystack", opts_.haystack == NiahHaystack::Noise ? "noise" : "essay"},
                          {"value", opts_.value == NiahValue::Number ? "number" : "uuid"},
                          {"essay_words", int64_t(essay_words_.size())},
                          {"depth_percent", opts_.depth_percent}},
                         opts_.batch_size * opts_.world_size, opts_.seed, last_step_);
}

void NiahSource::load_state(const nlohmann::json& st) { last_step_ = check_synthetic_state(st, state()); }

std::string NiahSource::describe() const {
  std::ostringstream os;
  os << "NIAH: " << (opts_.haystack == NiahHaystack::Noise ? "noise" : "essay '" + opts_.essay_path + "'")
     << " haystack, " << (opts_.value == NiahValue::Number ? "7-digit number" : "uuid") << " values, T "
     << opts_.seq_len << ", depth " << (opts_.depth_percent >= 0 ? std::to_string(opts_.depth_percent) : "grid")
     << synthetic_batch_text(opts_.batch_size, opts_.rank, opts_.world_size, opts_.seed);
  return os.str();
}

}  // namespace natsl
