// The run config: YAML loading, overrides, and every kind of bad input (with file, line, key, hint).
#include <gtest/gtest.h>

#include <functional>

#include "core/config_key_error.h"
#include "core/error.h"
#include "trainers/config.h"
#include "trainers/config_schema.h"
#include "trainer_test_util.h"

namespace natsl {
namespace {

using testing::expect_load_error;
using testing::load_error;
using testing::TempDir;
using testing::write_text;

TEST(Config, EmptyMappingGivesDefaults) {
  TempDir dir;
  write_text(dir / "c.yaml", "{}\n");
  RunConfig c = load_config(dir / "c.yaml");
  RunConfig d;
  EXPECT_EQ(config_to_json(c), config_to_json(d));
}

// An empty file (a wrong path, a cut copy) would otherwise train a default model without a word.
TEST(Config, EmptyOrNonMappingFileIsRefused) {
  TempDir dir;
  write_text(dir / "empty.yaml", "");
  EXPECT_NE(load_error(dir / "empty.yaml").find(dir / "empty.yaml" + ": the config file is empty"), std::string::npos);
  write_text(dir / "comments.yaml", "# model:\n#   hidden_size: 64\n");
  EXPECT_NE(load_error(dir / "comments.yaml").find("is empty (or holds only comments)"), std::string::npos);
  write_text(dir / "list.yaml", "- train\n- model\n");
  EXPECT_NE(load_error(dir / "list.yaml").find(dir / "list.yaml" + ": a config must be a mapping"), std::string::npos);
  write_text(dir / "model.yaml", "\n");
  write_text(dir / "ok.yaml", "{}\n");
  EXPECT_NE(load_error(dir / "ok.yaml", {"model=" + dir / "model.yaml"}).find(dir / "model.yaml" + ": the model config file is empty"),
            std::string::npos);
}

TEST(Config, ReadsEverySection) {
  TempDir dir;
  write_text(dir / "c.yaml",
             "model:\n  hidden_size: 64\n  num_layers: 3\n  layers: [attn, attn, attn]\n"
             "data:\n  source: mqar\n  mqar:\n    num_kv_pairs: 4\n    power_a: 0.5\n"
             "train:\n  steps: 50\n  lr: 1.0e-3\n  betas: [0.8, 0.9]\n  schedule: wsd\n  warmup_steps: 5\n"
             "  no_decay: [norm]\n  seq_len: 64\n"
             "resume: auto\n");
  RunConfig c = load_config(dir / "c.yaml");
  EXPECT_EQ(c.model.hidden_size, 64);
  EXPECT_EQ(c.model.layers, (std::vector<std::string>{"attn", "attn", "attn"}));
  EXPECT_EQ(c.data.mqar.num_kv_pairs, 4);
  EXPECT_DOUBLE_EQ(c.data.mqar.power_a, 0.5);
  EXPECT_EQ(c.train.steps, 50);
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-3);
  EXPECT_EQ(c.train.betas, (std::vector<double>{0.8, 0.9}));
  EXPECT_EQ(c.train.schedule, "wsd");
  EXPECT_EQ(c.train.no_decay, (std::vector<std::string>{"norm"}));
  EXPECT_EQ(c.resume, "auto");
  EXPECT_EQ(c.origin.at("train.lr"), dir / "c.yaml" + ":12");
}

TEST(Config, UnknownKeyNamesFileLineAndSuggests) {
  TempDir dir;
  const std::string path = dir / "c.yaml";
  expect_load_error(path, "train:\n  steps: 10\n  lerning_rate: 0.1\n",
                    {path + ":3", "unknown key 'train.lerning_rate'"});
  expect_load_error(path, "train:\n  setps: 10\n", {path + ":2", "did you mean 'train.steps'?"});
  // A key in the wrong section points to where it belongs.
  expect_load_error(path, "model:\n  hidden_size: 32\n  lr: 0.1\n", {":3", "'train.lr'"});
  // An unknown section.
  expect_load_error(path, "trian:\n  steps: 3\n", {":1", "did you mean 'train'?"});
  // Nothing close: the valid keys are listed.
  expect_load_error(path, "data:\n  zzzzzzzzzz: 3\n", {"valid keys in 'data': source, mqar, niah, text"});
}

TEST(Config, WrongTypesNameKeyAndLine) {
  TempDir dir;
  struct Case {
    std::string yaml, key, expect;
  };
  std::vector<Case> cases = {
      {"train:\n  steps: abc\n", "train.steps", "must be an integer, got 'abc'"},
      {"train:\n  steps: 3.5\n", "train.steps", "must be an integer, got '3.5'"},
      {"train:\n  lr: fast\n", "train.lr", "must be a number"},
      {"train:\n  deterministic: maybe\n", "train.deterministic", "must be true or false"},
      {"train:\n  betas: 0.9\n", "train.betas", "must be a list of numbers"},
      {"train:\n  betas: [0.9]\n", "train.betas", "must have 2 entries"},
      {"train:\n  steps:\n", "train.steps", "got no value"},
      {"train:\n  out_dir: [a, b]\n", "train.out_dir", "must be a string, got a list"},
      {"model:\n  layers: [attn, mamba]\n", "model.layers", "expected one of attn, gdn, natsl"},
      {"train: 5\n", "train", "must be a mapping"},
  };
  for (const auto& c : cases) expect_load_error(dir / "c.yaml", c.yaml, {c.key, c.expect, dir / "c.yaml:"});
}

TEST(Config, OutOfRangeAndBadChoices) {
  TempDir dir;
  const std::string path = dir / "c.yaml";
  expect_load_error(path, "train:\n  steps: 10\n  lr: -0.1\n",
                    {path + ":3", "value -0.1 of 'train.lr' is out of range: expected in [0, 10]"});
  expect_load_error(path, "train:\n  schedule: cosin\n", {":2", "did you mean 'cosine'?"});
  expect_load_error(path, "train:\n  batch_size: 0\n", {"'train.batch_size' is out of range: expected >= 1"});
}

// Degenerate optimiser settings: AdamW divides by eps and by 1 - beta^t, a negative lr or weight decay
// ascends, NaN/Inf poisons every weight. Each is one line naming the file, line and key.
TEST(Config, DegenerateOptimiserSettingsAreRefused) {
  TempDir dir;
  const struct {
    std::string line, key, expect;
  } cases[] = {
      {"eps: 0", "train.eps", "expected in (0, 1]"},
      {"eps: -1.0e-8", "train.eps", "expected in (0, 1]"},
      {"eps: .nan", "train.eps", "out of range"},
      {"betas: [0.9, 1.0]", "train.betas", "expected in [0, 1)"},
      {"betas: [1, 0.95]", "train.betas", "expected in [0, 1)"},
      {"betas: [-0.1, 0.95]", "train.betas", "expected in [0, 1)"},
      {"betas: [0.9, .inf]", "train.betas", "out of range"},
      {"lr: -1.0e-3", "train.lr", "out of range"},
      {"lr: .inf", "train.lr", "out of range"},
      {"lr: .nan", "train.lr", "out of range"},
      {"weight_decay: -0.1", "train.weight_decay", "out of range"},
      {"clip_grad_norm: -1", "train.clip_grad_norm", "out of range"},
      {"clip_grad_norm: .nan", "train.clip_grad_norm", "out of range"},
      {"min_lr_ratio: -0.5", "train.min_lr_ratio", "out of range"},
      {"max_consecutive_nonfinite: 0", "train.max_consecutive_nonfinite", "expected >= 1"},
  };
  for (const auto& c : cases) {
    const std::string e = expect_load_error(dir / "c.yaml", "train:\n  steps: 10\n  " + c.line + "\n",
                                            {dir / "c.yaml:3", "'" + c.key + "'", c.expect});
    EXPECT_EQ(e.find('\n'), std::string::npos) << "one line: " << e;
  }
  // The same checks on the command line; the edges that are allowed stay allowed.
  write_text(dir / "ok.yaml", "train:\n  steps: 10\n  warmup_steps: 1\n");
  EXPECT_THROW(load_config(dir / "ok.yaml", {"train.eps=0"}), InputError);
  RunConfig c = load_config(dir / "ok.yaml", {"train.eps=1.0e-30", "train.betas=[0, 0.999999]", "train.lr=0",
                                              "train.weight_decay=0", "train.clip_grad_norm=0",
                                              "train.max_consecutive_nonfinite=1"});
  EXPECT_EQ(c.train.eps, 1e-30);
  EXPECT_EQ(c.train.max_consecutive_nonfinite, 1);
}

TEST(Config, CrossFieldRulesNameTheLine) {
  TempDir dir;
  const std::string path = dir / "c.yaml";
  expect_load_error(path, "train:\n  steps: 10\n  warmup_steps: 20\n",
                    {path + ":3", "train.warmup_steps (20) exceeds train.steps (10)"});
  expect_load_error(path, "model:\n  num_layers: 2\n  layers: [attn]\n", {":3", "model.layers has 1 entries"});
  expect_load_error(path, "data:\n  source: text\n", {"data.text.train"});
  expect_load_error(path, "train:\n  device: gpu\n", {":2: train.device 'gpu'"});
}

// The train: section's own check names the key in key(), for the loader to find its line.
TEST(Config, TrainCheckNamesTheKey) {
  auto key_of_error = [](const std::function<void(TrainConfig&)>& edit) -> std::string {
    TrainConfig t;
    edit(t);
    try {
      validate_train_config(t);
    } catch (const ConfigKeyError& e) {
      return e.key();
    }
    return "";
  };
  EXPECT_EQ(key_of_error([](TrainConfig&) {}), "");
  EXPECT_EQ(key_of_error([](TrainConfig& t) { t.warmup_steps = t.steps + 1; }), "train.warmup_steps");
  EXPECT_EQ(key_of_error([](TrainConfig& t) { t.stop_at_step = t.steps + 1; }), "train.stop_at_step");
  EXPECT_EQ(key_of_error([](TrainConfig& t) { t.profile_steps = {5, 5}; }), "train.profile_steps");
  EXPECT_EQ(key_of_error([](TrainConfig& t) { t.profile_steps = {1, t.steps + 1}; }), "");
  EXPECT_EQ(key_of_error([](TrainConfig& t) { t.device = "gpu"; }), "train.device");
}

// An owner's error is led by where its key was set: the line of that key (in the run config or in the model
// file it names), "command line", or the config file with "(default of KEY)" when the key was not given.
// (Model errors used to carry the config file's name only.)
TEST(Config, OwnersErrorsNameTheLineOfTheirKey) {
  TempDir dir;
  write_text(dir / "c.yaml", "model:\n  hidden_size: 64\n  norm_eps: 0\n");
  std::string e = load_error(dir / "c.yaml");
  EXPECT_NE(e.find(dir / "c.yaml:3: model.norm_eps must be positive"), std::string::npos) << e;
  e = load_error(dir / "c.yaml", {"model.norm_eps=1e-6", "model.initializer_range=0"});
  EXPECT_EQ(e.rfind("command line: model.initializer_range must be positive", 0), 0u) << e;

  // A mixer's own check (NAtS-L's chunk), in a model file: the line in that file.
  write_text(dir / "models/m.yaml", "default_mixer: natsl\nnum_heads: 2\nnats_block_size: 32\n");
  write_text(dir / "run.yaml", "model: models/m.yaml\n");
  e = load_error(dir / "run.yaml");
  EXPECT_NE(e.find(dir / "models/m.yaml:3: model.nats_block_size must be 64"), std::string::npos) << e;
  // A routing control that contradicts another, named at its own line.
  write_text(dir / "models/m.yaml", "default_mixer: natsl\nnum_heads: 2\nnats_routing: topk\nnats_frac_penalty: 0.1\n");
  e = load_error(dir / "run.yaml");
  EXPECT_NE(e.find(dir / "models/m.yaml:4: model.nats_frac_penalty / model.nats_frac_target steer the learned router"),
            std::string::npos)
      << e;
  // An option left at its default: the file and the key.
  write_text(dir / "models/m.yaml", "default_mixer: natsl\nnum_heads: 3\n");
  e = load_error(dir / "run.yaml");
  EXPECT_NE(e.find(dir / "run.yaml (default of model.num_attn_heads): model.num_attn_heads (4) must be a positive "
                         "multiple of model.num_heads (3)"),
            std::string::npos)
      << e;

  // MQAR's preconditions: the key behind the option (the sequence length is train.seq_len).
  expect_load_error(dir / "m.yaml", "data:\n  mqar:\n    num_kv_pairs: 4\ntrain:\n  seq_len: 63\n",
                    {dir / "m.yaml:5: data.mqar: seq_len must be even"});
  expect_load_error(dir / "m.yaml", "data:\n  mqar:\n    num_kv_pairs: 100\n",
                    {dir / "m.yaml:3: data.mqar: 2 * num_kv_pairs"});
  // The tokenizer against the data source: the line of tokenizer.kind.
  expect_load_error(dir / "t.yaml", "tokenizer:\n  kind: sentencepiece\n  model: x.model\n",
                    {dir / "t.yaml:2: tokenizer.kind is sentencepiece but data.source mqar"});
}

TEST(Config, DuplicateKeyAndSyntaxError) {
  TempDir dir;
  expect_load_error(dir / "c.yaml", "train:\n  steps: 1\n  steps: 2\n", {":3: key 'train.steps' appears twice"});
  expect_load_error(dir / "c.yaml", "train:\n  steps: [1, 2\n  lr: 3\n", {dir / "c.yaml:", "YAML syntax error"});
}

TEST(Config, MissingFile) {
  TempDir dir;
  std::string e = load_error(dir / "nope.yaml");
  EXPECT_NE(e.find("config file '" + dir / "nope.yaml" + "' does not exist"), std::string::npos) << e;
}

TEST(Config, ModelFromFileRelativeToConfig) {
  TempDir dir;
  write_text(dir / "models/m.yaml", "hidden_size: 96\nnum_attn_heads: 3\n");
  write_text(dir / "c.yaml", "model: models/m.yaml\ntrain:\n  steps: 5\n  warmup_steps: 1\n");
  RunConfig c = load_config(dir / "c.yaml");
  EXPECT_EQ(c.model.hidden_size, 96);
  EXPECT_EQ(c.model.num_attn_heads, 3);
  EXPECT_EQ(c.origin.at("model.hidden_size"), dir / "models/m.yaml:1");

  // Errors inside the model file name the model file.
  write_text(dir / "models/m.yaml", "hidden_size: 96\nhiden: 3\n");
  std::string e = load_error(dir / "c.yaml");
  EXPECT_NE(e.find(dir / "models/m.yaml:2"), std::string::npos) << e;
  EXPECT_NE(e.find("unknown key 'model.hiden'"), std::string::npos) << e;

  expect_load_error(dir / "c.yaml", "model: models/absent.yaml\n",
                    {"model config file '" + dir / "models/absent.yaml" + "' does not exist"});
}

TEST(Config, OverridesAreTypeChecked) {
  TempDir dir;
  write_text(dir / "c.yaml", "train:\n  steps: 10\n  warmup_steps: 2\n");
  RunConfig c = load_config(dir / "c.yaml", {"train.steps=20", "train.out_dir=runs/a:b", "resume=auto",
                                            "model.layers=[attn, attn]", "train.lr=1e-2", "train.seed=7"});
  EXPECT_EQ(c.train.steps, 20);
  EXPECT_EQ(c.train.out_dir, "runs/a:b");
  EXPECT_EQ(c.resume, "auto");
  EXPECT_EQ(c.model.layers.size(), 2u);
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-2);
  EXPECT_EQ(c.train.seed, 7);
  EXPECT_EQ(c.origin.at("train.steps"), "command line");

