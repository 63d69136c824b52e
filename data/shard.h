#pragma once
// Token shards: one file = a 32-byte header followed by the tokens, little-endian. The exact byte layout
// (and a Python writer) is in docs/data-format.md:
//
//   offset size field
//        0    8 magic        "NATSLTOK"
//        8    4 version      u32, = kShardVersion
//       12    4 token_bytes  u32, 2 (u16 tokens) or 4 (u32 tokens)
//       16    8 token_count  u64
//       24    4 crc32        u32, CRC-32 (zlib's) of the token bytes exactly as stored
//       28    4 vocab_size   u32, the tokenizer's vocabulary size (every token < it), 0 = not recorded
//       32    -  tokens      token_count * token_bytes bytes, nothing after them
//
// Opening a shard checks all of it (existence, magic, version, width, size, checksum) and throws
// natsl::InputError naming the file and what to do, so a bad shard fails at start, not mid-run.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace natsl {

inline constexpr char kShardMagic[8] = {'N', 'A', 'T', 'S', 'L', 'T', 'O', 'K'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 32;

struct ShardHeader {
  uint32_t version = kShardVersion;
  uint32_t token_bytes = 2;
  uint64_t token_count = 0;
  uint32_t crc32 = 0;
  uint32_t vocab_size = 0;
};

// The narrowest width (2 or 4 bytes) that holds every token id below vocab_size.
uint32_t token_bytes_for_vocab(uint64_t vocab_size);

// Writes a shard atomically (to PATH.tmp, then renamed), so a crash never leaves a valid-looking partial
// file. Every token must fit in token_bytes and, when vocab_size != 0, be < vocab_size.
void write_shard(const std::string& path, std::span<const uint32_t> tokens, uint32_t token_bytes,
                 uint32_t vocab_size);

// A read-only, memory-mapped shard. Copies share the mapping.
class Shard {
 public:
  // Validates the file; verify_checksum = false skips the CRC pass (the only O(size) part).
  static Shard open(const std::string& path, bool verify_checksum = true);

  const std::string& path() const;
  const ShardHeader& header() const;
  int64_t size() const { return int64_t(header().token_count); }
  uint32_t token(int64_t i) const;
  // Copies tokens [start, start + n) into out as int32 (the model's id type).
  void read(int64_t start, int64_t n, int32_t* out) const;
  std::vector<uint32_t> read_all() const;
  uint32_t max_token() const;  // scans the shard; 0 for an empty one

 private:
  struct Mapping;
  std::shared_ptr<const Mapping> map_;
};

// One-paragraph description for `natsl inspect`: header fields, checksum status, first tokens.
std::string describe_shard(const std::string& path);

// Shard paths named by a spec: an existing file, a directory (its *.bin files), or a glob pattern
// ("data/shakes.train.*.bin"). Sorted by name; InputError when nothing matches.
std::vector<std::string> resolve_shard_paths(const std::string& spec);

}  // namespace natsl
