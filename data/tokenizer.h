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

struct TokenizeOptions {
  // Fraction of each document (by bytes, from its end) that goes to the validation shards. The cut is at
  // floor((1 - val_fraction) * n), the char-rnn/nanoGPT 90/10 convention; 0 writes train shards only.
  double val_fraction = 0.0;
  int64_t max_tokens_per_shard = int64_t(1) << 30;
  // Drop a leading UTF-8 byte-order mark (EF BB BF) of each file (warandpeace.txt has one).
  bool strip_utf8_bom = true;
};

struct TokenizeReport {
  std::vector<std::string> train_shards, val_shards;
  int64_t train_tokens = 0, val_tokens = 0;
  int64_t documents = 0;
  int64_t train_bytes = 0, val_bytes = 0;  // text bytes behind each stream (BOMs dropped)
};

// Text files -> shards OUT_PREFIX.train.NNNNNN.bin (and OUT_PREFIX.val.NNNNNN.bin). Each file is one
// document: train gets BOS + bytes[0, cut), val gets bytes[cut, n) + EOS, so the markers stay at true
// document boundaries (cut = n when val_fraction = 0, giving BOS + bytes + EOS). Documents are
// concatenated in the order given; a shard closes when it reaches max_tokens_per_shard (a document may
// continue into the next shard). Shards use u16 tokens and record vocab_size 258.
TokenizeReport tokenize_files(const std::vector<std::string>& inputs, const std::string& out_prefix,
                              const TokenizeOptions& opts = {});
// The same with any tokenizer: BOS/EOS are its own (left out where it has none), the shards record its
// vocab_size and use the narrowest token width that holds it (token_bytes_for_vocab). For a tokenizer other
// than the byte one the validation cut moves forward to the next UTF-8 character boundary.
TokenizeReport tokenize_files(const std::vector<std::string>& inputs, const std::string& out_prefix,
                              const TokenizeOptions& opts, const Tokenizer& tokenizer);

}  // namespace natsl