  struct Case {
    std::string arg, expect;
  };
  std::vector<Case> cases = {
      {"train.stesp=5", "unknown key 'train.stesp' (did you mean 'train.steps'?)"},
      {"steps=5", "unknown key 'steps' (did you mean 'train.steps'?)"},
      {"train.steps=abc", "'train.steps' must be an integer, got 'abc'"},
      {"train.steps=", "no value given for 'train.steps'"},
      {"train.steps", "is not an override KEY=VALUE"},
      {"train=3", "'train' is a section"},
      {"train.lr=-1", "out of range"},
      {"train.schedule=cosine2", "did you mean 'cosine'?"},
      {"train.warmup_steps=50", "train.warmup_steps (50) exceeds train.steps (10)"},
  };
  for (const auto& k : cases) {
    std::string e = load_error(dir / "c.yaml", {k.arg});
    EXPECT_NE(e.find(k.expect), std::string::npos) << k.arg << " -> " << e;
    EXPECT_NE(e.find("command"), std::string::npos) << k.arg << " -> " << e;
  }
}

TEST(Config, ResolvedYamlAndJsonRoundTrip) {
  TempDir dir;
  write_text(dir / "c.yaml",
             "model:\n  hidden_size: 48\n  num_attn_heads: 3\n  rope_theta: 500000\n  layers: [attn, attn]\n"
             "train:\n  lr: 0.0003\n  steps: 7\n  warmup_steps: 1\n  out_dir: 'x y/#z'\n  no_decay: []\n");
  RunConfig c = load_config(dir / "c.yaml");
  write_text(dir / "resolved.yaml", config_to_yaml(c));
  RunConfig again = load_config(dir / "resolved.yaml");
  EXPECT_EQ(config_to_json(again), config_to_json(c)) << config_to_yaml(c);
  RunConfig from_json = config_from_json(config_to_json(c), "test");
  EXPECT_EQ(config_to_json(from_json), config_to_json(c));
  EXPECT_NE(config_to_yaml(c).find("  lr: 0.0003\n"), std::string::npos);
  EXPECT_NE(config_table(c).find("train.lr"), std::string::npos);

  // Strings inside lists (paths, mixture paths) that YAML's flow syntax would cut: ',' ']' '}' ': ' '#'.
  write_text(dir / "odd.yaml", "data:\n  source: text\n  text:\n    val: ['a, b].txt', 'c}: #d']\n"
                               "    mix: [{path: 'e]f,g', weight: 1}]\ntrain:\n  no_decay: ['x]', 'y, z']\n");
  c = load_config(dir / "odd.yaml");
  write_text(dir / "odd-resolved.yaml", config_to_yaml(c));
  again = load_config(dir / "odd-resolved.yaml");  // found by fuzz_config (corpus: crash-flow-list-string)
  EXPECT_EQ(config_to_json(again), config_to_json(c)) << config_to_yaml(c);
  EXPECT_EQ(again.data.text.mix.at(0).path, "e]f,g");
}

