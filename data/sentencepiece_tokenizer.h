#pragma once
// SentencePiece models (`*.model`, e.g. Llama-2's tokenizer.model) behind the Tokenizer interface, through
// the SentencePiece library (Debian libsentencepiece-dev), and training such a model from text files.
// SentencePiece is optional at build time (CMake NATSL_SENTENCEPIECE): without it every entry point below
// but sentencepiece_available() throws the InputError kSentencePieceMissing.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
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
  // The ids SentencePiece gives the whole text, always. Where the model allows it (see piecewise()), a long
  // text is cut at spaces the model's normalization and pieces make invisible and the parts are encoded
  // separately, each part's ids remembered per thread for the next time the same part comes (SentencePiece's
  // BPE costs ~0.3 us a byte even on short strings and grows with the length of the string; a cached word
  // costs a hash lookup).
  void encode(std::string_view text, std::vector<uint32_t>& out) const override;
  std::string decode(std::span<const uint32_t> ids) const override;

  // Whether encode() cuts texts into parts; when not, why not (one sentence, for a log line).
  bool piecewise() const { return piecewise_; }
  const std::string& whole_document_reason() const { return whole_reason_; }
  // The parts encode() encodes separately, in order (the text itself when piecewise() is false). Their
  // concatenation is the text, less the cut spaces that the model's dummy prefix (or suffix) stands for.
  std::vector<std::string_view> parts(std::string_view text) const;
  // One SentencePiece call on the whole text: what encode() must equal (tests, benchmarks).
  void encode_whole(std::string_view text, std::vector<uint32_t>& out) const;
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
  bool piecewise_ = false;
  std::string whole_reason_;
  uint64_t instance_ = 0;  // unique per tokenizer object in this process: keys the per-thread caches
};

struct SentencePieceTrainOptions {
  std::vector<std::string> inputs;  // text files; each line is a sentence
  int64_t vocab_size = 8000;
  std::string model_type = "bpe";   // bpe | unigram
  int threads = 1;                  // the model depends on the inputs, these options and the thread count
  // Further SentencePieceTrainer options, replacing natsl's choice where they name the same one (e.g.
  // {"normalization_rule_name", "nmt_nfkc"}, {"add_dummy_prefix", "false"}): tests and experiments. The
  // round-trip promise below holds only for natsl's own choices.
  std::vector<std::pair<std::string, std::string>> extra;
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
