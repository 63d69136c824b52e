// Trainer: checkpoints (write, resume, initial weights, the rescue after a failed write) and the checks that
// a checkpoint fits this run (tokenizer, model). The step loop is in trainer.cpp, the ranks in trainer_dist.cpp.
#include "trainers/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <csignal>
#include <filesystem>
#include <set>

#include <unistd.h>

#include <fmt/format.h>

#include "autograd/ops.h"
#include "core/allocator.h"
#include "core/error.h"
#include "core/json_read.h"
#include "core/stream.h"
#include "data/mixture.h"
#include "data/synthetic.h"
#include "kernels/determinism.h"
#include "kernels/reduce.h"
#include "layers/model/model_size.h"
#include "layers/natsl_attention.h"
#include "trainers/io/checkpoint.h"
#include "trainers/dist/tcp_store.h"
#include "trainers/io/metrics_log.h"
#include "trainers/mfu.h"
#include "trainers/io/run_dir_lock.h"
#include "trainers/io/safetensors.h"
#include "trainers/stop_signal.h"
#include "data/sync_file.h"
#include "trainers/io/version.h"

namespace fs = std::filesystem;

namespace natsl {
namespace {

// The first key under which two config JSON objects differ, as "model.hidden_size".
std::string first_difference(const nlohmann::json& a, const nlohmann::json& b, const std::string& prefix) {
  for (auto it = b.begin(); it != b.end(); ++it) {
    std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (!a.contains(it.key())) return key;
    if (it->is_object() && a[it.key()].is_object()) {
      std::string d = first_difference(a[it.key()], *it, key);
      if (!d.empty()) return d;
    } else if (a[it.key()] != *it) {
      return key;
    }
  }
  return "";
}

}  // namespace

// A run continues with the tokenizer it started with: the same kind, vocabulary and model file bytes. A
// checkpoint written before tokenizers were recorded was trained on byte tokens.
void check_checkpoint_tokenizer(const CheckpointReader& ck, const nlohmann::json& mine) {
  const std::string state_path = (fs::path(ck.dir()) / "state.json").string();
  nlohmann::json saved = nlohmann::json{{"kind", "byte"}, {"vocab_size", ByteTokenizer::kVocabSize}};
  if (ck.trainer().contains("tokenizer")) saved = ck.trainer().at("tokenizer");
  if (saved.is_null()) return;  // a run on a synthetic task: no tokenizer
  if (!saved.is_object())
    throw InputError("'" + state_path + "': trainer.tokenizer is not an object (a damaged or foreign state.json)");
  auto describe = [](const nlohmann::json& id) {
    std::string s;
    for (const char* key : {"kind", "vocab_size", "xxh3_64"})
      if (id.contains(key)) s += fmt::format("{}{} {}", s.empty() ? "" : ", ", key, id.at(key).dump());
    return "{" + s + "}";
  };
  for (const char* key : {"kind", "vocab_size", "xxh3_64"})
    if (saved.value(key, nlohmann::json()) != mine.value(key, nlohmann::json()))
      throw InputError("checkpoint '" + ck.dir() + "' was trained with the tokenizer " + describe(saved) +
                       " but the config's tokenizer is " + describe(mine) + " (" + key +
                       " differs); resume with the tokenizer the run started with (tokenizer.kind, tokenizer.model)");
}

void check_checkpoint_model(const CheckpointReader& ck, const RunConfig& cfg, const std::string& advice) {
  const std::string state_path = (fs::path(ck.dir()) / "state.json").string();
  try {
    nlohmann::json saved = config_to_json(config_from_json(ck.trainer().at("config"), state_path));
    nlohmann::json mine = config_to_json(cfg);
    std::string diff = first_difference(saved["model"], mine["model"], "model");
    if (!diff.empty()) {
      nlohmann::json::json_pointer p("/" + diff.substr(0, diff.find('.')) + "/" + diff.substr(diff.find('.') + 1));
      throw InputError("checkpoint '" + ck.dir() + "' was trained with " + diff + " = " + saved[p].dump() +
                       " but the config says " + mine[p].dump() + "; " + advice);
    }
  } catch (const nlohmann::json::exception& e) {
    throw InputError("'" + state_path + "' lacks a field this natsl needs (" + e.what() + ")");
  }
}

void Trainer::load_initial_weights(const std::string& path) {
  SafeTensorsReader r(path);
  const auto& entries = store_->layout().entries();
  std::set<std::string> names;
  for (size_t i = 0; i < entries.size(); ++i) {
    const std::string& name = entries[i].name;
    names.insert(name);
    const SafeTensorEntry* e = r.find(name);
    if (!e) throw InputError("train.init_from: '" + path + "' has no tensor '" + name + "', a parameter of this model");
    if (e->shape != entries[i].shape)
      throw InputError("train.init_from: '" + path + "': tensor '" + name + "' has shape " + shape_str(e->shape) +
                       " but this model's is " + shape_str(entries[i].shape));
    store_->set_parameter(int(i), r.read(name));  // any stored dtype (an HF export may be bf16)
  }
  for (const auto& e : r.entries())
    if (!names.count(e.name))
      throw InputError("train.init_from: '" + path + "' holds '" + e.name + "', which this model has no parameter for");
  log("initial weights from " + path);
}

void Trainer::resume_from(CheckpointReader& ck) {
  const std::string& dir = ck.dir();
  for (const auto& w : ck.warnings()) log("warning: " + w);
  const std::string state_path = (fs::path(dir) / "state.json").string();
  try {
    const nlohmann::json& tr = ck.trainer();
    // The model must be the one the checkpoint was trained with.
    check_checkpoint_model(ck, cfg_, "resume with the same model");
    nlohmann::json saved = config_to_json(config_from_json(tr.at("config"), state_path));
    nlohmann::json mine = config_to_json(cfg_);
    if (tr.contains("global_batch") && tr.at("global_batch").is_number_integer() &&
        tr.at("global_batch").get<int64_t>() != global_batch())
      log(fmt::format("warning: the global batch changed since the checkpoint ({} -> {} sequences per step: world size "
                      "{}); set train.global_batch_size to keep it on any number of ranks",
                      tr.at("global_batch").get<int64_t>(), global_batch(), launch_.world_size));
    for (const char* key : {"batch_size", "seq_len", "grad_accum", "seed", "lr", "schedule"})
      if (saved["train"][key] != mine["train"][key])
        log(fmt::format("warning: train.{} changed since the checkpoint ({} -> {}); the run will not match an "
                        "uninterrupted one", key, saved["train"][key].dump(), mine["train"][key].dump()));

    const auto& entries = store_->layout().entries();
    if (ck.model().entries().size() != entries.size())
      throw InputError("'" + ck.model().path() + "' holds " + std::to_string(ck.model().entries().size()) +
                       " tensors but the model has " + std::to_string(entries.size()) + " parameters");
    // ZeRO-1: the checkpoint holds the whole moments (whatever world size wrote it); this rank keeps its shard.
    FlatBuffer m_full = optimizer_->sharded() ? FlatBuffer(store_->layout(), device_) : optimizer_->exp_avg();
    FlatBuffer v_full = optimizer_->sharded() ? FlatBuffer(store_->layout(), device_) : optimizer_->exp_avg_sq();
    for (size_t i = 0; i < entries.size(); ++i) {
      if (store_->sharded()) {
        // ZeRO-1: the whole weights pass through; the store keeps its master shard and the compute copy.
        Tensor w = Tensor::empty(entries[i].shape, DType::f32, device_);
        ck.model().read_into(entries[i].name, w);
        store_->set_parameter(int(i), w);
      } else {
        ck.model().read_into(entries[i].name, store_->master().view(int(i)));
      }
      ck.optimizer().read_into("exp_avg." + entries[i].name, m_full.view(int(i)));
      ck.optimizer().read_into("exp_avg_sq." + entries[i].name, v_full.view(int(i)));
    }
    if (optimizer_->sharded()) {
      optimizer_->exp_avg_shard().copy_(own_range(m_full.flat(DType::f32)));
      optimizer_->exp_avg_sq_shard().copy_(own_range(v_full.flat(DType::f32)));
    }
    store_->sync_compute_from_master();
    const TrainerCounters counters = read_trainer_counters(ck, /*required=*/true);
    optimizer_->set_step_count(counters.optimizer_steps);
    skipped_steps_ = counters.skipped_steps;
    nonfinite_streak_ = counters.nonfinite_streak;
    const std::string field = "'" + state_path + "': trainer.";
    // The routers' Gumbel noise continues where the checkpoint left it (saved since format version 2).
    const nlohmann::json* noise = tr.contains("rng") && tr.at("rng").contains("router_noise")
                                      ? &tr.at("rng").at("router_noise") : nullptr;
    for (auto& [name, layer] : natsl_layers(*model_)) {
      if (noise && noise->contains(name))
        layer->set_noise_generator(
            Generator(json_integer<uint64_t>(noise->at(name).at("seed"), field + "rng.router_noise.seed"),
                      json_integer<uint64_t>(noise->at(name).at("offset"), field + "rng.router_noise.offset")));
      else if (cfg_.model.nats_sample == "gumbel")
        log("warning: '" + state_path + "' holds no Gumbel noise state for " + name +
            " (an older natsl wrote it): the noise will not match an uninterrupted run");
    }
    data_.train->load_state(tr.at("data"));
    step_ = ck.step();
  } catch (const nlohmann::json::exception& e) {
    throw InputError("'" + state_path + "' lacks a field this natsl needs (" + e.what() + ")");
  }
  log(fmt::format("resumed from {} at step {}", dir, step_));
}

std::array<FlatBuffer, 3> Trainer::gather_sharded_state() {
  FlatBuffer w(store_->layout(), device_), m(store_->layout(), device_), v(store_->layout(), device_);
  comm_->all_gather(store_->master_shard(), w.flat(DType::f32));
  comm_->all_gather(optimizer_->exp_avg_shard(), m.flat(DType::f32));
  comm_->all_gather(optimizer_->exp_avg_sq_shard(), v.flat(DType::f32));
  comm_->synchronize();
  return {w, m, v};
}

std::string Trainer::write_checkpoint() {
  // Every rank comes here (ZeRO-1 gathers the master weights and moments, a collective); rank 0 writes. The
  // checkpoint holds the whole state in one format whatever the world size, so any world size resumes it.
  FlatBuffer w, m = optimizer_->exp_avg(), v = optimizer_->exp_avg_sq();
  if (store_->sharded()) {
    std::array<FlatBuffer, 3> g = gather_sharded_state();
    w = g[0], m = g[1], v = g[2];
  } else {
    w = store_->master();
  }
  if (!opts_.write_run_dir) return "";
  CheckpointWrite ck;
  ck.step = step_;
  const auto& entries = store_->layout().entries();
  for (size_t i = 0; i < entries.size(); ++i) ck.model.emplace_back(entries[i].name, w.view(int(i)));
  for (size_t i = 0; i < entries.size(); ++i) ck.optimizer.emplace_back("exp_avg." + entries[i].name, m.view(int(i)));
  for (size_t i = 0; i < entries.size(); ++i) ck.optimizer.emplace_back("exp_avg_sq." + entries[i].name, v.view(int(i)));
  const TrainConfig& t = cfg_.train;
  // Parameters are initialised from Philox(seed); batches are a pure function of (data seed, index); the only
  // draws during training are the NAtS-L routers' Gumbel noise, one Philox stream per layer whose offset
  // advances with each training forward. These are all the RNG state there is.
  nlohmann::json router_noise = nlohmann::json::object();
  for (const auto& [name, layer] : natsl_layers(*model_))
    router_noise[name] = {{"generator", "philox4x32-10"},
                          {"seed", layer->noise_generator().seed},
                          {"offset", layer->noise_generator().offset}};
  ck.trainer = {
      {"optimizer_steps", optimizer_->step_count()},
      {"skipped_steps", skipped_steps_},
      {"nonfinite_streak", nonfinite_streak_},
      {"tokens_seen", step_ * global_batch() * t.seq_len},
      {"world_size", launch_.world_size},
      {"global_batch", global_batch()},
      {"rng",
       {{"param_init", {{"generator", "philox4x32-10"}, {"seed", t.seed}}},
        {"data_seed", t.seed},
        {"router_noise", router_noise}}},
      {"data", data_.train->state()},
      {"config", config_to_json(cfg_)},
      {"tokenizer", data_.tokenizer ? data_.tokenizer->identity() : nlohmann::json()},
  };
  synchronize(device_);
  last_checkpoint_ = save_checkpoint(t.out_dir, ck, t.keep_last);
  return last_checkpoint_;
}

void Trainer::stop_after_failed_write(const std::string& failure, bool save_checkpoint) {
  std::string saved;
  if (save_checkpoint && optimizer_->sharded()) {
    // ZeRO-1: a checkpoint gathers the moments from every rank, a collective the others (who did not fail)
    // are not in. The newest checkpoint on disk is the last whole state.
    save_checkpoint = false;
    saved = "; no checkpoint was written (with train.zero=1 every rank takes part in one)";
  }
  if (save_checkpoint) {
    // The metrics row is lost, the weights need not be: the checkpoint lives in another file (maybe on another
    // disk, or the failure was a one-off).
    try {
      saved = "; saved the checkpoint " + write_checkpoint() + " (metrics.jsonl lacks step " + std::to_string(step_) +
              "); resume=auto continues from it";
    } catch (const std::exception& e) {
      saved = fmt::format("; the checkpoint of step {} could not be written either ({})", step_, e.what());
    }
  } else if (metrics_ && saved.empty()) {
    saved = fmt::format("; metrics.jsonl holds steps 1..{}", step_);
  }
  if (saved.find("resume=auto") == std::string::npos)
    saved += last_checkpoint_.empty() ? "; no checkpoint of this run exists"
                                      : "; resume=auto continues from " + last_checkpoint_;
  throw Error("stopping: " + failure + saved);
}

}  // namespace natsl
