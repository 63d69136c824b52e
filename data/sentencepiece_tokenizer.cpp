#include "data/sentencepiece_tokenizer.h"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <unordered_map>

#include <fmt/format.h>

#include "core/error.h"
#include "data/file_checksum.h"

#ifdef NATSL_WITH_SENTENCEPIECE
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#endif

namespace natsl {

#ifdef NATSL_WITH_SENTENCEPIECE

bool sentencepiece_available() { return true; }

namespace {

std::string read_model_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw InputError("tokenizer.model '" + path + "' does not exist or is not a regular file: give the path of a "
                     "SentencePiece .model file (e.g. Llama-2's tokenizer.model), train one with `natsl tokenizer "
                     "train`, or use tokenizer.kind=byte");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError("cannot read tokenizer.model '" + path + "' (permissions?)");
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

}  // namespace

struct SentencePieceTokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path)
    : impl_(std::make_unique<Impl>()), path_(model_path) {
  const std::string bytes = read_model_file(model_path);
  const auto status = impl_->sp.LoadFromSerializedProto(bytes);
  if (!status.ok())
    throw InputError("tokenizer.model '" + model_path + "' is not a SentencePiece model (" + status.ToString() +
                     "); give the .model file that `natsl tokenizer train` or spm_train wrote");
  Xxh3Stream h;
  h.update(bytes.data(), bytes.size());
  checksum_ = checksum_hex(h.digest());
  vocab_size_ = impl_->sp.GetPieceSize();
  if (vocab_size_ <= 0) throw InputError("tokenizer.model '" + model_path + "' holds no pieces");
  // SentencePiece says -1 for a marker the model does not have.
  if (impl_->sp.bos_id() >= 0) bos_ = uint32_t(impl_->sp.bos_id());
  if (impl_->sp.eos_id() >= 0) eos_ = uint32_t(impl_->sp.eos_id());
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

void SentencePieceTokenizer::encode(std::string_view text, std::vector<uint32_t>& out) const {
  std::vector<int> ids;
  const auto status = impl_->sp.Encode(text, &ids);  // const and thread-safe in SentencePiece
  if (!status.ok())
    throw InputError("SentencePiece model '" + path_ + "' cannot encode the text: " + status.ToString());
  out.reserve(out.size() + ids.size());
  for (int id : ids) out.push_back(uint32_t(id));
}

std::string SentencePieceTokenizer::decode(std::span<const uint32_t> ids) const {
  std::vector<int> v;
  v.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (int64_t(ids[i]) >= vocab_size_)
      throw InputError(fmt::format("token {} at index {} is not an id of the SentencePiece model '{}' (vocabulary {})",
                                   ids[i], i, path_, vocab_size_));
    v.push_back(int(ids[i]));
  }
  std::string text;
  const auto status = impl_->sp.Decode(v, &text);  // BOS/EOS (control pieces) decode to nothing
  if (!status.ok()) throw InputError("SentencePiece model '" + path_ + "' cannot decode: " + status.ToString());
  return text;
}

nlohmann::json SentencePieceTokenizer::identity() const {
  return {{"kind", "sentencepiece"}, {"vocab_size", vocab_size_}, {"xxh3_64", checksum_}};
}

SentencePieceModel train_sentencepiece(const SentencePieceTrainOptions& opts) {
  if (opts.inputs.empty()) throw InputError("tokenizer train: give at least one input text file (--input FILE)");
  for (const auto& in : opts.inputs) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(in, ec))
      throw InputError("tokenizer train: input file '" + in + "' does not exist or is not a regular file");
  }
  if (opts.model_type != "bpe" && opts.model_type != "unigram")
    throw InputError("tokenizer train: model type '" + opts.model_type + "' is unknown: use bpe or unigram");
  // 3 control pieces (unk, bos, eos) + 256 byte pieces come first; below that nothing is learnt.
  constexpr int64_t kMinVocab = 3 + 256 + 1;
  if (opts.vocab_size < kMinVocab || opts.vocab_size > (int64_t(1) << 24))
    throw InputError(fmt::format("tokenizer train: vocabulary size {} is out of range: it must be at least {} (the "
                                 "unk/bos/eos pieces and the 256 byte-fallback pieces, plus what is learnt) and at "
                                 "most 16777216", opts.vocab_size, kMinVocab));
  if (opts.threads < 1) throw InputError("tokenizer train: --threads must be at least 1");
  std::string inputs;
  for (const auto& in : opts.inputs) inputs += (inputs.empty() ? "" : ",") + in;
  // Every option that could vary between runs is fixed: all sentences are used in file order (no sampling,
  // no shuffling), the random seed is fixed and the thread count given.
  const std::unordered_map<std::string, std::string> args = {
      {"input", inputs},
      {"model_prefix", ""},
      {"vocab_size", std::to_string(opts.vocab_size)},
      {"model_type", opts.model_type},
      {"num_threads", std::to_string(opts.threads)},
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"character_coverage", "1.0"},
      {"byte_fallback", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"split_digits", "true"},
      {"hard_vocab_limit", "true"},
      {"minloglevel", "2"},  // errors only: they come back in the status
  };
  sentencepiece::SetRandomGeneratorSeed(0x5eed);
  std::string serialized;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, nullptr, &serialized);
  if (!status.ok()) {
    std::string msg = status.message();
    // "./src/trainer_interface.cc(660) [(a) == (b)] Vocabulary size too high ...": keep the sentence.
    if (msg.rfind("./src/", 0) == 0 && msg.find("] ") != std::string::npos) msg = msg.substr(msg.find("] ") + 2);
    // SentencePiece's own wording of a vocabulary the corpus cannot fill.
    if (msg.find("Vocabulary size") != std::string::npos)
      throw InputError("tokenizer train: the corpus cannot fill a vocabulary of " + std::to_string(opts.vocab_size) +
                       " pieces (SentencePiece: " + msg + "); give a smaller --vocab-size or more text");
    throw InputError("tokenizer train: SentencePiece refused the training: " + msg);
  }
  sentencepiece::SentencePieceProcessor sp;
  const auto loaded = sp.LoadFromSerializedProto(serialized);
  if (!loaded.ok()) throw Error("tokenizer train: the trained model does not load: " + loaded.ToString());
  SentencePieceModel m;
  m.model = std::move(serialized);
  for (int i = 0; i < sp.GetPieceSize(); ++i) m.vocab += fmt::format("{}\t{}\n", sp.IdToPiece(i), sp.GetScore(i));
  return m;
}

#else  // built without SentencePiece

bool sentencepiece_available() { return false; }

struct SentencePieceTokenizer::Impl {};

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path) : path_(model_path) {
  throw InputError(std::string("tokenizer.kind sentencepiece: ") + kSentencePieceMissing);
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

void SentencePieceTokenizer::encode(std::string_view, std::vector<uint32_t>&) const {
  throw InputError(kSentencePieceMissing);
}

std::string SentencePieceTokenizer::decode(std::span<const uint32_t>) const { throw InputError(kSentencePieceMissing); }

nlohmann::json SentencePieceTokenizer::identity() const { throw InputError(kSentencePieceMissing); }

SentencePieceModel train_sentencepiece(const SentencePieceTrainOptions&) {
  throw InputError(std::string("tokenizer train: ") + kSentencePieceMissing);
}

#endif

}  // namespace natsl
