#pragma once
// Internal to `natsl tokenize` (data/tokenize.cpp): the shard writer of one stream (train or val), the progress
// file's records and their reading on resume, and the outputs an earlier run left. Not for other users.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/shard.h"
#include "data/sync_file.h"

namespace natsl::tokenize_detail {

namespace fs = std::filesystem;

inline const char* const kSplits[2] = {"train", "val"};

inline std::string hex32(uint32_t v) { return fmt::format("{:08x}", v); }
inline std::string shard_path(const std::string& prefix, int split, int64_t index) {
  return fmt::format("{}.{}.{:06d}.bin", prefix, kSplits[split], index);
}

// ---- shards and the progress file -----------------------------------------------------------------------

struct ShardInfo {
  std::string path;
  int64_t tokens = 0;
  uint32_t crc32 = 0;
};

// One stream (train or val): collects tokens, writes a shard every max_tokens. The blocks' token vectors are
// kept as they come (no copy into one buffer) until a shard takes them. position() is the stream's length so
// far; after a resume the first `drop` tokens pushed are those of the shards already kept.
class ShardSink {
 public:
  ShardSink(std::string prefix, int split, int64_t max_tokens, uint32_t token_bytes, uint32_t vocab,
            std::function<void(int split, int64_t index, const ShardInfo&)> on_written)
      : prefix_(std::move(prefix)), split_(split), max_tokens_(max_tokens), token_bytes_(token_bytes), vocab_(vocab),
        on_written_(std::move(on_written)) {}
  void resume(std::vector<ShardInfo> kept, int64_t position, int64_t drop) {
    shards_ = std::move(kept);
    position_ = position;
    drop_ = drop;
  }
  void push(std::vector<uint32_t>&& tokens) {
    const int64_t n = int64_t(tokens.size());
    position_ += n;
    const int64_t dropped = std::min(drop_, n);
    drop_ -= dropped;
    if (dropped == n) return;
    pieces_.push_back({std::move(tokens), size_t(dropped)});
    buffered_ += n - dropped;
    while (buffered_ >= max_tokens_) write(max_tokens_);
  }
  void flush() {
    if (buffered_ > 0) write(buffered_);
  }
  int64_t position() const { return position_; }
  const std::vector<ShardInfo>& shards() const { return shards_; }

 private:
  struct Piece {
    std::vector<uint32_t> tokens;
    size_t begin;  // tokens before it are in earlier shards
  };
  // Writes the next `count` buffered tokens as a shard.
  void write(int64_t count) {
    std::vector<std::span<const uint32_t>> spans;
    size_t left = size_t(count);
    for (auto it = pieces_.begin(); left > 0; ++it) {
      const size_t take = std::min(left, it->tokens.size() - it->begin);
      spans.emplace_back(it->tokens.data() + it->begin, take);
      left -= take;
    }
    ShardInfo s;
    s.path = shard_path(prefix_, split_, int64_t(shards_.size()));
    s.crc32 = write_shard(s.path, spans, token_bytes_, vocab_).crc32;
    s.tokens = count;
    for (left = size_t(count); left > 0;) {  // release what the shard took
      Piece& p = pieces_.front();
      const size_t take = std::min(left, p.tokens.size() - p.begin);
      p.begin += take;
      left -= take;
      if (p.begin == p.tokens.size()) pieces_.pop_front();
    }
    buffered_ -= count;
    shards_.push_back(s);
    on_written_(split_, int64_t(shards_.size()) - 1, s);
  }

