// Tokenizers behind the Tokenizer interface on the shared corpora: the byte tokenizer, and SentencePiece
// models trained here (BPE and unigram) through the library: round trips, thread safety, determinism of
// training, identity, errors; and text files tokenized into shards with a SentencePiece model.
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "data/sentencepiece_tokenizer.h"
#include "data/shard.h"
#include "data/tokenize.h"
#include "data/tokenizer.h"
#include "tests/data/data_test_util.h"
#include "tests/data/sentencepiece_test_util.h"

namespace natsl {
namespace {

using namespace testing;  // natsl::testing: the helpers of data_test_util.h, sentencepiece_test_util.h

const std::vector<std::string> kCorpora = {"tinyshakespeare.txt", "warandpeace.txt", "wikitext2-test.txt"};

std::vector<uint32_t> encode(const Tokenizer& t, std::string_view text) {
  std::vector<uint32_t> ids;
  t.encode(text, ids);
  return ids;
}

// Models trained once for the whole suite, in one temporary directory: BPE on all of tinyshakespeare, and
// unigram on its first 200 kB (a few seconds together).
class SentencePiece : public TrainedModelSuite<SentencePiece> {
 protected:
  static void SetUpTestSuite() {
    if (!open_model_dir()) return;
    SentencePieceTrainOptions o;
    o.inputs = {shared_data("tinyshakespeare.txt")};
    o.vocab_size = 1000;
    write_bytes(dir_->file("bpe.model"), train_sentencepiece(o).model);
    write_bytes(dir_->file("part.txt"), read_bytes(shared_data("tinyshakespeare.txt")).substr(0, 200000));
    o.inputs = {dir_->file("part.txt")};
    o.model_type = "unigram";
    o.vocab_size = 800;
    write_bytes(dir_->file("unigram.model"), train_sentencepiece(o).model);
  }
};

TEST(TokenizerInterface, ByteTokenizerRoundTripsTheSharedCorpora) {
  auto tok = open_tokenizer(TokenizerSpec{});
  EXPECT_EQ(tok->kind(), "byte");
  EXPECT_EQ(tok->vocab_size(), 258);
  EXPECT_EQ(tok->identity(), (nlohmann::json{{"kind", "byte"}, {"vocab_size", 258}}));
  for (const auto& name : kCorpora) {
    const std::string text = read_bytes(shared_data(name));
    ASSERT_GT(text.size(), 100000u) << name;
    std::vector<uint32_t> ids = encode(*tok, text);
    ASSERT_EQ(ids.size(), text.size()) << name;
    EXPECT_EQ(tok->decode(ids), text) << name;
  }
}

TEST(TokenizerInterface, UnknownKindAndMissingModelAreInputErrors) {
  expect_input_error([] { open_tokenizer(TokenizerSpec{"wordpiece", ""}); }, {"wordpiece", "byte or sentencepiece"});
  if (!sentencepiece_available()) {
    // A build without SentencePiece says what to install.
    expect_input_error([] { open_tokenizer(TokenizerSpec{"sentencepiece", "x.model"}); },
                       {"built without SentencePiece", "libsentencepiece-dev"});
    expect_input_error([] { train_sentencepiece(SentencePieceTrainOptions{}); }, {"built without SentencePiece"});
    return;
  }
  TempDir dir;
  expect_input_error([&] { open_tokenizer(TokenizerSpec{"sentencepiece", dir.file("none.model")}); },
                     {"none.model", "does not exist", "natsl tokenizer train"});
  expect_input_error([] { open_tokenizer(TokenizerSpec{"sentencepiece", ""}); }, {"tokenizer.model names no file"});
  write_bytes(dir.file("junk.model"), "this is not a protobuf model\n");
  expect_input_error([&] { open_tokenizer(TokenizerSpec{"sentencepiece", dir.file("junk.model")}); },
                     {"junk.model", "not a SentencePiece model"});
}

TEST_F(SentencePiece, RoundTripsTheSharedCorporaWithBpeAndUnigram) {
  SKIP_WITHOUT_SENTENCEPIECE();
  for (const char* kind : {"bpe", "unigram"}) {
    auto tok = open_tokenizer(TokenizerSpec{"sentencepiece", model(kind)});
    EXPECT_EQ(tok->kind(), "sentencepiece");
    EXPECT_EQ(tok->vocab_size(), std::string(kind) == "bpe" ? 1000 : 800);
    ASSERT_TRUE(tok->bos_id() && tok->eos_id());
    EXPECT_EQ(*tok->bos_id(), 1u);
    EXPECT_EQ(*tok->eos_id(), 2u);
    for (const auto& name : kCorpora) {
      // War and Peace and WikiText hold characters tinyshakespeare lacks (accents, dashes, the BOM): they go
      // through the byte-fallback pieces.
      std::string text = read_bytes(shared_data(name));
      if (std::string(kind) == "unigram") text = text.substr(0, 300000);  // its lattice is slower
      std::vector<uint32_t> ids = encode(*tok, text);
      ASSERT_FALSE(ids.empty());
      EXPECT_LT(double(ids.size()), 0.75 * double(text.size())) << kind << " " << name << ": pieces are not subwords";
      for (uint32_t id : ids) ASSERT_LT(int64_t(id), tok->vocab_size());
      EXPECT_TRUE(tok->decode(ids) == text) << kind << " " << name << " does not round-trip";
    }
    // BOS/EOS decode to nothing; an id outside the vocabulary is an error naming it.
    std::vector<uint32_t> ids = encode(*tok, "To be, or not to be");
    ids.insert(ids.begin(), *tok->bos_id());
    ids.push_back(*tok->eos_id());
    EXPECT_EQ(tok->decode(ids), "To be, or not to be");
    const std::vector<uint32_t> bad = {5, uint32_t(tok->vocab_size())};
    expect_input_error([&] { tok->decode(bad); }, {std::to_string(tok->vocab_size()), "index 1"});
  }
}

TEST_F(SentencePiece, EncodeFromManyThreadsGivesTheSameIds) {
  SKIP_WITHOUT_SENTENCEPIECE();
  auto tok = open_tokenizer(TokenizerSpec{"sentencepiece", model("bpe")});
  const std::string text = read_bytes(shared_data("warandpeace.txt")).substr(0, 400000);
  const std::vector<uint32_t> want = encode(*tok, text);
  std::vector<std::vector<uint32_t>> got(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < got.size(); ++i)
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < 2; ++rep) got[i] = encode(*tok, text);
    });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(got[i] == want) << "thread " << i;
}

