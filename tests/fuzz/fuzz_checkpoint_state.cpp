// Fuzzes a checkpoint's state.json as natsl reads it: CheckpointReader, then what resume (Trainer::
// resume_from) and `natsl inspect` take from it: the saved config, the counters and the data loader state.
// The model and optimizer files are fixed, valid fixtures; the input is the state.json text. The data state is
// offered to each kind of source: MQAR, a text loader and a two-source text mixture.
// The directory also holds two ZeRO-1 optimizer shards, so a state.json with "zero" (format version 3) opens too.
// NATSL_FUZZ_WRITE_SEED=FILE writes valid state.json files for these fixtures (the corpus seeds) and exits.
#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/file_checksum.h"
#include "data/loader.h"
#include "data/mixture.h"
#include "data/mqar.h"
#include "tests/fuzz/fuzz_util.h"
#include "trainers/io/checkpoint.h"
#include "trainers/config.h"
#include "trainers/data_factory.h"

namespace {

using namespace natsl;

struct Fixtures {
  std::string ckpt_dir;
  std::unique_ptr<MqarSource> mqar;
  std::unique_ptr<TokenWindowLoader> text;
  std::unique_ptr<MixtureLoader> mix;  // two sources (weights 3 : 1): text.bin and mix1.bin
};

Fixtures& fixtures() {
  static Fixtures f = [] {
    Fixtures x;
    x.ckpt_dir = fuzz::fuzz_dir() + "/step_000001";
    std::filesystem::create_directories(x.ckpt_dir);
    const NamedTensors model = {{"w", Tensor::from_vector<float>({1.0f, 2.0f}, {2})}};
    const NamedTensors opt = {{"exp_avg.w", Tensor::from_vector<float>({0.0f, 0.0f}, {2})},
                              {"exp_avg_sq.w", Tensor::from_vector<float>({0.0f, 0.0f}, {2})}};
    write_safetensors(x.ckpt_dir + "/model.safetensors", model);
    write_safetensors(x.ckpt_dir + "/optimizer.safetensors", opt);
    // ZeRO-1 shards of a flat buffer of 128 elements ("w" at offset 0), 64 per rank.
    for (int r = 0; r < 2; ++r)
      write_safetensors(x.ckpt_dir + "/" + optimizer_shard_file_name(r, 2),
                        {{kShardExpAvg, Tensor::zeros({64}, DType::f32)}, {kShardExpAvgSq, Tensor::zeros({64}, DType::f32)}});
    const std::string shard = fuzz::fuzz_dir() + "/text.bin";
    write_shard(shard, std::vector<uint32_t>(64, 7), 2, 258);
    RunConfig cfg;
    x.mqar = std::make_unique<MqarSource>(mqar_options(cfg, 0));
    LoaderOptions lo;
    lo.batch_size = 2;
    lo.seq_len = 8;
    x.text = std::make_unique<TokenWindowLoader>(std::vector<std::string>{shard}, lo);
    const std::string shard1 = fuzz::fuzz_dir() + "/mix1.bin";
    write_shard(shard1, std::vector<uint32_t>(48, 9), 2, 258);
    x.mix = std::make_unique<MixtureLoader>(
        std::vector<MixtureSource>{{"data.text.mix[0]", {shard}, 3.0}, {"data.text.mix[1]", {shard1}, 1.0}}, lo);
    return x;
  }();
  return f;
}

void write_seed(const std::string& out) {
  Fixtures& f = fixtures();
  namespace fs = std::filesystem;
  nlohmann::json trainer = {{"optimizer_steps", 1}, {"skipped_steps", 0}, {"tokens_seen", 2048},
                            {"data", f.mqar->state()}, {"config", config_to_json(RunConfig{})}};
  // Version 1: no checksums, so the fixtures' bytes need not be hashed.
  nlohmann::json state = {{"format", kCheckpointFormat}, {"format_version", 1},
                          {"step", 1}, {"natsl_version", "0.1.0"}, {"git_commit", "unknown"},
                          {"trainer", trainer}};
  for (const char* file : {"model.safetensors", "optimizer.safetensors"})
    state["files"][file] = {{"bytes", fs::file_size(f.ckpt_dir + "/" + file)}};
  std::ofstream(out) << state.dump(1) << "\n";
  trainer["data"] = f.text->state();
  state["trainer"] = trainer;
  std::ofstream(out + ".text") << state.dump(1) << "\n";
  trainer["data"] = f.mix->state();
  state["trainer"] = trainer;
  std::ofstream(out + ".mix") << state.dump(1) << "\n";
  // Version 3 with ZeRO-1 shards: checksums (required from version 2) and the shard layout.
  state["format_version"] = kCheckpointFormatVersion;
  trainer["data"] = f.mqar->state();
  state["trainer"] = trainer;
  state["files"] = nlohmann::json::object();
  for (const std::string& file : {std::string("model.safetensors"), optimizer_shard_file_name(0, 2), optimizer_shard_file_name(1, 2)})
    state["files"][file] = {{"bytes", fs::file_size(f.ckpt_dir + "/" + file)},
                            {"xxh3_64", checksum_hex(file_xxh3_64(f.ckpt_dir + "/" + file))}};
  ShardedOptimizerLayout z;
  z.world_size = 2;
  z.flat_elements = 128;
  z.shards = {{optimizer_shard_file_name(0, 2), 0, 64}, {optimizer_shard_file_name(1, 2), 64, 128}};
  z.entries = {{"w", 0, 2}};
  state["zero"] = to_json(z);
  std::ofstream(out + ".zero") << state.dump(1) << "\n";
}

// Trainer::resume_from's reads (it turns a json exception into an InputError naming state.json).
void resume_reads(CheckpointReader& ck) {
  try {
    const nlohmann::json& tr = ck.trainer();
    config_to_json(config_from_json(tr.at("config"), "state.json"));
    read_trainer_counters(ck, /*required=*/true);
    Fixtures& f = fixtures();
    for (DataSource* src : {static_cast<DataSource*>(f.mqar.get()), static_cast<DataSource*>(f.text.get()),
                            static_cast<DataSource*>(f.mix.get())}) {
      try {
        src->load_state(tr.at("data"));
      } catch (const InputError&) {
      }
    }
  } catch (const nlohmann::json::exception&) {
  }
}

// `natsl inspect DIR` (trainers/cli/main.cpp cmd_inspect): reads with defaults; like resume, it turns a json
// exception into an InputError naming state.json (it did not before this fuzzer).
void inspect_reads(CheckpointReader& ck) {
  try {
    const auto& st = ck.state();
    (void)st.value("natsl_version", "?");
    (void)st.value("git_commit", "?");
    const auto& tr = ck.trainer();
    read_trainer_counters(ck, /*required=*/false);
    if (tr.contains("config")) config_from_json(tr["config"], "state.json");
  } catch (const nlohmann::json::exception&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* out = std::getenv("NATSL_FUZZ_WRITE_SEED")) {
    write_seed(out);
    std::exit(0);
  }
  fixtures();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::put_file("step_000001/state.json", std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    CheckpointReader ck(fixtures().ckpt_dir);
    resume_reads(ck);
    inspect_reads(ck);
    if (ck.sharded()) {
      // What a ZeRO-1 rank of another world size reads: a range past the shards' end as well.
      Tensor m = Tensor::zeros({96}, DType::f32);
      ck.read_optimizer_range(kShardExpAvg, 64, m);
    }
  } catch (const InputError&) {
  }
  return 0;
}