  std::string prefix_;
  int split_;
  int64_t max_tokens_;
  uint32_t token_bytes_, vocab_;
  std::function<void(int, int64_t, const ShardInfo&)> on_written_;
  std::deque<Piece> pieces_;
  int64_t buffered_ = 0;
  std::vector<ShardInfo> shards_;
  int64_t position_ = 0, drop_ = 0;
};

inline nlohmann::json shard_record(int split, int64_t index, const ShardInfo& s) {
  return {{"shard", kSplits[split]}, {"index", index}, {"tokens", s.tokens}, {"crc32", hex32(s.crc32)}};
}

// What an interrupted run left that this one keeps.
struct ResumeState {
  std::vector<nlohmann::json> blocks;  // records of blocks [0, blocks.size()): not tokenized again
  std::vector<ShardInfo> shards[2];
  int64_t start[2] = {0, 0};           // each stream's position after those blocks
};

inline int64_t json_count(const nlohmann::json& j, const char* key) {
  const auto& v = j.at(key);
  if (!v.is_number_integer() || v.get<int64_t>() < 0) throw std::invalid_argument(key);
  return v.get<int64_t>();
}

// Reads OUT_PREFIX.progress.jsonl (header line, then block and shard records; a cut last line is ignored) and
// keeps what can be trusted: for each stream, the leading shards that exist with the recorded checksum, and
// the leading blocks whose tokens lie wholly inside those shards.
inline ResumeState read_progress(const std::vector<std::string>& lines, const std::string& prefix, uint32_t token_bytes) {
  ResumeState st;
  std::vector<nlohmann::json> blocks;
  bool shard_ok[2] = {true, true};
  for (size_t i = 1; i < lines.size(); ++i) {
    nlohmann::json j = nlohmann::json::parse(lines[i], nullptr, false);
    if (j.is_discarded() || !j.is_object()) break;
    try {
      if (j.contains("block")) {
        if (json_count(j, "block") != int64_t(blocks.size())) break;
        for (const char* k : {"input", "documents", "train_end", "val_end", "invalid_json", "missing_field", "not_utf8"})
          json_count(j, k);
        blocks.push_back(j);
      } else if (j.contains("shard")) {
        const int split = j.at("shard").get<std::string>() == "val" ? 1 : 0;
        const int64_t index = json_count(j, "index");
        if (!shard_ok[split] || index != int64_t(st.shards[split].size())) continue;
        ShardInfo s{shard_path(prefix, split, index), json_count(j, "tokens"), 0};
        s.crc32 = uint32_t(std::stoul(j.at("crc32").get<std::string>(), nullptr, 16));
        try {
          const Shard sh = Shard::open(s.path, /*verify_checksum=*/true);
          shard_ok[split] = sh.header().crc32 == s.crc32 && sh.size() == s.tokens &&
                            sh.header().token_bytes == token_bytes;
        } catch (const InputError&) {
          shard_ok[split] = false;
        }
        if (shard_ok[split]) st.shards[split].push_back(s);
      }
    } catch (const std::exception&) {
      break;
    }
  }
  int64_t kept[2] = {0, 0};
  for (int s = 0; s < 2; ++s)
    for (const ShardInfo& i : st.shards[s]) kept[s] += i.tokens;
  for (const nlohmann::json& b : blocks) {
    const int64_t end[2] = {b["train_end"].get<int64_t>(), b["val_end"].get<int64_t>()};
    if (end[0] > kept[0] || end[1] > kept[1] || end[0] < st.start[0] || end[1] < st.start[1]) break;
    st.blocks.push_back(b);
    st.start[0] = end[0];
    st.start[1] = end[1];
  }
  return st;
}

inline std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  return lines;
}

// Shard files (and their .tmp) of this prefix: NAME.train.NNNNNN.bin, NAME.val.NNNNNN.bin.
inline std::vector<std::string> existing_outputs(const std::string& prefix) {
  const fs::path p(prefix);
  const fs::path dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
  const std::string base = p.filename().string();
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    for (const char* split : kSplits) {
      const std::string head = base + "." + split + ".";
      if (name.rfind(head, 0) != 0) continue;
      const std::string tail = name.substr(head.size());
      if ((tail.size() == 10 || tail.size() == 14) && tail.find_first_not_of("0123456789") == 6 &&
          (tail.substr(6) == ".bin" || tail.substr(6) == ".bin.tmp"))
        out.push_back((dir / name).string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

inline std::string differing_keys(const nlohmann::json& a, const nlohmann::json& b) {
  if (!a.is_object() || !b.is_object()) return "format";
  std::string keys;
  for (const char* k : {"tokenizer", "options", "inputs"})
    if (a.value(k, nlohmann::json()) != b.value(k, nlohmann::json())) keys += std::string(keys.empty() ? "" : ", ") + k;
  return keys.empty() ? "format" : keys;
}

}  // namespace natsl::tokenize_detail