TEST_F(SentencePiece, TrainingIsDeterministicAndTheIdentityFollowsTheModelBytes) {
  SKIP_WITHOUT_SENTENCEPIECE();
  TempDir dir;
  SentencePieceTrainOptions o;
  o.inputs = {dir_->file("part.txt")};
  o.vocab_size = 600;
  const SentencePieceModel a = train_sentencepiece(o), b = train_sentencepiece(o);
  EXPECT_TRUE(a.model == b.model) << "two trainings on the same input gave different models";
  EXPECT_EQ(a.vocab, b.vocab);
  // .vocab: one "piece<TAB>score" line per id, the control pieces first.
  EXPECT_EQ(std::count(a.vocab.begin(), a.vocab.end(), '\n'), 600);
  EXPECT_EQ(a.vocab.substr(0, a.vocab.find('\n')), "<unk>\t0");

  write_bytes(dir.file("a.model"), a.model);
  write_bytes(dir.file("copy.model"), a.model);
  o.vocab_size = 700;
  write_bytes(dir.file("c.model"), train_sentencepiece(o).model);
  const auto ia = SentencePieceTokenizer(dir.file("a.model")).identity();
  EXPECT_EQ(ia.at("kind"), "sentencepiece");
  EXPECT_EQ(ia.at("vocab_size"), 600);
  EXPECT_EQ(ia.at("xxh3_64").get<std::string>().size(), 16u);
  EXPECT_EQ(SentencePieceTokenizer(dir.file("copy.model")).identity(), ia) << "the identity must not name the path";
  const auto ic = SentencePieceTokenizer(dir.file("c.model")).identity();
  EXPECT_NE(ic.at("xxh3_64"), ia.at("xxh3_64"));
  EXPECT_NE(ic.at("vocab_size"), ia.at("vocab_size"));
  // The same vocabulary size from other text: only the checksum tells them apart.
  write_bytes(dir.file("other.txt"), read_bytes(shared_data("wikitext2-test.txt")).substr(0, 200000));
  o.inputs = {dir.file("other.txt")};
  o.vocab_size = 600;
  write_bytes(dir.file("d.model"), train_sentencepiece(o).model);
  const auto id = SentencePieceTokenizer(dir.file("d.model")).identity();
  EXPECT_EQ(id.at("vocab_size"), ia.at("vocab_size"));
  EXPECT_NE(id.at("xxh3_64"), ia.at("xxh3_64"));
}

