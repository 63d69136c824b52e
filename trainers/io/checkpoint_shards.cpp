// Checkpoints with ZeRO-1 optimizer shards (format version 3): the shard layout in state.json, the arithmetic
// that maps a range of the flat moments onto the shard files, and the reads. Everything in state.json is
// untrusted: each number is checked before it is used as an offset or a size.
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "core/error.h"
#include "core/json_read.h"
#include "trainers/io/checkpoint.h"

namespace fs = std::filesystem;

namespace natsl {

namespace {

// More ranks than any job natsl can launch: a bound that keeps a damaged world_size from allocating much.
constexpr int kMaxShards = 1 << 20;

const nlohmann::json& field(const nlohmann::json& obj, const char* key, const std::string& where) {
  if (!obj.is_object() || !obj.contains(key)) throw InputError(where + key + " is missing (the file is corrupt or was edited)");
  return obj.at(key);
}

int64_t nonnegative(const nlohmann::json& obj, const char* key, const std::string& where) {
  const int64_t v = json_integer<int64_t>(field(obj, key, where), where + key);
  if (v < 0) throw InputError(fmt::format("{}{} is {} but must be >= 0 (the file is corrupt or was edited)", where, key, v));
  return v;
}

}  // namespace

std::string optimizer_shard_file_name(int rank, int world_size) {
  return fmt::format("optimizer.rank{:05d}-of-{:05d}.safetensors", rank, world_size);
}

nlohmann::json to_json(const ShardedOptimizerLayout& z) {
  nlohmann::json shards = nlohmann::json::array(), entries = nlohmann::json::array();
  for (const auto& s : z.shards) shards.push_back({{"file", s.file}, {"begin", s.begin}, {"end", s.end}});
  for (const auto& e : z.entries) entries.push_back({{"name", e.name}, {"offset", e.offset}, {"numel", e.numel}});
  return {{"world_size", z.world_size}, {"flat_elements", z.flat_elements}, {"dtype", "F32"},
          {"tensors", {kShardExpAvg, kShardExpAvgSq}}, {"shards", shards}, {"entries", entries}};
}

ShardedOptimizerLayout sharded_optimizer_layout_from_json(const nlohmann::json& j, const std::string& where) {
  const std::string at = where + "zero.";
  if (!j.is_object()) throw InputError(where + "zero is not an object (the file is corrupt or was edited)");
  ShardedOptimizerLayout z;
  const int64_t world = nonnegative(j, "world_size", at);
  if (world < 1 || world > kMaxShards)
    throw InputError(fmt::format("{}world_size is {} but must be from 1 to {} (the file is corrupt or was edited)", at,
                                 world, kMaxShards));
  z.world_size = int(world);
  z.flat_elements = nonnegative(j, "flat_elements", at);
  if (j.value("dtype", nlohmann::json()) != "F32")
    throw InputError(at + "dtype must be \"F32\" (the moments are f32; the file is corrupt or of another writer)");
  const nlohmann::json& shards = field(j, "shards", at);
  if (!shards.is_array() || int64_t(shards.size()) != world)
    throw InputError(fmt::format("{}shards must be an array of world_size = {} shards (the file is corrupt or was edited)",
                                 at, world));
  int64_t next = 0;
  for (int r = 0; r < z.world_size; ++r) {
    const std::string s_at = fmt::format("{}shards[{}].", at, r);
    OptimizerShard s;
    const nlohmann::json& file = field(shards[size_t(r)], "file", s_at);
    s.file = optimizer_shard_file_name(r, z.world_size);
    // The name is fixed by the rank, never taken from the file: a path in state.json reaches nothing else.
    if (!file.is_string() || file.get<std::string>() != s.file)
      throw InputError(fmt::format("{}file is {} but shard {} of {} is '{}' (the file is corrupt or was edited)", s_at,
                                   file.dump(-1, ' ', true), r, world, s.file));
    s.begin = nonnegative(shards[size_t(r)], "begin", s_at);
    s.end = nonnegative(shards[size_t(r)], "end", s_at);
    if (s.begin != next || s.end < s.begin || s.end > z.flat_elements)
      throw InputError(fmt::format("{}: [{}, {}) does not continue the shards at element {} inside flat_elements = {} "
                                   "(the file is corrupt or was edited)",
                                   s_at.substr(0, s_at.size() - 1), s.begin, s.end, next, z.flat_elements));
    next = s.end;
    z.shards.push_back(s);
  }
  if (next != z.flat_elements)
    throw InputError(fmt::format("{}shards end at element {} but flat_elements is {} (the file is corrupt or was edited)",
                                 at, next, z.flat_elements));
  const nlohmann::json& entries = field(j, "entries", at);
  if (!entries.is_array()) throw InputError(at + "entries is not an array (the file is corrupt or was edited)");
  std::set<std::string> names;
  for (size_t i = 0; i < entries.size(); ++i) {
    const std::string e_at = fmt::format("{}entries[{}].", at, i);
    FlatLayoutEntry e;
    const nlohmann::json& name = field(entries[i], "name", e_at);
    if (!name.is_string() || name.get<std::string>().empty() || !names.insert(name.get<std::string>()).second)
      throw InputError(e_at + "name is not a non-empty string of its own (the file is corrupt or was edited)");
    e.name = name.get<std::string>();
    e.offset = nonnegative(entries[i], "offset", e_at);
    e.numel = nonnegative(entries[i], "numel", e_at);
    if (e.offset > z.flat_elements || e.numel > z.flat_elements - e.offset)
      throw InputError(fmt::format("{}: [{}, {} + {}) lies outside flat_elements = {} (the file is corrupt or was edited)",
                                   e_at.substr(0, e_at.size() - 1), e.offset, e.offset, e.numel, z.flat_elements));
    z.entries.push_back(e);
  }
  return z;
}

std::vector<ShardPiece> shard_pieces(const std::vector<OptimizerShard>& shards, int64_t begin, int64_t end) {
  NATSL_CHECK(begin >= 0 && end >= begin, "shard_pieces: bad range [", begin, ", ", end, ")");
  std::vector<ShardPiece> pieces;
  for (size_t k = 0; k < shards.size(); ++k) {
    const int64_t lo = std::max(begin, shards[k].begin), hi = std::min(end, shards[k].end);
    if (lo < hi) pieces.push_back({k, lo - shards[k].begin, lo - begin, hi - lo});
  }
  return pieces;
}

void CheckpointReader::open_shards(const std::string& state_path) {
  zero_ = sharded_optimizer_layout_from_json(state_.at("zero"), "'" + state_path + "': ");
  for (const OptimizerShard& s : zero_->shards) {
    verify_file(s.file, /*has_checksums=*/true);
    auto r = std::make_unique<SafeTensorsReader>((fs::path(dir_) / s.file).string());
    for (const char* name : {kShardExpAvg, kShardExpAvgSq}) {
      const SafeTensorEntry* e = r->find(name);
      if (!e || e->dtype != DType::f32 || e->shape != Shape{s.end - s.begin})
        throw InputError(fmt::format("checkpoint file '{}' has no f32 tensor '{}' of [{}] elements, as state.json's "
                                     "shard layout says (the file is corrupt or of another checkpoint)",
                                     r->path(), name, s.end - s.begin));
    }
    shards_.push_back(std::move(r));
  }
}

void CheckpointReader::read_optimizer_range(const std::string& tensor, int64_t begin, const Tensor& dst) {
  NATSL_CHECK(sharded(), "read_optimizer_range: '", dir_, "' is not a sharded checkpoint");
  NATSL_CHECK(dst.dtype() == DType::f32 && dst.dim() == 1 && dst.is_contiguous(),
              "read_optimizer_range needs a contiguous 1-D f32 destination");
  const int64_t n = dst.numel();
  dst.zero_();
  for (const ShardPiece& p : shard_pieces(zero_->shards, begin, begin + n))
    shards_[p.shard]->read_range_into(tensor, p.shard_offset, dst.slice(0, p.range_offset, p.range_offset + p.count));
}

}  // namespace natsl
