// Hugging Face interchange (trainers/io/hf_interchange.h): the config.json of each model family against the
// reference's and FLA's config classes (field names written out here), a checkpoint -> export-hf ->
// import-hf -> train.init_from round trip that is bit-exact, and one clear error for each folder natsl cannot
// read.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "trainers/io/checkpoint.h"
#include "trainers/config.h"
#include "trainers/io/hf_interchange.h"
#include "trainers/io/safetensors.h"
#include "trainers/trainer.h"
#include "tests/trainers/trainer_test_util.h"

namespace natsl {
namespace {

using testing::TempDir;
using testing::write_text;

ModelConfig preset(const std::string& name) {
  return load_config(std::string(NATSL_SOURCE_DIR) + "/configs/" + name, {"data.source=mqar", "tokenizer.kind=byte"}).model;
}

TEST(HfInterchange, ConfigOfEachFamilyNamesTheReferenceFields) {
  const nlohmann::json n = hf_config(preset("natsl-340m.yaml"));
  EXPECT_EQ(n["model_type"], "neural_attention_search_linear_attn_gdn");
  EXPECT_EQ(n["architectures"][0], "NeuralAttentionSearchLinearAttnGDNForCausalLM");
  EXPECT_EQ(n["gdn_layers"], nlohmann::json({0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 16, 17, 18}));
  EXPECT_TRUE(n["attn"].is_null());
  EXPECT_EQ(n["num_hidden_layers"], 21);
  EXPECT_EQ(n["hidden_size"], 1024);
  EXPECT_EQ(n["num_heads"], 6);
  EXPECT_EQ(n["head_dim"], 128);
  EXPECT_EQ(n["num_attn_heads"], 12);
  EXPECT_EQ(n["expand_v"], 2.0);
  EXPECT_EQ(n["nats_block_size"], 64);
  EXPECT_EQ(n["attn_qk_norm"], true);
  EXPECT_EQ(n["attn_with_short_conv"], true);
  EXPECT_EQ(n["attn_apply_pos_encoding"], false);
  EXPECT_EQ(n["decay_for_non_gdn_blocks"], true);
  EXPECT_EQ(n["intermediate_size"], 2816);
  EXPECT_EQ(n["vocab_size"], 32000);

  const nlohmann::json g = hf_config(preset("gdn-340m.yaml"));
  EXPECT_EQ(g["model_type"], "gated_deltanet");
  EXPECT_EQ(g["architectures"][0], "GatedDeltaNetForCausalLM");
  const nlohmann::json h = hf_config(preset("hybrid-340m.yaml"));
  EXPECT_EQ(h["model_type"], "gated_deltanet");
  ASSERT_TRUE(h["attn"].is_object());
  EXPECT_EQ(h["attn"]["layers"], nlohmann::json({3, 7, 11, 15, 19, 20}));
  const nlohmann::json t = hf_config(preset("transformer-340m.yaml"));
  EXPECT_EQ(t["model_type"], "transformer");
  EXPECT_EQ(t["architectures"][0], "TransformerForCausalLM");
  EXPECT_EQ(t["num_kv_heads"], t["num_heads"]);

  // Read back from the HF fields alone (a folder natsl did not write), each family builds the same layers
  // and sizes; with natsl's own object, the model section comes back exactly.
  for (const char* name : {"natsl-340m.yaml", "gdn-340m.yaml", "hybrid-340m.yaml", "transformer-340m.yaml"}) {
    SCOPED_TRACE(name);
    const ModelConfig m = preset(name);
    nlohmann::json c = hf_config(m);
    RunConfig a, b;
    a.model = model_from_hf_config(c, "config.json");
    b.model = m;
    EXPECT_EQ(config_to_json(a)["model"], config_to_json(b)["model"]);
    c.erase("natsl");
    const ModelConfig r = model_from_hf_config(c, "config.json");
    EXPECT_EQ(r.mixer_kinds(), m.mixer_kinds());
    EXPECT_EQ(r.hidden_size, m.hidden_size);
    EXPECT_EQ(r.mlp_intermediate(), m.mlp_intermediate());
    EXPECT_EQ(r.num_heads, m.num_heads);
    EXPECT_EQ(r.num_attn_heads, m.num_attn_heads);
    EXPECT_EQ(r.attn_qk_norm, m.attn_qk_norm);
  }
}

const char* kTinyNatsl = R"(model:
  vocab_size: 64
  hidden_size: 16
  num_layers: 2
  layers: [gdn, natsl]
  num_heads: 2
  head_dim: 8
  num_attn_heads: 2
  attn_qk_norm: true
  attn_rope: false
  intermediate_size: 32
  nats_frac_penalty: 0.1
data:
  mqar:
    num_kv_pairs: 2
train:
  steps: 2
  batch_size: 2
  seq_len: 16
  warmup_steps: 0
  eval_batches: 0
  device: cpu
)";

std::vector<std::pair<std::string, std::vector<float>>> tensors(const std::string& path) {
  SafeTensorsReader r(path);
  std::vector<std::pair<std::string, std::vector<float>>> out;
  for (const auto& e : r.entries()) out.emplace_back(e.name, r.read(e.name).to_vector<float>());
  return out;
}

TEST(HfInterchange, CheckpointExportImportTrainRoundTripIsBitExact) {
  TempDir dir;
  write_text(dir / "t.yaml", kTinyNatsl);
  RunConfig cfg = load_config(dir / "t.yaml", {"train.out_dir=" + dir / "run"});
  Trainer(cfg, TrainerOptions{nullptr, true}).train();
  const std::string ckpt = *find_latest_checkpoint(dir / "run").latest;

  export_hf(ckpt, dir / "hf");
  const auto exported = tensors(dir / "hf/model.safetensors");
  EXPECT_EQ(exported, tensors(ckpt + "/model.safetensors"));
  import_hf(dir / "hf", dir / "back");
  EXPECT_EQ(tensors(dir / "back/model.safetensors"), exported);
  // Shapes: the short convolutions are [C, 1, K] in the HF folder (a depthwise nn.Conv1d), [C, K] in natsl.
  {
    SafeTensorsReader hf(dir / "hf/model.safetensors"), back(dir / "back/model.safetensors"), ck(ckpt + "/model.safetensors");
    int convs = 0;
    for (const auto& e : ck.entries()) {
      const Shape want = e.name.find("_conv1d.weight") != std::string::npos ? Shape{e.shape[0], 1, e.shape[1]} : e.shape;
      convs += want != e.shape;
      EXPECT_EQ(hf.find(e.name)->shape, want) << e.name;
      EXPECT_EQ(back.find(e.name)->shape, e.shape) << e.name;
    }
    EXPECT_EQ(convs, 3 * 2);  // q/k/v in each of the two layers
  }

  // model.yaml rebuilds the same model (routing penalty included); init_from loads the same weights.
  RunConfig again = load_config(dir / "t.yaml", {"model=" + dir / "back/model.yaml",
                                                 "train.init_from=" + dir / "back/model.safetensors",
                                                 "train.out_dir=" + dir / "again"});
  EXPECT_EQ(config_to_json(again)["model"], config_to_json(cfg)["model"]);
  Trainer tr(again, TrainerOptions{nullptr, false});
  const std::vector<float> flat = tr.parameters().master().flat(DType::f32).to_vector<float>();
  int checked = 0;
  for (const auto& entry : tr.parameters().layout().entries())
    for (const auto& [name, v] : exported)
      if (name == entry.name) {
        EXPECT_EQ(std::vector<float>(flat.begin() + entry.offset, flat.begin() + entry.offset + entry.numel()), v)
            << name;
        ++checked;
      }
  EXPECT_EQ(checked, int(exported.size()));

  // The same through the program; and init_from refuses weights of another model.
  testing::CommandResult r = testing::run_natsl("export-hf " + ckpt + " " + dir / "hf2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(tensors(dir / "hf2/model.safetensors"), exported);
  r = testing::run_natsl("import-hf " + dir / "hf2" + " " + dir / "back2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // init_from takes an HF folder's weights as they are ([C, 1, K] convolutions included).
  {
    RunConfig direct = load_config(dir / "t.yaml", {"train.init_from=" + dir / "hf2/model.safetensors",
                                                    "train.out_dir=" + dir / "direct"});
    Trainer td(direct, TrainerOptions{nullptr, false});
    EXPECT_EQ(td.parameters().master().flat(DType::f32).to_vector<float>(), flat);
  }
  r = testing::run_natsl("train " + dir / "t.yaml" + " train.init_from=" + dir / "hf2/model.safetensors" +
                         " model.hidden_size=32 train.out_dir=" + dir / "wide");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("train.init_from"), std::string::npos) << r.output;
}

std::string error_of(const std::function<void()>& f) { return testing::error_of<InputError>(f); }

TEST(HfInterchange, FoldersNatslCannotReadAreOneClearError) {
  TempDir dir;
  write_text(dir / "t.yaml", kTinyNatsl);
  RunConfig cfg = load_config(dir / "t.yaml", {"train.out_dir=" + dir / "run"});
  Trainer(cfg, TrainerOptions{nullptr, true}).train();
  export_hf(*find_latest_checkpoint(dir / "run").latest, dir / "hf");
  nlohmann::json good;
  std::ifstream(dir / "hf/config.json") >> good;
  good.erase("natsl");  // as a folder written elsewhere

  auto import_with = [&](const nlohmann::json& c) {
    write_text(dir / "hf/config.json", c.dump());
    return error_of([&] { import_hf(dir / "hf", dir / "out"); });
  };
  nlohmann::json c = good;
  c["model_type"] = "llama";
  EXPECT_NE(import_with(c).find("model_type \"llama\""), std::string::npos);
  c = good;
  c["hidden_size"] = 32;  // the weights are 16 wide
  EXPECT_NE(import_with(c).find("has shape"), std::string::npos);
  c = good;
  c.erase("num_heads");
  EXPECT_NE(import_with(c).find("\"num_heads\""), std::string::npos);
  c = good;
  c["ops_for_incomplete_chunks"] = "attn";
  EXPECT_NE(import_with(c).find("ops_for_incomplete_chunks"), std::string::npos);
  c = good;
  c["gdn_layers"] = {0, 1};  // a GDN model under the NAtS-L type: layer 1's tensors do not fit
  EXPECT_NE(import_with(c).find("model.layers.1.attn"), std::string::npos);
  c = good;
  c["num_hidden_layers"] = 1.5;
  EXPECT_NE(import_with(c).find("num_hidden_layers"), std::string::npos);
  EXPECT_EQ(import_with(good), "");
  EXPECT_NE(error_of([&] { import_hf(dir / "nowhere", dir / "out"); }).find("nowhere/config.json"), std::string::npos);
}

}  // namespace
}  // namespace natsl
