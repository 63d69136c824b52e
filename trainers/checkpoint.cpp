#include "trainers/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "core/error.h"
#include "trainers/sync_file.h"
#include "trainers/version.h"

namespace fs = std::filesystem;

namespace natsl {

namespace {

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kStateFile = "state.json";
constexpr const char* kTmpPrefix = ".tmp-";

// "step_000123" -> 123; nullopt for any other name.
std::optional<int64_t> parse_step_name(const std::string& name) {
  const std::string p = "step_";
  if (name.rfind(p, 0) != 0 || name.size() == p.size()) return std::nullopt;
  int64_t v = 0;
  for (size_t i = p.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || v > (int64_t(1) << 56)) return std::nullopt;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

void remove_tree(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) { return fmt::format("step_{:06d}", step); }

std::vector<int64_t> list_checkpoint_steps(const std::string& run_dir) {
  std::vector<int64_t> steps;
  fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return steps;
  for (const auto& e : fs::directory_iterator(root, ec))
    if (e.is_directory())
      if (auto s = parse_step_name(e.path().filename().string())) steps.push_back(*s);
  std::sort(steps.begin(), steps.end());
  return steps;
}

std::string save_checkpoint(const std::string& run_dir, const CheckpointWrite& ck, int64_t keep_last) {
  fs::path root = fs::path(run_dir) / "checkpoints";
  fs::create_directories(root);
  const std::string name = checkpoint_dir_name(ck.step);
  fs::path tmp = root / (kTmpPrefix + name);
  fs::path final_dir = root / name;
  remove_tree(tmp);  // a leftover of a crashed write of the same step
  fs::create_directory(tmp);

  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"producer", "natsl"},
                                                   {"step", std::to_string(ck.step)}};
  write_safetensors((tmp / kModelFile).string(), ck.model, meta, ck.after_model_tensor);
  write_safetensors((tmp / kOptimizerFile).string(), ck.optimizer, meta);

  nlohmann::json state = {{"format", kCheckpointFormat},
                          {"format_version", kCheckpointFormatVersion},
                          {"step", ck.step},
                          {"natsl_version", natsl_version()},
                          {"git_commit", natsl_git_commit()},
                          {"trainer", ck.trainer}};
  for (const char* f : {kModelFile, kOptimizerFile}) state["files"][f] = {{"bytes", fs::file_size(tmp / f)}};
  write_file_synced((tmp / kStateFile).string(), state.dump(2) + "\n");
  fsync_directory(tmp.string());

  // Re-saving a step that already exists (e.g. the final step after a stop_at_step resume) replaces it.
  if (fs::exists(final_dir)) remove_tree(final_dir);
  fs::rename(tmp, final_dir);
  fsync_directory(root.string());

  // Retention: the newest keep_last complete checkpoints stay; older ones and older temp dirs go.
  std::vector<int64_t> steps = list_checkpoint_steps(run_dir);
  if (int64_t(steps.size()) > keep_last)
    for (size_t i = 0; i + size_t(keep_last) < steps.size(); ++i) remove_tree(root / checkpoint_dir_name(steps[i]));
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind(kTmpPrefix, 0) == 0)
      if (auto s = parse_step_name(n.substr(std::string(kTmpPrefix).size())); s && *s < ck.step) remove_tree(e.path());
  }
  return final_dir.string();
}

CheckpointReader::CheckpointReader(const std::string& dir) : dir_(dir) {
  try {
    open();
  } catch (const nlohmann::json::exception& e) {
    throw InputError("'" + (fs::path(dir) / kStateFile).string() + "' has a malformed field (" + e.what() + ")");
  }
}

void CheckpointReader::open() {
  const std::string& dir = dir_;
  fs::path d(dir);
  std::error_code ec;
  if (!fs::is_directory(d, ec)) throw InputError("checkpoint '" + dir + "' is not a directory");
  fs::path state_path = d / kStateFile;
  std::ifstream in(state_path);
  if (!in) throw InputError("checkpoint '" + dir + "' has no " + kStateFile + " (incomplete or not a checkpoint)");
  try {
    state_ = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError("'" + state_path.string() + "' is not valid JSON (" + e.what() + "); the checkpoint is corrupt");
  }
  auto bad = [&](const std::string& what) { return InputError("'" + state_path.string() + "': " + what); };
  if (!state_.is_object() || state_.value("format", "") != kCheckpointFormat)
    throw bad("not a natsl checkpoint state (format is not \"" + std::string(kCheckpointFormat) + "\")");
  if (state_.value("format_version", -1) != kCheckpointFormatVersion)
    throw bad("checkpoint format version " + state_.value("format_version", nlohmann::json(nullptr)).dump() +
              " is not supported (this natsl reads version " + std::to_string(kCheckpointFormatVersion) + ")");
  if (!state_.contains("step") || !state_["step"].is_number_integer()) throw bad("no integer \"step\"");
  if (!state_.contains("trainer") || !state_["trainer"].is_object()) throw bad("no \"trainer\" state");
  step_ = state_["step"].get<int64_t>();
  for (const char* f : {kModelFile, kOptimizerFile}) {
    fs::path p = d / f;
    if (!fs::exists(p, ec)) throw InputError("checkpoint file '" + p.string() + "' is missing");
    auto rec = state_.contains("files") && state_["files"].contains(f) ? state_["files"][f].value("bytes", uint64_t(0))
                                                                        : uint64_t(0);
    uint64_t size = fs::file_size(p, ec);
    if (rec != size)
      throw InputError("checkpoint file '" + p.string() + "' has " + std::to_string(size) + " bytes but " +
                       std::to_string(rec) + " were written (truncated or replaced)");
  }
  model_.emplace((d / kModelFile).string());
  optimizer_.emplace((d / kOptimizerFile).string());
}

CheckpointScan find_latest_checkpoint(const std::string& run_dir) {
  CheckpointScan scan;
  fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return scan;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind(kTmpPrefix, 0) == 0)
      scan.warnings.push_back("ignoring the unfinished checkpoint '" + e.path().string() +
                              "' (a write was interrupted)");
  }
  std::vector<int64_t> steps = list_checkpoint_steps(run_dir);
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    std::string dir = (root / checkpoint_dir_name(*it)).string();
    try {
      CheckpointReader r(dir);
      scan.latest = dir;
      break;
    } catch (const InputError& e) {
      scan.warnings.push_back(std::string("ignoring a damaged checkpoint: ") + e.what());
    }
  }
  return scan;
}

}  // namespace natsl
