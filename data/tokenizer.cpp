#include "data/tokenizer.h"

#include "core/error.h"
#include "data/sentencepiece_tokenizer.h"

namespace natsl {

std::vector<uint32_t> ByteTokenizer::encode(std::string_view text, bool add_bos, bool add_eos) {
  std::vector<uint32_t> out;
  out.reserve(text.size() + 2);
  if (add_bos) out.push_back(kBos);
  for (char c : text) out.push_back(uint32_t(static_cast<unsigned char>(c)));
  if (add_eos) out.push_back(kEos);
  return out;
}

std::string ByteTokenizer::decode(const std::vector<uint32_t>& tokens) {
  std::string out;
  out.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    uint32_t t = tokens[i];
    if (t == kBos || t == kEos) continue;
    NATSL_CHECK(t < 256, "token ", t, " at index ", i, " is not a byte-tokenizer id (vocab ", kVocabSize, ")");
    out += char(static_cast<unsigned char>(t));
  }
  return out;
}

namespace {

// The byte tokenizer behind the Tokenizer interface.
class ByteLevel final : public Tokenizer {
 public:
  std::string kind() const override { return "byte"; }
  int64_t vocab_size() const override { return ByteTokenizer::kVocabSize; }
  std::optional<uint32_t> bos_id() const override { return ByteTokenizer::kBos; }
  std::optional<uint32_t> eos_id() const override { return ByteTokenizer::kEos; }
  void encode(std::string_view text, std::vector<uint32_t>& out) const override {
    out.reserve(out.size() + text.size());
    for (char c : text) out.push_back(uint32_t(static_cast<unsigned char>(c)));
  }
  std::string decode(std::span<const uint32_t> ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      const uint32_t t = ids[i];
      if (t == ByteTokenizer::kBos || t == ByteTokenizer::kEos) continue;
      if (t >= 256)
        throw InputError("token " + std::to_string(t) + " at index " + std::to_string(i) +
                         " is not a byte-tokenizer id (vocabulary " + std::to_string(ByteTokenizer::kVocabSize) + ")");
      out += char(static_cast<unsigned char>(t));
    }
    return out;
  }
  nlohmann::json identity() const override { return {{"kind", "byte"}, {"vocab_size", ByteTokenizer::kVocabSize}}; }
};

}  // namespace

std::unique_ptr<Tokenizer> open_tokenizer(const TokenizerSpec& spec) {
  if (spec.kind == "byte") return std::make_unique<ByteLevel>();
  if (spec.kind == "sentencepiece") {
    if (!sentencepiece_available()) throw InputError(std::string("tokenizer.kind sentencepiece: ") + kSentencePieceMissing);
    if (spec.model.empty())
      throw InputError("tokenizer.kind is sentencepiece but tokenizer.model names no file: give the path of a "
                       "SentencePiece .model file (or train one with `natsl tokenizer train`)");
    return std::make_unique<SentencePieceTokenizer>(spec.model);
  }
  throw InputError("tokenizer.kind '" + spec.kind + "' is unknown: use byte or sentencepiece");
}

}  // namespace natsl
