#pragma once
// XXH3-64 checksums (libxxhash, header-only use) of files: state.json records one per checkpoint tensor file
// and CheckpointReader recomputes it, so a flipped byte in weights or moments is caught at load; a tokenizer's
// identity holds the checksum of its model file. (In data/ so that data/ and trainers/ can both use it.)
// Shown as 16 lowercase hex digits, as `xxhsum -H3` prints the hash.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace natsl {

// Streaming XXH3-64 (seed 0): update() with consecutive pieces, digest() = the hash of their concatenation.
class Xxh3Stream {
 public:
  Xxh3Stream();
  ~Xxh3Stream();
  Xxh3Stream(const Xxh3Stream&) = delete;
  Xxh3Stream& operator=(const Xxh3Stream&) = delete;
  void update(const void* data, size_t nbytes);
  uint64_t digest() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

std::string checksum_hex(uint64_t h);  // 16 lowercase hex digits

// XXH3-64 of a whole file. Throws InputError naming the file when it cannot be read.
uint64_t file_xxh3_64(const std::string& path);

}  // namespace natsl
