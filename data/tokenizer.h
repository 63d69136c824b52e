#pragma once
// The byte-level tokenizer: token b (0..255) is the byte b, plus BOS = 256 and EOS = 257 marking document
// boundaries; vocabulary 258. It needs no tokenizer file and round-trips any byte string exactly.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

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
};

// Text files -> shards OUT_PREFIX.train.NNNNNN.bin (and OUT_PREFIX.val.NNNNNN.bin). Each file is one
// document: train gets BOS + bytes[0, cut), val gets bytes[cut, n) + EOS, so the markers stay at true
// document boundaries (cut = n when val_fraction = 0, giving BOS + bytes + EOS). Documents are
// concatenated in the order given; a shard closes when it reaches max_tokens_per_shard (a document may
// continue into the next shard). Shards use u16 tokens and record vocab_size 258.
TokenizeReport tokenize_files(const std::vector<std::string>& inputs, const std::string& out_prefix,
                              const TokenizeOptions& opts = {});

}  // namespace natsl
