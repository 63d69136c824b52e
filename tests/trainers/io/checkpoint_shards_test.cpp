// ZeRO-1 checkpoints (format version 3): the arithmetic that maps a range of the flat moments onto the shard
// files of another world size, the reads, and the checks of state.json's shard layout and of the shard files.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <numeric>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/file_checksum.h"
#include "trainers/io/checkpoint.h"
#include "tests/test_util.h"
#include "tests/trainers/io/checkpoint_test_util.h"
#include "tests/trainers/trainer_test_util.h"

namespace natsl {
namespace {

namespace fs = std::filesystem;
using namespace testing;  // natsl::testing: the helpers of checkpoint_test_util.h, trainer_test_util.h

std::vector<OptimizerShard> tile(const std::vector<int64_t>& bounds) {
  std::vector<OptimizerShard> s;
  for (size_t k = 0; k + 1 < bounds.size(); ++k)
    s.push_back({optimizer_shard_file_name(int(k), int(bounds.size() - 1)), bounds[k], bounds[k + 1]});
  return s;
}

bool same(const ShardPiece& a, const ShardPiece& b) {
  return a.shard == b.shard && a.shard_offset == b.shard_offset && a.range_offset == b.range_offset && a.count == b.count;
}

TEST(CheckpointShards, FileNamesCarryTheRankAndTheWorldSize) {
  EXPECT_EQ(optimizer_shard_file_name(1, 4), "optimizer.rank00001-of-00004.safetensors");
  EXPECT_EQ(optimizer_shard_file_name(0, 1), "optimizer.rank00000-of-00001.safetensors");
}

TEST(CheckpointShards, PiecesCoverARangeAcrossShardBoundaries) {
  const auto shards = tile({0, 8, 16, 24});
  // Inside one shard.
  auto p = shard_pieces(shards, 9, 12);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_TRUE(same(p[0], {1, 1, 0, 3}));
  // Across two boundaries: the tail of shard 0, all of shard 1, the head of shard 2.
  p = shard_pieces(shards, 5, 18);
  ASSERT_EQ(p.size(), 3u);
  EXPECT_TRUE(same(p[0], {0, 5, 0, 3}));
  EXPECT_TRUE(same(p[1], {1, 0, 3, 8}));
  EXPECT_TRUE(same(p[2], {2, 0, 11, 2}));
  // Past the saved buffer (a larger world size pads further): only what the shards hold.
  p = shard_pieces(shards, 20, 32);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_TRUE(same(p[0], {2, 4, 0, 4}));
  EXPECT_TRUE(shard_pieces(shards, 24, 40).empty());
  EXPECT_TRUE(shard_pieces(shards, 7, 7).empty());
  // An empty shard contributes nothing.
  p = shard_pieces(tile({0, 4, 4, 8}), 0, 8);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_TRUE(same(p[1], {2, 0, 4, 4}));
  // Every re-split of 4 shards into 3 ranges covers each element exactly once.
  const auto four = tile({0, 6, 12, 18, 24});
  std::vector<int> hits(24, 0);
  for (int64_t r = 0; r < 3; ++r)
    for (const ShardPiece& q : shard_pieces(four, r * 8, r * 8 + 8))
      for (int64_t i = 0; i < q.count; ++i) {
        const int64_t flat = four[q.shard].begin + q.shard_offset + i;
        EXPECT_EQ(flat, r * 8 + q.range_offset + i);
        ++hits[size_t(flat)];
      }
  EXPECT_EQ(hits, std::vector<int>(24, 1));
}

// A sharded checkpoint of `world` shards over a flat buffer of `flat` elements whose moments are 1, 2, 3, ...
// (exp_avg) and their negatives (exp_avg_sq), written as the ranks do; returns its directory.
std::string write_sharded(const std::string& run_dir, int64_t step, int world, int64_t flat) {
  const std::string tmp = begin_checkpoint(run_dir, step);
  std::vector<CheckpointFileRecord> files;
  files.push_back(write_checkpoint_file(tmp, "model.safetensors", {{"w", Tensor::from_vector<float>({1.f, 2.f}, {2})}}, step));
  ShardedOptimizerLayout z;
  z.world_size = world;
  z.flat_elements = flat;
  z.entries = {{"w", 0, 2}};
  for (int r = 0; r < world; ++r) {
    const int64_t b = flat / world * r, e = flat / world * (r + 1);
    std::vector<float> m(size_t(e - b)), v(size_t(e - b));
    for (int64_t i = b; i < e; ++i) m[size_t(i - b)] = float(i + 1), v[size_t(i - b)] = -float(i + 1);
    const std::string file = optimizer_shard_file_name(r, world);
    files.push_back(write_checkpoint_file(tmp, file,
                                          {{kShardExpAvg, Tensor::from_vector<float>(m, {e - b})},
                                           {kShardExpAvgSq, Tensor::from_vector<float>(v, {e - b})}},
                                          step));
    z.shards.push_back({file, b, e});
  }
  return commit_checkpoint(run_dir, step, files, {{"note", "test"}}, z, 5);
}

TEST(CheckpointShards, AnotherWorldSizeReadsItsRangeFromTheOverlappingShards) {
  TempDir dir;
  const std::string ck_dir = write_sharded(dir.str(), 3, 4, 24);
  CheckpointReader ck(ck_dir);
  ASSERT_TRUE(ck.sharded());
  EXPECT_EQ(ck.state().at("format_version"), kCheckpointFormatVersion);
  EXPECT_EQ(ck.zero().world_size, 4);
  EXPECT_FALSE(fs::exists(ck_dir + "/optimizer.safetensors"));
  // Three ranks of 10 (a padded layout of 30): the last reaches past the saved 24 elements, which read as zero.
  for (int r = 0; r < 3; ++r) {
    Tensor m = Tensor::full({10}, 99.f, DType::f32), v = Tensor::full({10}, 99.f, DType::f32);
    ck.read_optimizer_range(kShardExpAvg, r * 10, m);
    ck.read_optimizer_range(kShardExpAvgSq, r * 10, v);
    const auto mv = m.to_vector<float>(), vv = v.to_vector<float>();
    for (int64_t i = 0; i < 10; ++i) {
      const int64_t flat = r * 10 + i;
      EXPECT_EQ(mv[size_t(i)], flat < 24 ? float(flat + 1) : 0.f) << flat;
      EXPECT_EQ(vv[size_t(i)], flat < 24 ? -float(flat + 1) : 0.f) << flat;
    }
  }
}

TEST(CheckpointShards, AMissingOrCorruptShardMakesTheCheckpointInvalid) {
  TempDir dir;
  write_sharded(dir.str(), 1, 2, 16);
  const std::string two = write_sharded(dir.str(), 2, 2, 16);
  const std::string shard1 = two + "/" + optimizer_shard_file_name(1, 2);
  ASSERT_EQ(open_error(two), "");
  // One flipped byte in a shard: its checksum fails; resume=auto takes the older checkpoint, with a warning.
  flip_byte_from_end(shard1, 3);
  EXPECT_NE(open_error(two).find(shard1 + "' fails its checksum"), std::string::npos) << open_error(two);
  CheckpointScan scan = find_latest_checkpoint(dir.str());
  EXPECT_EQ(*scan.latest, dir / "checkpoints/step_000001");
  ASSERT_EQ(scan.warnings.size(), 1u);
  EXPECT_NE(scan.warnings[0].find(shard1), std::string::npos) << scan.warnings[0];
  // A missing shard: the same; and when no valid checkpoint is left, there is none to resume.
  fs::remove(shard1);
  EXPECT_NE(open_error(two).find(shard1 + "' is missing"), std::string::npos) << open_error(two);
  const std::string shard0_of_one = dir / ("checkpoints/step_000001/" + optimizer_shard_file_name(0, 2));
  fs::remove(shard0_of_one);
  scan = find_latest_checkpoint(dir.str());
  EXPECT_FALSE(scan.latest);
  EXPECT_EQ(scan.damaged.size(), 2u);
}

// Edits state.json's "zero" with `edit` and returns the error opening the checkpoint gives.
std::string error_after(const std::function<void(nlohmann::json&)>& edit) {
  TempDir dir;
  const std::string ck = write_sharded(dir.str(), 1, 2, 16);
  nlohmann::json state = nlohmann::json::parse(testing::read_text(ck + "/state.json"));
  edit(state);
  testing::write_text(ck + "/state.json", state.dump());
  return open_error(ck);
}

TEST(CheckpointShards, BadShardLayoutsAreRefusedNamingTheField) {
  const std::vector<std::pair<std::function<void(nlohmann::json&)>, std::string>> cases = {
      {[](nlohmann::json& s) { s["zero"]["world_size"] = 0; }, "zero.world_size is 0 but must be from 1"},
      {[](nlohmann::json& s) { s["zero"]["world_size"] = 3; }, "zero.shards must be an array of world_size = 3"},
      {[](nlohmann::json& s) { s["zero"]["world_size"] = 2.5; }, "zero.world_size is 2.5"},
      {[](nlohmann::json& s) { s["zero"]["flat_elements"] = -16; }, "zero.flat_elements is -16 but must be >= 0"},
      {[](nlohmann::json& s) { s["zero"]["flat_elements"] = 1e30; }, "zero.flat_elements is 1e+30"},
      {[](nlohmann::json& s) { s["zero"]["flat_elements"] = 20; }, "shards end at element 16 but flat_elements is 20"},
      {[](nlohmann::json& s) { s["zero"]["shards"][1]["begin"] = 7; }, "zero.shards[1]: [7, 16) does not continue"},
      {[](nlohmann::json& s) { s["zero"]["shards"][0]["end"] = 9223372036854775807; }, "zero.shards[0]: [0, 9223372036854775807)"},
      {[](nlohmann::json& s) { s["zero"]["shards"][1]["file"] = "../../etc/passwd"; },
       "zero.shards[1].file is \"../../etc/passwd\" but shard 1 of 2 is 'optimizer.rank00001-of-00002.safetensors'"},
      {[](nlohmann::json& s) { s["zero"]["shards"][0].erase("begin"); }, "zero.shards[0].begin is missing"},
      {[](nlohmann::json& s) { s["zero"]["entries"][0]["offset"] = 15; }, "zero.entries[0]: [15, 15 + 2) lies outside"},
      {[](nlohmann::json& s) { s["zero"]["entries"][0]["numel"] = 9223372036854775807; }, "lies outside flat_elements = 16"},
      {[](nlohmann::json& s) { s["zero"]["entries"].push_back(s["zero"]["entries"][0]); }, "zero.entries[1].name"},
      {[](nlohmann::json& s) { s["zero"]["dtype"] = "BF16"; }, "zero.dtype must be \"F32\""},
      {[](nlohmann::json& s) { s["zero"] = 4; }, "zero is not an object"},
      {[](nlohmann::json& s) { s["format_version"] = 2; }, "\"zero\" (optimizer shards) needs format version 3"},
  };
  for (const auto& [edit, want] : cases) {
    const std::string e = error_after(edit);
    EXPECT_NE(e.find(want), std::string::npos) << "want: " << want << "\ngot:  " << e;
    EXPECT_NE(e.find("state.json"), std::string::npos) << e;
  }
}

TEST(CheckpointShards, AShardFileOfTheWrongSizeIsRefused) {
  // A shard file whose tensors do not have the length the layout gives it (e.g. from another checkpoint),
  // though its checksum matches what state.json says.
  TempDir dir;
  const std::string ck = write_sharded(dir.str(), 1, 2, 16);
  const std::string file = optimizer_shard_file_name(0, 2);
  const CheckpointFileRecord rec = write_checkpoint_file(
      ck, file, {{kShardExpAvg, Tensor::zeros({4}, DType::f32)}, {kShardExpAvgSq, Tensor::zeros({4}, DType::f32)}}, 1);
  nlohmann::json state = nlohmann::json::parse(testing::read_text(ck + "/state.json"));
  state["files"][file] = {{"bytes", rec.bytes}, {"xxh3_64", checksum_hex(rec.xxh3_64)}};
  testing::write_text(ck + "/state.json", state.dump());
  EXPECT_NE(open_error(ck).find("has no f32 tensor 'exp_avg' of [8] elements"), std::string::npos) << open_error(ck);
}

TEST(CheckpointShards, AGatheredCheckpointIsStillVersion2) {
  TempDir dir;
  CheckpointWrite w;
  w.step = 1;
  w.model = {{"w", Tensor::from_vector<float>({1.f, 2.f}, {2})}};
  w.optimizer = {{"exp_avg.w", Tensor::zeros({2}, DType::f32)}, {"exp_avg_sq.w", Tensor::zeros({2}, DType::f32)}};
  w.trainer = {{"note", "test"}};
  CheckpointReader ck(save_checkpoint(dir.str(), w, 2));
  EXPECT_EQ(ck.state().at("format_version"), 2);
  EXPECT_FALSE(ck.sharded());
  EXPECT_EQ(ck.optimizer().read("exp_avg.w").to_vector<float>(), (std::vector<float>{0.f, 0.f}));
}

}  // namespace
}  // namespace natsl
