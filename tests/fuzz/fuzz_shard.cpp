// Fuzzes token shards (Shard::open, the loaders over them). Byte 0 steers the run, the rest is the file:
//   bit 0: recompute the CRCs (token and header) first, so mutations reach the checks behind them
//   bit 1: open with verify_checksum
//   bits 2-3: the model vocab_size the loaders check against (0 = none, 258, 300, 65536)
// Properties: an opened shard's ids never exceed its max_token when it was verified; ids served by the
// loaders are always below the model's vocab_size (the start-up check of issue 12).
#include <algorithm>
#include <array>
#include <cstring>

#include "core/error.h"
#include "data/crc32.h"
#include "data/loader.h"
#include "data/shard.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

void reseal(std::string& b) {
  if (b.size() < natsl::kShardHeaderBytesV1) return;
  uint32_t version;
  std::memcpy(&version, b.data() + 8, 4);
  const size_t hb = version == 1 ? natsl::kShardHeaderBytesV1 : natsl::kShardHeaderBytes;
  if (b.size() < hb) return;
  uint32_t crc = natsl::crc32_update(0, b.data() + hb, b.size() - hb);
  std::memcpy(b.data() + 24, &crc, 4);
  if (hb == natsl::kShardHeaderBytes) {
    crc = natsl::crc32_update(0, b.data(), 36);
    std::memcpy(b.data() + 36, &crc, 4);
  }
}

void check_ids(const natsl::Tensor& t, int64_t vocab) {
  for (int32_t id : t.to_vector<int32_t>())
    if (vocab > 0 && (id < 0 || id >= vocab) && id != natsl::kIgnoreIndex) natsl::fuzz::broken("a loader served an id >= vocab_size");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace natsl;
  if (size == 0) return 0;
  static fuzz::MemFile file;
  const uint8_t flags = data[0];
  std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  if (flags & 1) reseal(bytes);
  const bool verify = flags & 2;
  const int64_t vocab = std::array<int64_t, 4>{0, 258, 300, 65536}[(flags >> 2) & 3];
  const std::string& path = file.set(bytes);
  try {
    Shard s = Shard::open(path, verify);
    const ShardHeader& h = s.header();
    if (uint64_t(s.size()) * h.token_bytes + h.header_bytes() != bytes.size()) fuzz::broken("size mismatch");
    std::vector<uint32_t> all = s.read_all();
    const uint32_t mx = all.empty() ? 0 : *std::max_element(all.begin(), all.end());
    if ((verify || h.version == 1) && mx != s.max_token()) fuzz::broken("max_token is not the largest id");
    if ((verify || h.version == 1) && h.vocab_size != 0 && !all.empty() && mx >= h.vocab_size)
      fuzz::broken("an opened shard holds an id >= its vocab_size");
    if (verify) describe_shard(path);
  } catch (const InputError&) {
  }
  // The loaders always verify; whatever they accept must respect the model's vocabulary.
  try {
    const LoaderOptions o{.batch_size = 2, .seq_len = 3, .vocab_size = vocab};
    TokenWindowLoader loader({path}, o);
    for (int64_t step = 0; step < 2; ++step) {
      Batch b = loader.next(step);
      check_ids(b.inputs, vocab);
      check_ids(b.targets, vocab);
    }
  } catch (const InputError&) {
  }
  try {
    const ValidationOptions o{.batch_size = 2, .seq_len = 3, .vocab_size = vocab};
    ValidationWindows val({path}, o);
    for (int64_t i = 0; i < std::min<int64_t>(val.num_batches(), 4); ++i) {
      Batch b = val.batch(i);
      check_ids(b.inputs, vocab);
      check_ids(b.targets, vocab);
    }
  } catch (const InputError&) {
  }
  return 0;
}