TEST_F(SentencePiece, BadTrainingInputIsAnInputError) {
  SKIP_WITHOUT_SENTENCEPIECE();
  TempDir dir;
  SentencePieceTrainOptions o;
  o.inputs = {dir.file("missing.txt")};
  expect_input_error([&] { train_sentencepiece(o); }, {"missing.txt", "does not exist"});
  o.inputs = {dir_->file("part.txt")};
  o.model_type = "word";
  expect_input_error([&] { train_sentencepiece(o); }, {"'word'", "bpe or unigram"});
  o.model_type = "bpe";
  o.vocab_size = 100;
  expect_input_error([&] { train_sentencepiece(o); }, {"100", "at least 260"});
  // A tiny corpus cannot fill a large vocabulary.
  write_bytes(dir.file("tiny.txt"), "to be or not to be\nthat is the question\n");
  o.inputs = {dir.file("tiny.txt")};
  o.vocab_size = 5000;
  expect_input_error([&] { train_sentencepiece(o); }, {"5000", "smaller --vocab-size"});
  o.inputs = {};
  expect_input_error([&] { train_sentencepiece(o); }, {"at least one input"});
}

TEST_F(SentencePiece, TokenizeFilesWritesShardsOfTheModelsVocabulary) {
  SKIP_WITHOUT_SENTENCEPIECE();
  TempDir dir;
  auto tok = open_tokenizer(TokenizerSpec{"sentencepiece", model("bpe")});
  const std::string text = read_bytes(shared_data("tinyshakespeare.txt"));
  TokenizeOptions opt;
  opt.val_fraction = 0.1;
  opt.threads = 2;
  TokenizeReport r = tokenize({shared_data("tinyshakespeare.txt")}, dir.file("sp"), *tok, opt);
  ASSERT_EQ(r.train_shards.size(), 1u);
  ASSERT_EQ(r.val_shards.size(), 1u);
  Shard train = Shard::open(r.train_shards[0]), val = Shard::open(r.val_shards[0]);
  EXPECT_EQ(train.header().vocab_size, 1000u);
  EXPECT_EQ(train.header().token_bytes, 2u);
  std::vector<uint32_t> t = train.read_all(), v = val.read_all();
  EXPECT_EQ(t.front(), *tok->bos_id());
  EXPECT_EQ(v.back(), *tok->eos_id());
  EXPECT_EQ(tok->decode(t) + tok->decode(v), text);
  EXPECT_EQ(tok->decode(v).size(), text.size() - 1003854);  // ASCII text: the byte cut of the protocol
  EXPECT_EQ(r.train_tokens + r.val_tokens, int64_t(t.size() + v.size()));
}

}  // namespace
}  // namespace natsl