// data.text.mix: a list of {path, weight}; it round-trips through the resolved YAML, JSON and an override,
// and every bad entry is one error naming the file, the line of `mix:` and the entry's key.
TEST(Config, DataTextMix) {
  TempDir dir;
  const std::string head = "data:\n  source: text\n  text:\n    mix:\n";
  write_text(dir / "c.yaml", head + "      - {path: a.txt, weight: 0.5}\n      - path: 'b c'\n        weight: 2\n");
  RunConfig c = load_config(dir / "c.yaml");
  EXPECT_EQ(c.data.text.mix, (std::vector<MixEntry>{{"a.txt", 0.5}, {"b c", 2.0}}));
  write_text(dir / "resolved.yaml", config_to_yaml(c));
  EXPECT_EQ(load_config(dir / "resolved.yaml").data.text.mix, c.data.text.mix) << config_to_yaml(c);
  EXPECT_EQ(config_from_json(config_to_json(c), "test").data.text.mix, c.data.text.mix);
  EXPECT_EQ(load_config(dir / "c.yaml", {"data.text.mix=[{path: x, weight: 1}]"}).data.text.mix,
            (std::vector<MixEntry>{{"x", 1.0}}));

  const std::pair<std::string, std::vector<std::string>> bad[] = {
      {"[{path: a, weight: 0}]", {"data.text.mix[0].weight", "expected > 0"}},
      {"[{path: a, weight: 1}, {path: b, weight: -1}]", {"data.text.mix[1].weight", "expected > 0"}},
      {"[{path: a, weight: .nan}]", {"data.text.mix[0].weight", "out of range"}},
      {"[{path: a, weight: many}]", {"data.text.mix[0].weight", "must be a number"}},
      {"[{weight: 1}]", {"'data.text.mix[0].path' is missing"}},
      {"[{path: a}]", {"'data.text.mix[0].weight' is missing"}},
      {"[{path: a, weight: 1, wieght: 2}]", {"unknown key 'data.text.mix[0].wieght'", "did you mean 'data.text.mix[0].weight'"}},
      {"[a.txt]", {"'data.text.mix[0]' must be a mapping {path: ..., weight: ...}"}},
      {"3", {"'data.text.mix' must be a list of {path: ..., weight: ...}"}},
  };
  for (const auto& [value, parts] : bad) {
    write_text(dir / "bad.yaml", "data:\n  source: text\n  text:\n    mix: " + value + "\n");
    std::string e = load_error(dir / "bad.yaml");
    EXPECT_NE(e.find(dir / "bad.yaml:4: "), std::string::npos) << value << ": " << e;
    for (const auto& part : parts) EXPECT_NE(e.find(part), std::string::npos) << value << ": " << e;
  }
  // Both data.text.train and data.text.mix: named at the line of mix.
  write_text(dir / "both.yaml", "data:\n  source: text\n  text:\n    train: [a.txt]\n    mix: [{path: b, weight: 1}]\n");
  std::string e = load_error(dir / "both.yaml");
  EXPECT_NE(e.find(dir / "both.yaml:5: data.text.train and data.text.mix are both set"), std::string::npos) << e;
  EXPECT_EQ(load_error(dir / "both.yaml", {"data.text.train=[]"}), "");
  // A weight too small against the others to get any row is refused at load.
  e = load_error(dir / "c.yaml", {"data.text.mix=[{path: x, weight: 1}, {path: y, weight: 1.0e-300}]"});
  EXPECT_NE(e.find("data.text.mix[1] 'y': its weight is too small"), std::string::npos) << e;
  // The spelling `data.mix` points to the key.
  write_text(dir / "short.yaml", "data:\n  mix: [{path: b, weight: 1}]\n");
  e = load_error(dir / "short.yaml");
  EXPECT_NE(e.find("unknown key 'data.mix' (did you mean 'data.text.mix'?)"), std::string::npos) << e;
}

