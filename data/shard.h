#pragma once
// Token shards: one file = a header followed by the tokens, little-endian. The exact byte layout (and a
// Python writer) is in docs/data-format.md. Version 2 (written since the max-id check) has a 40-byte header:
//
//   offset size field
//        0    8 magic         "NATSLTOK"
//        8    4 version       u32, 2 (1 = the older 32-byte header, still read)
//       12    4 token_bytes   u32, 2 (u16 tokens) or 4 (u32 tokens)
//       16    8 token_count   u64
//       24    4 crc32         u32, CRC-32 (zlib's) of the token bytes exactly as stored
//       28    4 vocab_size    u32, the tokenizer's vocabulary size (every token < it), 0 = not recorded
//       32    4 max_token     u32, the largest token id (0 when empty)          [version 2 only]
//       36    4 header_crc32  u32, CRC-32 of header bytes [0, 36)               [version 2 only]
//       40    -  tokens       token_count * token_bytes bytes, nothing after them
//
// Opening a shard checks all of it (existence, magic, version, width, size, checksums, every id below the
// recorded vocab_size) and throws natsl::InputError naming the file and what to do, so a bad shard fails at
// start, not mid-run. The recorded max_token lets a run check ids against the model's vocabulary without a
// pass over the tokens; version 1 shards get that pass at open.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace natsl {

inline constexpr char kShardMagic[8] = {'N', 'A', 'T', 'S', 'L', 'T', 'O', 'K'};
inline constexpr uint32_t kShardVersion = 2;  // written; 1 and 2 are read
inline constexpr size_t kShardHeaderBytesV1 = 32;
inline constexpr size_t kShardHeaderBytes = 40;

struct ShardHeader {
  uint32_t version = kShardVersion;
  uint32_t token_bytes = 2;
  uint64_t token_count = 0;
  uint32_t crc32 = 0;
  uint32_t vocab_size = 0;
  uint32_t max_token = 0;  // version 1: found by a pass over the tokens at open
  size_t header_bytes() const { return version == 1 ? kShardHeaderBytesV1 : kShardHeaderBytes; }
};

// The narrowest width (2 or 4 bytes) that holds every token id below vocab_size.
uint32_t token_bytes_for_vocab(uint64_t vocab_size);

// Writes a version-2 shard atomically (to PATH.tmp, fsynced, renamed, directory fsynced), so a crash never
// leaves a valid-looking partial file. Every token must fit in token_bytes and, when vocab_size != 0, be < vocab_size.
// Returns the header written (its crc32 for manifests).
ShardHeader write_shard(const std::string& path, std::span<const uint32_t> tokens, uint32_t token_bytes,
                        uint32_t vocab_size);
// The same, the tokens being the concatenation of `pieces` (no copy into one buffer).
ShardHeader write_shard(const std::string& path, std::span<const std::span<const uint32_t>> pieces,
                        uint32_t token_bytes, uint32_t vocab_size);

// A read-only, memory-mapped shard. Copies share the mapping.
class Shard {
 public:
  // Validates the file; verify_checksum = false skips the pass over the tokens (CRC and max id, the only
  // O(size) part) for version-2 shards, whose header records the max id.
  static Shard open(const std::string& path, bool verify_checksum = true);

  const std::string& path() const;
  const ShardHeader& header() const;
  int64_t size() const { return int64_t(header().token_count); }
  uint32_t token(int64_t i) const;
  // Copies tokens [start, start + n) into out as int32 (the model's id type).
  void read(int64_t start, int64_t n, int32_t* out) const;
  std::vector<uint32_t> read_all() const;
  uint32_t max_token() const { return header().max_token; }  // 0 for an empty shard
  // Index of the first token >= limit, or -1 (a pass over the tokens; for error messages).
  int64_t first_token_at_least(uint64_t limit) const;

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
