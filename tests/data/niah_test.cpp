#include <gtest/gtest.h>

#include <algorithm>
#include <regex>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/config_key_error.h"
#include "data/synthetic.h"
#include "data/tokenizer.h"
#include "tests/data/data_test_util.h"

namespace natsl {
namespace {

using namespace testing;  // natsl::testing: tests/data/data_test_util.h

const std::string kUnit = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

std::string text_of(const std::vector<int32_t>& t, int64_t begin, int64_t end) {
  std::string s;
  for (int64_t i = begin; i < end; ++i) {
    EXPECT_LT(t[size_t(i)], 256) << "a special token inside the text at " << i;
    s += char(static_cast<unsigned char>(t[size_t(i)]));
  }
  return s;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out(1);
  for (char c : s) {
    if (c == sep) out.emplace_back();
    else out.back() += c;
  }
  return out;
}

// Checks the row's text against the documented layout and returns the context (needle included).
std::string check_layout(const NiahOptions& o, const NiahExample& ex) {
  const auto& t = ex.tokens;
  EXPECT_EQ(int64_t(t.size()), o.seq_len + 1);
  const bool bos = o.vocab_size >= 258;
  if (bos) {
    EXPECT_EQ(t[0], int32_t(ByteTokenizer::kBos));
  }
  const std::string noun = o.value == NiahValue::Number ? "number" : "uuid";
  const std::string head = "A special magic " + noun + " is hidden within the following text. Make sure to memorize it. I will quiz you about the " + noun + " afterwards.\n";
  EXPECT_EQ(text_of(t, bos, ex.context_begin), head);
  const std::string context = text_of(t, ex.context_begin, ex.context_end);
  const std::string needle = "One of the special magic " + noun + "s for " + ex.key + " is: " + ex.value + ".";
  EXPECT_EQ(context.substr(size_t(ex.needle_begin - ex.context_begin), needle.size()), needle);
  EXPECT_EQ(context.find(needle), size_t(ex.needle_begin - ex.context_begin)) << "the needle appears once";
  const std::string question = "\nWhat is the special magic " + noun + " for " + ex.key +
                               " mentioned in the provided text? The special magic " + noun + " for " + ex.key +
                               " mentioned in the provided text is ";
  EXPECT_EQ(text_of(t, ex.context_end, ex.answer_begin), question);
  EXPECT_EQ(text_of(t, ex.answer_begin, ex.answer_end), ex.value);
  EXPECT_EQ(t[size_t(ex.answer_end)], int32_t('.'));
  const int32_t pad = bos ? int32_t(ByteTokenizer::kEos) : int32_t('\n');
  for (size_t i = size_t(ex.answer_end) + 1; i < t.size(); ++i) EXPECT_EQ(t[i], pad) << i;
  for (int32_t v : t) EXPECT_LT(v, o.vocab_size);
  if (o.value == NiahValue::Number) {
    EXPECT_TRUE(std::regex_match(ex.value, std::regex("[1-9][0-9]{6}"))) << ex.value;
  } else {
    EXPECT_TRUE(std::regex_match(ex.value, std::regex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")))
        << ex.value;
  }
  EXPECT_TRUE(std::regex_match(ex.key, std::regex("[a-z]+-[a-z]+"))) << ex.key;
  return context;
}

TEST(Niah, NoiseNeedleAtTheRequestedDepth) {
  for (int64_t T : {400, 1024, 4096}) {
    for (double depth : {0.0, 10.0, 33.0, 50.0, 90.0, 100.0}) {
      NiahOptions o;
      o.seq_len = T;
      o.depth_percent = depth;
      o.batch_size = 3;
      o.seed = uint64_t(T);
      NiahSource src(o);
      for (int64_t b = 0; b < 3; ++b) {
        SCOPED_TRACE("T " + std::to_string(T) + " depth " + std::to_string(depth));
        NiahExample ex = src.example(1, b);
        const std::string context = check_layout(o, ex);
        // Context = n noise units and the needle as '\n'-joined elements; the needle is element
        // int(n * depth / 100).
        std::vector<std::string> parts = split(context, '\n');
        const int64_t n = int64_t(parts.size()) - 1;
        EXPECT_EQ(n, ex.haystack_units);
        const int64_t want = int64_t(double(n) * depth / 100.0);
        for (int64_t i = 0; i <= n; ++i) {
          if (i == want) {
            EXPECT_EQ(parts[size_t(i)].rfind("One of the special magic numbers", 0), 0u) << i;
          } else {
            EXPECT_EQ(parts[size_t(i)], kUnit) << i;
          }
        }
        // As large a haystack as fits: one more unit would overflow the row.
        EXPECT_GT(ex.answer_end + 1 + int64_t(kUnit.size()) + 1, T + 1);
        const double at = double(ex.needle_begin - ex.context_begin) / double(context.size());
        EXPECT_NEAR(at, depth / 100.0, (kUnit.size() + 100.0) / double(context.size()));
      }
    }
  }
}

TEST(Niah, EssayNeedleAtTheRequestedSentence) {
  for (double depth : {0.0, 26.0, 74.0, 100.0}) {
    NiahOptions o;
    o.seq_len = 2048;
    o.haystack = NiahHaystack::Essay;
    o.essay_path = shared_data("wikitext2-test.txt");
    o.value = NiahValue::Uuid;
    o.depth_percent = depth;
    o.batch_size = 2;
    NiahSource src(o);
    NiahExample ex = src.example(0, 1);
    const std::string context = check_layout(o, ex);
    // The needle is preceded by int(n_sentences * depth / 100) sentences: complete ones, except that the
    // last sentence of the haystack may lack its end mark when the needle comes after it.
    const std::string before = context.substr(0, size_t(ex.needle_begin - ex.context_begin));
    int64_t sentences = 0;
    std::istringstream words(before);
    std::string w, last;
    for (; words >> w; last = w) sentences += (w.back() == '.' || w.back() == '!' || w.back() == '?');
    const bool last_ends = !last.empty() && (last.back() == '.' || last.back() == '!' || last.back() == '?');
    if (!last.empty() && !last_ends) {
      EXPECT_EQ(ex.needle_index, ex.haystack_units) << "only the final sentence may be unterminated";
      ++sentences;
    }
    EXPECT_EQ(sentences, int64_t(double(ex.haystack_units) * depth / 100.0)) << "depth " << depth;
    EXPECT_EQ(ex.needle_index, sentences);
    // Without the needle, the haystack is the first words of the file, in order.
    std::string haystack = context;
    const size_t needle_len = ("One of the special magic uuids for " + ex.key + " is: " + ex.value + ".").size();
    haystack.erase(size_t(ex.needle_begin - ex.context_begin), needle_len);
    std::istringstream file_words(testing::read_bytes(o.essay_path)), hay_words(haystack);
    std::string fw, hw;
    int64_t checked = 0;
    while (hay_words >> hw) {
      file_words >> fw;
      ASSERT_EQ(hw, fw) << "word " << checked;
      ++checked;
    }
    EXPECT_GT(checked, 200);
    EXPECT_GT(context.size(), 1500u);
  }
}

TEST(Niah, AnswerMaskCoversOnlyTheValue) {
  for (NiahValue kind : {NiahValue::Number, NiahValue::Uuid}) {
    for (int64_t vocab : {256, 258}) {
      NiahOptions o;
      o.seq_len = 700;
      o.value = kind;
      o.vocab_size = vocab;
      o.batch_size = 4;
      o.seed = 9;
      NiahSource src(o);
      Batch b = src.next(5);
      auto in = b.inputs.to_vector<int32_t>(), tg = b.targets.to_vector<int32_t>();
      for (int64_t r = 0; r < 4; ++r) {
        NiahExample ex = src.example(5, r);
        check_layout(o, ex);
        std::string answer;
        int64_t first = -1, last = -1;
        for (int64_t t = 0; t < 700; ++t) {
          EXPECT_EQ(in[size_t(r * 700 + t)], ex.tokens[size_t(t)]);
          const int32_t y = tg[size_t(r * 700 + t)];
          if (y == kIgnoreIndex) continue;
          EXPECT_EQ(y, ex.tokens[size_t(t + 1)]);  // targets are the next tokens
          answer += char(y);
          if (first < 0) first = t;
          last = t;
        }
        EXPECT_EQ(answer, ex.value);
        EXPECT_EQ(answer.size(), kind == NiahValue::Number ? 7u : 36u);
        EXPECT_EQ(first, ex.answer_begin - 1);
        EXPECT_EQ(last, ex.answer_end - 2);
      }
    }
  }
}

TEST(Niah, GridDepthsDeterminismAndState) {
  auto grid = niah_depth_grid();
  ASSERT_EQ(grid.size(), 40u);
  EXPECT_EQ(grid[0], 0);
  EXPECT_EQ(grid[1], 3);   // 100/39 = 2.56
  EXPECT_EQ(grid[20], 51);  // 2000/39 = 51.28
  EXPECT_EQ(grid[39], 100);
  NiahOptions o;
  o.seq_len = 512;
  o.batch_size = 2;
  NiahSource a(o), b(o);
  std::set<double> depths;
  std::set<std::string> keys;
  for (int s = 0; s < 60; ++s) {
    NiahExample ex = a.example(s, 0);
    EXPECT_TRUE(std::find(grid.begin(), grid.end(), ex.depth_percent) != grid.end());
    depths.insert(ex.depth_percent);
    keys.insert(ex.key);
  }
  EXPECT_GT(depths.size(), 20u);
  EXPECT_GT(keys.size(), 50u);
  EXPECT_EQ(a.next(3).inputs.to_vector<int32_t>(), b.next(3).inputs.to_vector<int32_t>());
  EXPECT_NE(a.next(3).inputs.to_vector<int32_t>(), a.next(4).inputs.to_vector<int32_t>());
  NiahOptions r1 = o;
  r1.rank = 1;
  r1.world_size = 2;
  EXPECT_NE(NiahSource(r1).example(3, 0).value, a.example(3, 0).value);
  EXPECT_EQ(NiahSource(r1).example(3, 0).value, a.example(3, 2).value);  // global row 2

  NiahOptions other = o;
  other.value = NiahValue::Uuid;
  other.seq_len = 600;
  expect_state_restores(a, 4, other, {"niah", "seq_len"});
}

TEST(Niah, BadOptionsAreInputErrors) {
  using C = ErrorCase<NiahOptions>;
  expect_source_errors<NiahSource>(NiahOptions{}, {
      C{[](NiahOptions& o) { o.seq_len = 200; }, {"niah", "seq_len 200", "too short"}},
      C{[](NiahOptions& o) { o.vocab_size = 100; }, {"vocab_size", "256"}},
      C{[](NiahOptions& o) { o.haystack = NiahHaystack::Essay; o.essay_path = "/nonexistent/essay.txt"; },
        {"essay_path", "/nonexistent/essay.txt"}},
      C{[](NiahOptions& o) { o.depth_percent = 150; }, {"depth_percent"}},
  });
}

// validate(NiahOptions) names the field at fault in key(), which the run config maps to its own key
// (train.seq_len, model.vocab_size, data.niah.*; tests/trainers/data_factory_test.cpp).
TEST(Niah, PreconditionErrorsNameTheOptionField) {
  using C = FieldCase<NiahOptions>;
  expect_invalid_fields(NiahOptions{}, {
      C{[](NiahOptions& o) { o.vocab_size = 255; }, "vocab_size"},
      C{[](NiahOptions& o) { o.batch_size = 0; }, "batch_size"},
      C{[](NiahOptions& o) { o.depth_percent = 101; }, "depth_percent"},
      C{[](NiahOptions& o) { o.haystack = NiahHaystack::Essay; }, "haystack"},
      // The essay file is the source's to read, not an option error.
      C{[](NiahOptions& o) { o.haystack = NiahHaystack::Essay; o.essay_path = "/nonexistent/essay.txt"; }, ""},
      C{[](NiahOptions& o) { o.seq_len = 200; }, "seq_len"},
  });
}

}  // namespace
}  // namespace natsl
