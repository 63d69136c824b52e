// The data's one check (trainers/data_factory.h, validate_data_config): a bad value of each key family of the
// data: and tokenizer: sections is a ConfigKeyError whose key() is the key at fault and whose message names it.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "core/config_key_error.h"
#include "trainers/config.h"
#include "trainers/data_factory.h"
#include "trainer_test_util.h"

namespace natsl {
namespace {

// The key of the error validate_data_config throws for `edit(RunConfig{})`, after checking its message holds
// every one of `parts`; "" when it accepts the config.
std::string key_of_error(const std::function<void(RunConfig&)>& edit, const std::vector<std::string>& parts = {}) {
  RunConfig c;
  edit(c);
  try {
    validate_data_config(c);
  } catch (const ConfigKeyError& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    return e.key();
  }
  return "";
}

void text_source(RunConfig& c) { c.data.source = "text"; }

TEST(DataConfigCheck, AcceptsTheDefaultsAndAPlainTextSource) {
  EXPECT_EQ(key_of_error([](RunConfig&) {}), "");
  EXPECT_EQ(key_of_error([](RunConfig& c) {
              text_source(c);
              c.data.text.train = {"a.txt"};  // files are checked at start (make_run_data), not here
            }),
            "");
}

TEST(DataConfigCheck, TextSources) {
  EXPECT_EQ(key_of_error(text_source, {"data.text.train names no file"}), "data.text.train");
  EXPECT_EQ(key_of_error(
                [](RunConfig& c) {
                  text_source(c);
                  c.data.text.train = {"a.txt"};
                  c.data.text.mix = {{"b.txt", 1.0}};
                },
                {"data.text.train and data.text.mix are both set"}),
            "data.text.mix");
  EXPECT_EQ(key_of_error(
                [](RunConfig& c) {
                  text_source(c);
                  c.data.text.mix = {{"x", 1.0}, {"y", 1.0e-300}};
                },
                {"data.text.mix[1] 'y'", "too small"}),
            "data.text.mix");
}

TEST(DataConfigCheck, TokenizerAgainstTheSource) {
  EXPECT_EQ(key_of_error(
                [](RunConfig& c) {
                  text_source(c);
                  c.data.text.train = {"a.txt"};
                  c.tokenizer.kind = "sentencepiece";
                },
                {"tokenizer.model names no file"}),
            "tokenizer.kind");
  EXPECT_EQ(key_of_error(
                [](RunConfig& c) {
                  c.tokenizer.kind = "sentencepiece";
                  c.tokenizer.model = "m.model";
                },
                {"data.source mqar generates its own token ids"}),
            "tokenizer.kind");
}

// MQAR's own preconditions (validate(MqarOptions)) come back under the config key behind the option.
TEST(DataConfigCheck, MqarNamesTheConfigKeyBehindEachOption) {
  EXPECT_EQ(key_of_error([](RunConfig& c) { c.data.mqar.vocab_size = c.model.vocab_size + 1; },
                         {"data.mqar.vocab_size (259) exceeds model.vocab_size (258)"}),
            "data.mqar.vocab_size");
  EXPECT_EQ(key_of_error([](RunConfig& c) { c.train.seq_len = 255; },
                         {"data.mqar: seq_len must be even", "the MQAR sequence length is train.seq_len"}),
            "train.seq_len");
  EXPECT_EQ(key_of_error([](RunConfig& c) { c.data.mqar.num_kv_pairs = 100; }, {"exceeds seq_len 256"}),
            "data.mqar.num_kv_pairs");
  EXPECT_EQ(key_of_error([](RunConfig& c) { c.data.mqar.num_passes = 0; }, {"num_passes"}), "data.mqar.num_passes");
  // The task's vocabulary is the model's unless data.mqar.vocab_size is set: the key is the one that gave it.
  EXPECT_EQ(key_of_error([](RunConfig& c) { c.model.vocab_size = 200; }, {"vocab_size (200) must exceed seq_len"}),
            "model.vocab_size");
  EXPECT_EQ(key_of_error([](RunConfig& c) { c.data.mqar.vocab_size = 100; }, {"vocab_size (100) must exceed seq_len"}),
            "data.mqar.vocab_size");
  // Other sources do not read data.mqar.
  EXPECT_EQ(key_of_error([](RunConfig& c) {
              c.data.source = "niah";
              c.train.seq_len = 1024;  // NIAH's prompt does not fit the default 256
              c.data.mqar.num_kv_pairs = 100;
            }),
            "");
}

// The error of loading the config `yaml`, after checking it is led by that file's line `line` (the key at
// fault) and names `key`.
std::string load_error_at(const std::string& yaml, int line, const std::string& key) {
  testing::TempDir dir;
  const std::string path = dir / "c.yaml";
  testing::write_text(path, yaml);
  const std::string e = testing::error_of([&] { load_config(path); });
  EXPECT_EQ(e.rfind(path + ":" + std::to_string(line) + ": ", 0), 0u) << e;
  EXPECT_NE(e.find(key), std::string::npos) << e;
  return e;
}

// A NIAH config that makes rows loads; the essay file is read when the source is built (make_run_data), not
// here, like the text data's files.
TEST(DataConfigCheck, NiahAcceptsAConfigThatMakesRows) {
  auto niah = [](RunConfig& c) {
    c.data.source = "niah";
    c.train.seq_len = 1024;
  };
  EXPECT_EQ(key_of_error(niah), "");
  EXPECT_EQ(key_of_error([&](RunConfig& c) {
              niah(c);
              c.data.niah.haystack = "essay";
              c.data.niah.essay_path = "not/here/essay.txt";
            }),
            "");
  // Other sources do not read data.niah.
  EXPECT_EQ(key_of_error([](RunConfig& c) { c.data.niah.haystack = "essay"; }), "");
}

TEST(DataConfigCheck, NiahVocabularyBelowTheByteTokens) {
  const std::string e = load_error_at("data:\n  source: niah\ntrain:\n  seq_len: 1024\nmodel:\n  vocab_size: 200\n",
                                      6, "model.vocab_size");
  EXPECT_NE(e.find("data.niah: vocab_size must be >= 256 (byte tokens), got 200"), std::string::npos) << e;
}

TEST(DataConfigCheck, NiahSequenceShorterThanThePrompt) {
  const std::string e = load_error_at("data:\n  source: niah\ntrain:\n  seq_len: 200\n", 4, "train.seq_len");
  EXPECT_NE(e.find("data.niah: seq_len 200 is too short for the prompt; use at least"), std::string::npos) << e;
}

// The key at fault is the haystack (an unset essay_path has no line of its own).
TEST(DataConfigCheck, NiahEssayHaystackWithoutAFile) {
  load_error_at("data:\n  source: niah\n  niah:\n    haystack: essay\ntrain:\n  seq_len: 1024\n", 4,
                "data.niah: haystack is essay but essay_path names no file");
}

}  // namespace
}  // namespace natsl
