// SentencePieceTokenizer::encode cuts long texts at spaces and encodes the parts (cached per thread): its
// ids must be those of one SentencePiece call on the whole text, for every model option that changes where
// a cut is invisible. Models with such options are trained here (small corpora, small vocabularies); each
// is checked on the shared corpora and on adversarial text (runs of spaces, tabs, CR LF, literal U+2581,
// NBSP and ideographic spaces that NFKC maps to spaces, combining marks, emoji, CJK, control characters,
// long words). Models whose options make cuts unsafe must say so and encode whole.
#include <gtest/gtest.h>

#include <random>

#include "data/sentencepiece_tokenizer.h"
#include "data/shard.h"
#include "data/tokenize.h"
#include "tests/data/data_test_util.h"
#include "tests/data/sentencepiece_test_util.h"

namespace natsl {
namespace {

using namespace testing;  // natsl::testing: the helpers of data_test_util.h, sentencepiece_test_util.h

struct Variant {
  std::string name;
  std::string type;  // bpe | unigram
  std::vector<std::pair<std::string, std::string>> extra;
  bool piecewise;  // whether the model must let encode() cut
};

// SentencePiece's own defaults, against natsl's choices (identity, no whitespace removal, split digits,
// byte fallback).
const std::vector<std::pair<std::string, std::string>> kSpmDefaults = {{"normalization_rule_name", "nmt_nfkc"},
                                                                        {"remove_extra_whitespaces", "true"},
                                                                        {"split_digits", "false"},
                                                                        {"byte_fallback", "false"}};

std::vector<std::pair<std::string, std::string>> with(std::vector<std::pair<std::string, std::string>> a,
                                                      const std::vector<std::pair<std::string, std::string>>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

const std::vector<Variant> kVariants = {
    {"bpe_natsl", "bpe", {}, true},
    {"bpe_spm_defaults", "bpe", kSpmDefaults, true},
    {"bpe_no_dummy_prefix", "bpe", {{"add_dummy_prefix", "false"}}, true},
    {"bpe_suffix", "bpe", {{"treat_whitespace_as_suffix", "true"}}, true},
    {"bpe_suffix_no_dummy", "bpe", {{"treat_whitespace_as_suffix", "true"}, {"add_dummy_prefix", "false"}}, true},
    {"bpe_suffix_spm_defaults", "bpe", with(kSpmDefaults, {{"treat_whitespace_as_suffix", "true"}}), true},
    {"bpe_no_digit_split", "bpe", {{"split_digits", "false"}}, true},
    // Llama-2's options: pieces of whitespace runs ("▁▁▁▁"), user-defined symbols.
    {"bpe_ws_pieces_user_symbols",
     "bpe",
     {{"allow_whitespace_only_pieces", "true"}, {"user_defined_symbols", "<sep>,@-@,▁▁"}},
     true},
    // Unsafe: a space in the middle of pieces; a part could not keep its leading space; unigram sums.
    {"bpe_no_split_by_whitespace", "bpe", {{"split_by_whitespace", "false"}}, false},
    {"bpe_no_dummy_remove_ws", "bpe", with(kSpmDefaults, {{"add_dummy_prefix", "false"}}), false},
    {"unigram_natsl", "unigram", {}, false},
    {"unigram_spm_defaults", "unigram", kSpmDefaults, false},
};

const std::vector<std::string> kCorpora = {"tinyshakespeare.txt", "warandpeace.txt", "wikitext2-valid.txt",
                                           "wikitext2-test.txt"};

std::vector<uint32_t> encode(const SentencePieceTokenizer& t, std::string_view text) {
  std::vector<uint32_t> ids;
  t.encode(text, ids);
  return ids;
}
std::vector<uint32_t> whole(const SentencePieceTokenizer& t, std::string_view text) {
  std::vector<uint32_t> ids;
  t.encode_whole(text, ids);
  return ids;
}

// Where two id lists first differ, for the failure message.
std::string first_difference(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return "ids differ at " + std::to_string(i) + " of " + std::to_string(a.size()) + " / " + std::to_string(b.size());
}

// Text made of pieces chosen to meet at every kind of boundary a cut has to respect.
std::string adversarial(std::mt19937& rng, size_t bytes) {
  static const std::vector<std::string> atoms = {
      "a", "b", "the", "The", "of", "and", "be", "to", "xyzzy", "Pierre", "said", ".", ",", "!", "'", "\"", "-",
      "1", "23", "456", "7.5", " ", " ", " ", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r",
      "\xE2\x96\x81",          // U+2581 itself, as text
      "\xC2\xA0",              // NBSP: NFKC -> space
      "\xE3\x80\x80",          // ideographic space: NFKC -> space
      "\xE2\x80\x83",          // em space
      "\xCC\x81",              // combining acute accent (after a space, after a letter)
      "e\xCC\x81", "\xC3\xA9",  // e + combining acute, precomposed e acute
      "\xEF\xBC\xA1",          // fullwidth A: NFKC -> A
      "\xEF\xAC\x81",          // the ligature fi: NFKC -> fi
      "\xE2\x91\xA0",          // circled 1: NFKC -> 1
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E",  // CJK
      "\xF0\x9F\x98\x80", "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",  // emoji, with a skin-tone modifier
      "\x01", "\x1F", "\x7F", "\xC2\x85",  // control characters (NFKC removes or maps some)
      "\xE2\x80\x8B",                      // zero-width space
      "<sep>", "@-@", "\xE2\x96\x81\xE2\x96\x81",
  };
  std::string s;
  std::uniform_int_distribution<size_t> pick(0, atoms.size() - 1);
  while (s.size() < bytes) s += atoms[pick(rng)];
  return s;
}

class SentencePiecePiecewise : public TrainedModelSuite<SentencePiecePiecewise> {
 protected:
  static void SetUpTestSuite() {
    if (!open_model_dir()) return;
    // ~250 kB of varied text, with some adversarial lines so that their characters get pieces.
    std::string corpus;
    for (const auto& name : kCorpora) corpus += read_bytes(shared_data(name)).substr(100000, 60000) + "\n";
    std::mt19937 rng(7);
    for (int i = 0; i < 200; ++i) corpus += adversarial(rng, 60) + "\n";
    write_bytes(dir_->file("corpus.txt"), corpus);
    for (const Variant& v : kVariants) {
      SentencePieceTrainOptions o;
      o.inputs = {dir_->file("corpus.txt")};
      o.vocab_size = 800;
      o.model_type = v.type;
      o.extra = v.extra;
      write_bytes(dir_->file(v.name + ".model"), train_sentencepiece(o).model);
    }
  }
};

TEST_F(SentencePiecePiecewise, ModelsSayWhetherTheyCanBeCut) {
  SKIP_WITHOUT_SENTENCEPIECE();
  for (const Variant& v : kVariants) {
    SentencePieceTokenizer tok(model(v.name));
    EXPECT_EQ(tok.piecewise(), v.piecewise) << v.name << ": " << tok.whole_document_reason();
    EXPECT_EQ(tok.whole_document_reason().empty(), v.piecewise) << v.name;
  }
  EXPECT_NE(SentencePieceTokenizer(model("unigram_natsl")).whole_document_reason().find("unigram"), std::string::npos);
  EXPECT_NE(SentencePieceTokenizer(model("bpe_no_split_by_whitespace")).whole_document_reason().find("U+2581"),
            std::string::npos);
  EXPECT_NE(SentencePieceTokenizer(model("bpe_no_dummy_remove_ws")).whole_document_reason().find("dummy prefix"),
            std::string::npos);
}

TEST_F(SentencePiecePiecewise, TheCutterCutsLongTextsIntoWords) {
  SKIP_WITHOUT_SENTENCEPIECE();
  const std::string text = read_bytes(shared_data("warandpeace.txt")).substr(0, 200000);
  const int64_t spaces = std::count(text.begin(), text.end(), ' ');
  for (const Variant& v : kVariants) {
    SentencePieceTokenizer tok(model(v.name));
    const std::vector<std::string_view> parts = tok.parts(text);
    if (!v.piecewise) {
      EXPECT_EQ(parts.size(), 1u) << v.name;
      continue;
    }
    // Nearly every space of English prose is a cut.
    EXPECT_GT(int64_t(parts.size()), spaces * 9 / 10) << v.name;
    // The parts are the text, in order, less the cut spaces (kept in a part without a dummy prefix).
    std::string joined;
    const bool dummy = v.name.find("no_dummy") == std::string::npos;
    const bool suffix = v.name.find("suffix") != std::string::npos;
    for (size_t i = 0; i < parts.size(); ++i) {
      EXPECT_FALSE(parts[i].empty()) << v.name << " part " << i;
      if (dummy && i > 0) joined += ' ';
      joined += parts[i];
      if (!dummy && suffix && i + 1 < parts.size()) {
        EXPECT_EQ(parts[i].back(), ' ') << v.name << " part " << i;
      }
      if (!dummy && !suffix && i > 0) {
        EXPECT_EQ(parts[i].front(), ' ') << v.name << " part " << i;
      }
    }
    EXPECT_TRUE(joined == text) << v.name << ": the parts do not make up the text";
  }
}

TEST_F(SentencePiecePiecewise, IdsEqualWholeTextIdsOnTheSharedCorpora) {
  SKIP_WITHOUT_SENTENCEPIECE();
  for (const Variant& v : kVariants) {
    if (!v.piecewise) continue;  // encode() is encode_whole() there (the adversarial test still runs them)
    SentencePieceTokenizer tok(model(v.name));
    for (const auto& name : kCorpora) {
      const std::string all = read_bytes(shared_data(name));
      // One long document (~300 kB), and ~2 kB documents as JSONL gives them.
      const std::string doc = all.substr(all.size() / 3, 300000);
      const std::vector<uint32_t> want = whole(tok, doc), got = encode(tok, doc);
      EXPECT_TRUE(got == want) << v.name << " " << name << ": " << first_difference(got, want);
      for (size_t at = 0; at < 120000; at += 2000) {
        const std::string_view d = std::string_view(all).substr(at, 2000);
        const std::vector<uint32_t> w = whole(tok, d), g = encode(tok, d);
        ASSERT_TRUE(g == w) << v.name << " " << name << " at " << at << ": " << first_difference(g, w);
      }
    }
  }
}

TEST_F(SentencePiecePiecewise, IdsEqualWholeTextIdsOnAdversarialText) {
  SKIP_WITHOUT_SENTENCEPIECE();
  std::vector<std::string> texts = {
      "   leading spaces and trailing spaces   ",
      " one leading space, one trailing ",
      "runs  of   spaces    between     words, and\ttabs\t \tand \t mixed",
      "lines\nend\r\nhere \n and \r\n there\n\n\nand  \n  indented\n",
      "\xE2\x96\x81literal \xE2\x96\x81 U+2581 a\xE2\x96\x81 \xE2\x96\x81" "b \xE2\x96\x81\xE2\x96\x81 c",
      "nbsp\xC2\xA0space x \xC2\xA0y z\xC2\xA0 w \xE3\x80\x80ideographic\xE3\x80\x80 space",
      "accent \xCC\x81" "after a space, e\xCC\x81 and \xC3\xA9 and \xEF\xBC\xA1 \xEF\xAC\x81ne",
      "emoji \xF0\x9F\x98\x80 \xF0\x9F\x98\x80\xF0\x9F\x98\x80 and CJK \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E "
      "\xE6\x97\xA5 \xE6\x9C\xAC",
      "control \x01 chars\x01 \x7F here \x1F and \xC2\x85 next",
      "digits 1 23 456 7.5 1,000,000 2026-12-04",
      "<sep> user <sep>defined@-@symbols @-@ here\xE2\x96\x81\xE2\x96\x81 x",
      std::string(20000, 'x') + " " + std::string(3000, 'y') + " z",  // words longer than the cache takes
      std::string(5000, ' '),
      std::string(5000, ' ').insert(0, 1, 'x') + "y",
  };
  // Binary-ish UTF-8 without NUL: random code points of every length.
  std::mt19937 rng(17);
  for (int t = 0; t < 20; ++t) {
    std::string s;
    std::uniform_int_distribution<uint32_t> cp(1, 0x10FFFF), len(0, 3), space(0, 4);
    while (s.size() < 2000) {
      uint32_t c = cp(rng);
      const uint32_t l = len(rng);
      if (l == 0) c = 1 + c % 0x7F;
      else if (l == 1) c = 0x80 + c % 0x780;
      else if (l == 2) c = 0x800 + c % 0xF800;
      if (c >= 0xD800 && c < 0xE000) continue;  // surrogates are not UTF-8
      if (c < 0x80) s += char(c);
      else if (c < 0x800) s += {char(0xC0 | (c >> 6)), char(0x80 | (c & 0x3F))};
      else if (c < 0x10000)
        s += {char(0xE0 | (c >> 12)), char(0x80 | ((c >> 6) & 0x3F)), char(0x80 | (c & 0x3F))};
      else
        s += {char(0xF0 | (c >> 18)), char(0x80 | ((c >> 12) & 0x3F)), char(0x80 | ((c >> 6) & 0x3F)),
              char(0x80 | (c & 0x3F))};
      if (space(rng) == 0) s += ' ';
    }
    texts.push_back(s);
  }
  for (int t = 0; t < 150; ++t) texts.push_back(adversarial(rng, 200 + 40 * size_t(t)));
  for (const Variant& v : kVariants) {
    SentencePieceTokenizer tok(model(v.name));
    int64_t cut = 0;
    for (size_t i = 0; i < texts.size(); ++i) {
      const std::vector<uint32_t> want = whole(tok, texts[i]), got = encode(tok, texts[i]);
      ASSERT_TRUE(got == want) << v.name << " text " << i << ": " << first_difference(got, want);
      cut += int64_t(tok.parts(texts[i]).size()) - 1;
    }
    // The adversarial texts are cut too, where the model allows it (not a vacuous comparison).
    if (v.piecewise) {
      EXPECT_GT(cut, 5000) << v.name;
    }
  }
}

TEST_F(SentencePiecePiecewise, TwoModelsOnOneThreadDoNotShareCachedParts) {
  SKIP_WITHOUT_SENTENCEPIECE();
  // Same text, different models, alternately on this thread: a cache that outlived its model would show.
  const std::string text = read_bytes(shared_data("tinyshakespeare.txt")).substr(0, 20000);
  for (int rep = 0; rep < 3; ++rep)
    for (const char* name : {"bpe_natsl", "bpe_suffix", "bpe_no_dummy_prefix"}) {
      SentencePieceTokenizer tok(model(name));
      EXPECT_TRUE(encode(tok, text) == whole(tok, text)) << name << " rep " << rep;
    }
  SentencePieceTokenizer a(model("bpe_natsl")), b(model("bpe_spm_defaults"));
  for (int rep = 0; rep < 3; ++rep) {
    EXPECT_TRUE(encode(a, text) == whole(a, text));
    EXPECT_TRUE(encode(b, text) == whole(b, text));
  }
}

TEST_F(SentencePiecePiecewise, IdsStayRightWhenThePerThreadCacheFillsAndStartsOver) {
  SKIP_WITHOUT_SENTENCEPIECE();
  // ~330k distinct random words (the cache keeps 2^18 parts), in 100 kB documents encoded one after
  // another on this thread, with common words mixed in so that hits follow the restart.
  SentencePieceTokenizer tok(model("bpe_natsl"));
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> letter('a', 'z'), len(4, 9), common(0, 3);
  const std::vector<std::string> words = {"the", "and", "of", "Pierre"};
  std::string text;
  for (int w = 0; w < 330000; ++w) {
    std::string word(size_t(len(rng)), ' ');
    for (char& ch : word) ch = char(letter(rng));
    text += word + " " + words[size_t(common(rng))] + (w % 13 == 0 ? ".\n" : " ");
  }
  int64_t parts = 0;
  for (size_t at = 0; at < text.size(); at += 100000) {
    const std::string_view doc = std::string_view(text).substr(at, 100000);
    parts += int64_t(tok.parts(doc).size());
    const std::vector<uint32_t> got = encode(tok, doc), want = whole(tok, doc);
    ASSERT_TRUE(got == want) << "document at " << at << ": " << first_difference(got, want);
  }
  EXPECT_GT(parts, 600000);
}

TEST_F(SentencePiecePiecewise, TokenizeSaysOnceWhenAModelEncodesDocumentsWhole) {
  SKIP_WITHOUT_SENTENCEPIECE();
  TempDir dir;
  write_bytes(dir.file("a.txt"), read_bytes(shared_data("tinyshakespeare.txt")).substr(0, 30000));
  write_bytes(dir.file("b.txt"), read_bytes(shared_data("warandpeace.txt")).substr(1000, 30000));  // no BOM
  for (const char* name : {"unigram_natsl", "bpe_natsl"}) {
    SentencePieceTokenizer tok(model(name));
    ::testing::internal::CaptureStderr();
    TokenizeReport r = tokenize({dir.file("a.txt"), dir.file("b.txt")}, dir.file(name), tok, TokenizeOptions{});
    const std::string err = ::testing::internal::GetCapturedStderr();
    const size_t notes = size_t(std::count(err.begin(), err.end(), '\n'));
    if (std::string(name) == "unigram_natsl") {
      EXPECT_EQ(notes, 1u) << err;
      EXPECT_NE(err.find("encoded in one call"), std::string::npos) << err;
      EXPECT_NE(err.find("unigram"), std::string::npos) << err;
    } else {
      EXPECT_EQ(err, "");
    }
    // The shards hold the whole-document ids either way.
    std::vector<uint32_t> want = {*tok.bos_id()};
    tok.encode_whole(read_bytes(dir.file("a.txt")), want);
    want.push_back(*tok.eos_id());
    want.push_back(*tok.bos_id());
    tok.encode_whole(read_bytes(dir.file("b.txt")), want);
    want.push_back(*tok.eos_id());
    ASSERT_EQ(r.train_shards.size(), 1u);
    EXPECT_TRUE(Shard::open(r.train_shards[0]).read_all() == want) << name;
  }
}

}  // namespace
}  // namespace natsl
