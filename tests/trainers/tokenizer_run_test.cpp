// The tokenizer of a run: the `tokenizer:` config section, `natsl tokenizer train/encode/decode`, the
// tokenizer recorded in OUT_DIR/tokenizer.json and in checkpoints, a different tokenizer refused on resume,
// and a model.vocab_size below the tokenizer's refused. The SentencePiece cases skip in a build without it.
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/sentencepiece_tokenizer.h"
#include "trainers/config.h"
#include "trainer_test_util.h"

namespace fs = std::filesystem;

namespace natsl {
namespace {

using testing::read_text;
using testing::run_natsl;
using testing::TempDir;
using testing::write_text;

#define SKIP_WITHOUT_SENTENCEPIECE() \
  if (!sentencepiece_available()) GTEST_SKIP() << kSentencePieceMissing

const std::string kShakespeare = std::string(NATSL_SHARED_DIR) + "/data/tinyshakespeare.txt";

// A tiny text run: the text file and the tokenizer come as overrides.
const char* kTextConfig = R"(model:
  vocab_size: 512
  hidden_size: 16
  num_layers: 1
  num_attn_heads: 2
  intermediate_size: 32
data:
  source: text
  text:
    val_fraction: 0.1
train:
  steps: 4
  batch_size: 2
  seq_len: 16
  warmup_steps: 1
  log_every: 1000
  eval_batches: 2
  device: cpu
)";

// The first 100 kB of tinyshakespeare, and a SentencePiece BPE model of 400 pieces trained on it by
// `natsl tokenizer train` (about a second).
struct Fixture {
  TempDir dir;
  std::string text = dir / "part.txt";
  Fixture() { write_text(text, read_text(kShakespeare).substr(0, 100000)); }
  std::string train_model(const std::string& name, int vocab) {
    auto r = run_natsl("tokenizer train --input " + text + " --vocab-size " + std::to_string(vocab) + " --out " +
                       dir / name);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return dir / (name + ".model");
  }
  std::string train_args(const std::string& out, const std::string& extra = "") {
    write_text(dir / "t.yaml", kTextConfig);
    return "train " + dir / "t.yaml" + " data.text.train=" + text + " train.out_dir=" + dir / out + " " + extra;
  }
};

size_t lines_of(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

TEST(TokenizerConfig, SectionIsParsedSavedAndChecked) {
  TempDir dir;
  write_text(dir / "t.yaml", std::string(kTextConfig) + "tokenizer:\n  kind: sentencepiece\n  model: no/such.model\n");
  // The model file is opened at train start, not at load: a config naming a model this machine lacks loads.
  const std::string text = "data.text.train=" + kShakespeare;
  RunConfig cfg = load_config(dir / "t.yaml", {text});
  EXPECT_EQ(cfg.tokenizer.kind, "sentencepiece");
  EXPECT_EQ(cfg.tokenizer.model, "no/such.model");
  EXPECT_NE(config_to_yaml(cfg).find("tokenizer:\n  kind: sentencepiece\n  model: no/such.model\n"), std::string::npos);
  RunConfig back = config_from_json(config_to_json(cfg), "test");
  EXPECT_EQ(back.tokenizer.model, "no/such.model");
  EXPECT_EQ(load_config(dir / "t.yaml", {text, "tokenizer.kind=byte"}).tokenizer.kind, "byte");

  auto refused = [&](const std::string& yaml, const std::vector<std::string>& overrides,
                     const std::vector<std::string>& parts) {
    std::vector<std::string> o = {text};
    o.insert(o.end(), overrides.begin(), overrides.end());
    testing::expect_load_error(dir / "bad.yaml", yaml, parts, o);
  };
  refused(std::string(kTextConfig) + "tokenizer:\n  kind: sentencepiece\n  vocab: 3\n", {},
          {"bad.yaml:", "unknown key 'tokenizer.vocab'"});
  refused(std::string(kTextConfig) + "tokenizer:\n  kind: wordpiece\n", {}, {"tokenizer.kind", "byte, sentencepiece"});
  refused(std::string(kTextConfig) + "tokenizer:\n  kind: sentencepiece\n", {},
          {"tokenizer.model names no file"});
  refused(kTextConfig, {"tokenizer.kind=sentencepiece", "tokenizer.model=x.model", "data.source=mqar"},
          {"data.source mqar generates its own token ids"});
}

// Every preset loads (tests/trainers/sweep_test.cpp, ShippedConfigs), the 340m ones naming a SentencePiece model.

TEST(TokenizerCli, TrainEncodeDecodeAndBadInput) {
  SKIP_WITHOUT_SENTENCEPIECE();
  Fixture f;
  const std::string model = f.train_model("m", 400);
  EXPECT_GT(fs::file_size(model), 1000u);
  EXPECT_EQ(lines_of(read_text(f.dir / "m.vocab")), 400u);
  write_text(f.dir / "line.txt", "Before we proceed any further, hear me speak.\n");
  auto enc = run_natsl("tokenizer encode --model " + model + " " + f.dir / "line.txt");
  ASSERT_EQ(enc.exit_code, 0) << enc.output;
  std::string ids = enc.output.substr(0, enc.output.find('\n'));
  EXPECT_LT(std::count(ids.begin(), ids.end(), ' ') + 1, 40) << "47 bytes should be fewer pieces: " << ids;
  auto dec = run_natsl("tokenizer decode --model " + model + " " + ids);
  EXPECT_EQ(dec.exit_code, 0);
  EXPECT_EQ(dec.output, "Before we proceed any further, hear me speak.\n");

  for (const auto& [args, part] : std::vector<std::pair<std::string, std::string>>{
           {"--input " + f.dir / "missing.txt" + " --vocab-size 400 --out " + f.dir / "x", "missing.txt"},
           {"--input " + f.text + " --vocab-size 100 --out " + f.dir / "x", "at least 260"},
           {"--input " + f.text + " --vocab-size 400 --model-type word --out " + f.dir / "x", "bpe or unigram"},
           {"--input " + f.dir / "line.txt" + " --vocab-size 3000 --out " + f.dir / "x", "smaller --vocab-size"},
           {"--input " + f.text + " --out " + f.dir / "x", "--vocab-size"},
       }) {
    auto r = run_natsl("tokenizer train " + args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
    EXPECT_EQ(lines_of(r.output), 1u) << r.output;
    EXPECT_NE(r.output.find(part), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(f.dir / "x.model")) << args;
  }
  auto bad_id = run_natsl("tokenizer decode --model " + model + " 5 400");
  EXPECT_EQ(bad_id.exit_code, 2) << bad_id.output;
  EXPECT_NE(bad_id.output.find("vocabulary 400"), std::string::npos) << bad_id.output;
}

TEST(TokenizerRun, RecordedInTheRunDirAndCheckedOnResume) {
  SKIP_WITHOUT_SENTENCEPIECE();
  Fixture f;
  const std::string m1 = f.train_model("m1", 400), m2 = f.train_model("m2", 400);
  write_text(f.dir / "other.txt", read_text(kShakespeare).substr(200000, 100000));
  auto r2 = run_natsl("tokenizer train --input " + f.dir / "other.txt" + " --vocab-size 400 --out " + f.dir / "m3");
  ASSERT_EQ(r2.exit_code, 0) << r2.output;
  const std::string m3 = f.dir / "m3.model";  // same size, other text: only the checksum differs from m1

  // A byte run, stopped at step 2.
  auto a = run_natsl(f.train_args("byte", "train.stop_at_step=2"));
  ASSERT_EQ(a.exit_code, 0) << a.output;
  auto byte_id = nlohmann::json::parse(read_text(f.dir / "byte/tokenizer.json"));
  EXPECT_EQ(byte_id, (nlohmann::json{{"kind", "byte"}, {"vocab_size", 258}}));
  const std::string state = f.dir / "byte/checkpoints/step_000002/state.json";
  EXPECT_EQ(nlohmann::json::parse(read_text(state))["trainer"]["tokenizer"], byte_id);

  // Resuming it with a SentencePiece model is refused, naming both, and changes nothing in the run dir.
  const std::string data_before = read_text(f.dir / "byte/data/train_text.train.000000.bin");
  auto refused = run_natsl(f.train_args("byte", "resume=auto tokenizer.kind=sentencepiece tokenizer.model=" + m1));
  EXPECT_EQ(refused.exit_code, 2) << refused.output;
  EXPECT_EQ(lines_of(refused.output), 1u) << refused.output;
  for (const char* part : {"step_000002", "\"byte\"", "\"sentencepiece\"", "vocab_size 258", "vocab_size 400"})
    EXPECT_NE(refused.output.find(part), std::string::npos) << part << ": " << refused.output;
  EXPECT_TRUE(read_text(f.dir / "byte/data/train_text.train.000000.bin") == data_before);
  EXPECT_EQ(nlohmann::json::parse(read_text(f.dir / "byte/tokenizer.json")), byte_id);

  // A checkpoint written before tokenizers were recorded was a byte run: accepted as one, and still refused
  // with another tokenizer.
  auto st = nlohmann::json::parse(read_text(state));
  st["trainer"].erase("tokenizer");
  write_text(state, st.dump());
  auto refused_old = run_natsl(f.train_args("byte", "resume=auto tokenizer.kind=sentencepiece tokenizer.model=" + m1));
  EXPECT_EQ(refused_old.exit_code, 2) << refused_old.output;
  EXPECT_NE(refused_old.output.find("\"byte\""), std::string::npos) << refused_old.output;
  auto resumed = run_natsl(f.train_args("byte", "resume=auto"));
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos) << resumed.output;

  // A SentencePiece run: tokenizer.json names the model; the same model under another path is the same
  // tokenizer, a model with other bytes (same vocabulary size) is not.
  auto sp = run_natsl(f.train_args("sp", "train.stop_at_step=2 tokenizer.kind=sentencepiece tokenizer.model=" + m1));
  ASSERT_EQ(sp.exit_code, 0) << sp.output;
  auto sp_id = nlohmann::json::parse(read_text(f.dir / "sp/tokenizer.json"));
  EXPECT_EQ(sp_id.at("kind"), "sentencepiece");
  EXPECT_EQ(sp_id.at("vocab_size"), 400);
  EXPECT_EQ(sp_id.at("model"), m1);
  EXPECT_EQ(sp_id.at("xxh3_64").get<std::string>().size(), 16u);
  auto other = run_natsl(f.train_args("sp", "resume=auto tokenizer.kind=sentencepiece tokenizer.model=" + m3));
  EXPECT_EQ(other.exit_code, 2) << other.output;
  EXPECT_NE(other.output.find("xxh3_64 differs"), std::string::npos) << other.output;
  EXPECT_NE(other.output.find(sp_id.at("xxh3_64").get<std::string>()), std::string::npos) << other.output;
  fs::copy_file(m1, f.dir / "moved.model");
  auto same = run_natsl(f.train_args("sp", "resume=auto tokenizer.kind=sentencepiece tokenizer.model=" +
                                               f.dir / "moved.model"));
  EXPECT_EQ(same.exit_code, 0) << same.output;
  // m2 was trained with the same options on the same file: the same bytes, the same tokenizer.
  EXPECT_EQ(read_text(m1), read_text(m2));
  // With a subword tokenizer, bits per byte use the validation text's bytes per token.
  EXPECT_NE(same.output.find("bpb"), std::string::npos) << same.output;
}

TEST(TokenizerRun, ModelVocabularySmallerThanTheTokenizersIsRefused) {
  SKIP_WITHOUT_SENTENCEPIECE();
  Fixture f;
  const std::string m = f.train_model("m", 400);
  auto r = run_natsl(f.train_args("run", "model.vocab_size=300 tokenizer.kind=sentencepiece tokenizer.model=" + m));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(lines_of(r.output), 1u) << r.output;
  for (const char* part : {"model.vocab_size (300)", "(400", "tokenizer.model", "at least 400"})
    EXPECT_NE(r.output.find(part), std::string::npos) << part << ": " << r.output;
  EXPECT_FALSE(fs::exists(f.dir / "run/metrics.jsonl"));
  // A model file that is missing is named, at train start.
  auto missing = run_natsl(f.train_args("run", "tokenizer.kind=sentencepiece tokenizer.model=" + f.dir / "no.model"));
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
  EXPECT_NE(missing.output.find("no.model' does not exist"), std::string::npos) << missing.output;
}

}  // namespace
}  // namespace natsl
