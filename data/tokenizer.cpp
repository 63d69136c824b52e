#include "data/tokenizer.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "core/error.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/shard.h"

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

namespace {

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw InputError("input text file '" + path + "' does not exist or is not a regular file.");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError("cannot read input text file '" + path + "'.");
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// Collects tokens and writes a shard every max_tokens tokens: PREFIX.SPLIT.NNNNNN.bin.
class ShardSink {
 public:
  ShardSink(std::string prefix, std::string split, int64_t max_tokens, int64_t vocab_size)
      : prefix_(std::move(prefix)), split_(std::move(split)), max_tokens_(max_tokens), vocab_size_(vocab_size) {}
  void push(uint32_t t) {
    buf_.push_back(t);
    ++total_;
    if (int64_t(buf_.size()) == max_tokens_) flush();
  }
  void flush() {
    if (buf_.empty()) return;
    char idx[16];
    std::snprintf(idx, sizeof idx, "%06zu", paths_.size());
    std::string path = prefix_ + "." + split_ + "." + idx + ".bin";
    write_shard(path, buf_, token_bytes_for_vocab(uint64_t(vocab_size_)), uint32_t(vocab_size_));
    paths_.push_back(path);
    buf_.clear();
  }
  const std::vector<std::string>& paths() const { return paths_; }
  int64_t total() const { return total_; }

 private:
  std::string prefix_, split_;
  int64_t max_tokens_, vocab_size_;
  std::vector<uint32_t> buf_;
  std::vector<std::string> paths_;
  int64_t total_ = 0;
};

}  // namespace

TokenizeReport tokenize_files(const std::vector<std::string>& inputs, const std::string& out_prefix,
                              const TokenizeOptions& opts) {
  return tokenize_files(inputs, out_prefix, opts, *open_tokenizer(TokenizerSpec{}));
}

TokenizeReport tokenize_files(const std::vector<std::string>& inputs, const std::string& out_prefix,
                              const TokenizeOptions& opts, const Tokenizer& tokenizer) {
  if (inputs.empty()) throw InputError("tokenize: give at least one input text file.");
  if (!(opts.val_fraction >= 0.0 && opts.val_fraction < 1.0))
    throw InputError("tokenize: val_fraction must be in [0, 1), got " + std::to_string(opts.val_fraction) + ".");
  if (opts.max_tokens_per_shard < 2)
    throw InputError("tokenize: max_tokens_per_shard must be at least 2, got " +
                     std::to_string(opts.max_tokens_per_shard) + ".");
  std::filesystem::path parent = std::filesystem::path(out_prefix).parent_path();
  std::error_code ec;
  if (!parent.empty() && !std::filesystem::is_directory(parent, ec))
    throw InputError("tokenize: output directory '" + parent.string() + "' (from OUT_PREFIX '" + out_prefix +
                     "') does not exist; create it first.");

  const int64_t vocab = tokenizer.vocab_size();
  const bool bytes_exact = tokenizer.kind() == "byte";
  ShardSink train(out_prefix, "train", opts.max_tokens_per_shard, vocab);
  ShardSink val(out_prefix, "val", opts.max_tokens_per_shard, vocab);
  TokenizeReport r;
  std::vector<uint32_t> ids;
  for (const std::string& path : inputs) {
    std::string text = read_file(path);
    std::string_view doc(text);
    if (opts.strip_utf8_bom && doc.size() >= 3 && doc.substr(0, 3) == "\xEF\xBB\xBF") doc.remove_prefix(3);
    const size_t n = doc.size();
    size_t cut = opts.val_fraction > 0 ? size_t((1.0 - opts.val_fraction) * double(n)) : n;
    // A subword tokenizer sees whole characters: the cut moves forward past UTF-8 continuation bytes.
    if (!bytes_exact)
      while (cut < n && (static_cast<unsigned char>(doc[cut]) & 0xC0) == 0x80) ++cut;
    ShardSink& tail = opts.val_fraction > 0 ? val : train;
    if (auto bos = tokenizer.bos_id()) train.push(*bos);
    ids.clear();
    tokenizer.encode(doc.substr(0, cut), ids);
    for (uint32_t t : ids) train.push(t);
    ids.clear();
    tokenizer.encode(doc.substr(cut), ids);
    for (uint32_t t : ids) tail.push(t);
    if (auto eos = tokenizer.eos_id()) tail.push(*eos);
    r.train_bytes += int64_t(opts.val_fraction > 0 ? cut : n);
    r.val_bytes += int64_t(opts.val_fraction > 0 ? n - cut : 0);
  }
  train.flush();
  val.flush();
  r.train_shards = train.paths();
  r.val_shards = val.paths();
  r.train_tokens = train.total();
  r.val_tokens = val.total();
  r.documents = int64_t(inputs.size());
  return r;
}

}  // namespace natsl
