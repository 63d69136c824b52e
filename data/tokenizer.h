#pragma once
// The byte-level tokenizer: token b (0..255) is the byte b, plus BOS = 256 and EOS = 257 marking document
// boundaries; vocabulary 258. It needs no tokenizer file and round-trips any byte string exactly.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace natsl {

struct ByteTokenizer {
  static constexpr uint32_t kBos = 256;
  static constexpr uint32_t kEos = 257;
  static constexpr uint32_t kVocabSize = 258;

  // bytes -> tokens, optionally wrapped as BOS bytes... EOS.
  static std::vector<uint32_t> encode(std::string_view text, bool add_bos = false, bool add_eos = false);
  // tokens -> bytes; BOS/EOS are dropped, any other id >= 256 is an error.
  static std::string decode(const std::vector<uint32_t>& tokens);
};

// What every tokenizer natsl reads or writes tokens with offers (the byte tokenizer above, SentencePiece
// models). Implementations are immutable after construction, so encode/decode may be called from many
// threads at once (`natsl tokenize` does).
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string kind() const = 0;          // "byte" | "sentencepiece"
  virtual int64_t vocab_size() const = 0;        // every id encode produces is below it
  virtual std::optional<uint32_t> bos_id() const = 0;  // document start marker, if the tokenizer has one
  virtual std::optional<uint32_t> eos_id() const = 0;  // document end marker, if the tokenizer has one
  // Appends the ids of `text` (no BOS/EOS) to `out`.
  virtual void encode(std::string_view text, std::vector<uint32_t>& out) const = 0;
  // ids -> text; BOS/EOS are dropped; an id >= vocab_size is an InputError.
  virtual std::string decode(std::span<const uint32_t> ids) const = 0;
  // What identifies this exact tokenizer: {"kind", "vocab_size", and for a model file its "xxh3_64"}.
  // Recorded in run directories, shard manifests and checkpoints; resume compares it.
  virtual nlohmann::json identity() const = 0;
};

// config: `tokenizer: {kind: byte}` (the default) or `tokenizer: {kind: sentencepiece, model: PATH}`.
struct TokenizerSpec {
  std::string kind = "byte";
  std::string model;  // the SentencePiece .model file (kind sentencepiece)
};

// Opens the tokenizer a spec names; an unknown kind, a missing or unreadable model file, or a natsl built
// without SentencePiece is an InputError naming it and what to do. (The model file is read here, not when a
// config is parsed, so a config naming a model the machine lacks still loads.)
std::unique_ptr<Tokenizer> open_tokenizer(const TokenizerSpec& spec);

// Text -> shards with a Tokenizer: data/tokenize.h.

}  // namespace natsl
