#pragma once
// SentencePiece models (`*.model`, e.g. Llama-2's tokenizer.model) behind the Tokenizer interface, through
// the SentencePiece library (Debian libsentencepiece-dev), and training such a model from text files.
// SentencePiece is optional at build time (CMake NATSL_SENTENCEPIECE): without it every entry point below
// but sentencepiece_available() throws the InputError kSentencePieceMissing.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace natsl {

// Whether this natsl was built with SentencePiece.
bool sentencepiece_available();
inline constexpr const char* kSentencePieceMissing =
    "this natsl was built without SentencePiece: install libsentencepiece-dev (scripts/test.sh installs it) and "
    "rebuild";

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // Loads the model file; an error names it. The file is read once: the checksum in identity() is of the
  // very bytes that were loaded.
  explicit SentencePieceTokenizer(const std::string& model_path);
  ~SentencePieceTokenizer() override;

  std::string kind() const override { return "sentencepiece"; }
  int64_t vocab_size() const override { return vocab_size_; }
  std::optional<uint32_t> bos_id() const override { return bos_; }  // none when the model has no BOS piece
  std::optional<uint32_t> eos_id() const override { return eos_; }
  void encode(std::string_view text, std::vector<uint32_t>& out) const override;
  std::string decode(std::span<const uint32_t> ids) const override;
  // {"kind": "sentencepiece", "vocab_size": N, "xxh3_64": checksum of the model file}
  nlohmann::json identity() const override;
  const std::string& model_path() const { return path_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
  std::string checksum_;
  int64_t vocab_size_ = 0;
  std::optional<uint32_t> bos_, eos_;
};

struct SentencePieceTrainOptions {
  std::vector<std::string> inputs;  // text files; each line is a sentence
  int64_t vocab_size = 8000;
  std::string model_type = "bpe";   // bpe | unigram
  int threads = 1;                  // the model depends on the inputs, these options and the thread count
};

struct SentencePieceModel {
  std::string model;  // the serialized model: the bytes of PREFIX.model
  std::string vocab;  // PREFIX.vocab: one "piece<TAB>score" line per id, as spm_train writes it
};

// Trains a model (identity normalization, byte fallback, so that decode(encode(text)) == text for any
// UTF-8 text). Deterministic: the same inputs and options give the same bytes. Bad input (a missing file,
// a vocabulary the corpus cannot fill or too small for the byte pieces, an unknown model type) is an
// InputError saying what to change. Writes nothing: the caller stores the result.
SentencePieceModel train_sentencepiece(const SentencePieceTrainOptions& opts);

}  // namespace natsl