// Found by tests/fuzz/fuzz_config: a string that is not UTF-8 loaded, then config_to_json threw a JSON
// type_error (an internal error at the first checkpoint, after training). It is bad input, named at load.
TEST(Config, NonUtf8StringIsRefusedAtLoad) {
  TempDir dir;
  expect_load_error(dir / "c.yaml", "train:\n  out_dir: \"runs/\xff\xfe\"\n", {"c.yaml:2", "train.out_dir", "UTF-8"});
  write_text(dir / "ok.yaml", "train:\n  out_dir: \"runs/caf\xc3\xa9\"\n");
  EXPECT_EQ(config_to_json(load_config(dir / "ok.yaml"))["train"]["out_dir"], "runs/caf\xc3\xa9");
  const std::string e = load_error(dir / "ok.yaml", {"data.niah.essay_path=\xc3"});
  EXPECT_NE(e.find("data.niah.essay_path"), std::string::npos) << e;
}

TEST(Config, NearestName) {
  EXPECT_EQ(edit_distance("steps", "setps"), 1u);  // a transposition
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(nearest_name("warmup", {"warmup_steps", "steps"}), "warmup_steps");
  EXPECT_EQ(nearest_name("qqqqqq", {"steps", "lr"}), "");
}

}  // namespace
}  // namespace natsl
