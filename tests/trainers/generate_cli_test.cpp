// `natsl generate`: a trained checkpoint continues a prompt and prints one stats line (prefill and decode
// tokens/s, the KV cache held against full attention); the same seed gives the same text; bad input
// (no checkpoint, an empty prompt, bad numbers, another model) is one clear line and exit 2.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "trainer_test_util.h"

namespace natsl {
namespace {

using testing::CommandResult;
using testing::expect_one_line_input_error;
using testing::read_text;
using testing::run_natsl;
using testing::TempDir;
using testing::write_text;

// kSmallConfig with the byte tokenizer's vocabulary, trained 4 steps into DIR/run.
std::string train_small(const TempDir& dir) {
  write_text(dir / "small.yaml", std::string(testing::kSmallConfig));
  const CommandResult r = run_natsl("train " + dir / "small.yaml model.vocab_size=258 train.out_dir=" + dir / "run");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return dir / "small.yaml model.vocab_size=258 train.out_dir=" + dir / "run";
}

TEST(GenerateCli, ContinuesAPromptAndReportsTheCache) {
  TempDir dir;
  const std::string cfg = train_small(dir);
  CommandResult r = run_natsl("generate " + cfg + " --prompt 'abc' --max-new-tokens 12 --seed 4 --top-k 20 "
                              "--top-p 0.9 --temperature 0.8 --ignore-eos --json " + dir / "a.json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.rfind("abc", 0), 0u) << r.output;
  for (const char* m : {"prefill 4 tokens", "decode 12 tokens in 11 steps", "tokens/s", "KV cache", "full attention",
                        "ratio 1.0000"})  // an attention model holds everything: ratio 1
    EXPECT_NE(r.output.find(m), std::string::npos) << m << " in:\n" << r.output;
  const nlohmann::json a = nlohmann::json::parse(read_text(dir / "a.json"));
  EXPECT_EQ(a["new_tokens"], 12);
  EXPECT_EQ(a["prompt_tokens"], 4);  // BOS + 3 bytes
  EXPECT_EQ(a["step"], 4);
  // 15 positions (4 + 11) x 2 heads x (8 + 8) values x 4 bytes.
  EXPECT_EQ(a["kv_cache_bytes"], 15 * 2 * 16 * 4);
  EXPECT_EQ(a["full_attention_kv_bytes"], a["kv_cache_bytes"]);
  // The same seed gives the same text; the explicit checkpoint is the newest one.
  r = run_natsl("generate " + cfg + " checkpoint=" + dir / "run/checkpoints/step_000004" +
                " --prompt 'abc' --max-new-tokens 12 --seed 4 --top-k 20 --top-p 0.9 --temperature 0.8 --ignore-eos "
                "--json " + dir / "b.json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(read_text(dir / "b.json"))["tokens"], a["tokens"]);
  // Greedy, from a file.
  write_text(dir / "prompt.txt", "hello\n");
  r = run_natsl("generate " + cfg + " --prompt-file " + dir / "prompt.txt --temperature 0 --max-new-tokens 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.rfind("hello\n", 0), 0u) << r.output;
}

// A NAtS-L model keeps only the softmax-routed chunks: with every second chunk softmax and the GDN layer
// holding no KV, the ratio to full attention is well below 1.
TEST(GenerateCli, NatslModelHoldsASmallerCache) {
  TempDir dir;
  write_text(dir / "natsl.yaml", std::string(testing::kSmallConfig) +
                                     "  # natsl\n");  // the same run, natsl layers set by overrides below
  const std::string model = " model.vocab_size=258 model.layers=[natsl,gdn] model.num_layers=2 model.num_heads=2 "
                            "model.head_dim=8 model.num_attn_heads=4 model.nats_routing=every_nth "
                            "model.nats_routing_every=2 train.out_dir=" + dir / "run";
  CommandResult r = run_natsl("train " + dir / "natsl.yaml" + model);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_natsl("generate " + dir / "natsl.yaml" + model + " --prompt-file " + dir / "natsl.yaml" +
                " --max-new-tokens 150 --ignore-eos --seed 2 --json " + dir / "g.json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json g = nlohmann::json::parse(read_text(dir / "g.json"));
  EXPECT_EQ(g["new_tokens"], 150);
  const double ratio = g["kv_cache_ratio"];
  EXPECT_GT(ratio, 0.0);
  EXPECT_LT(ratio, 0.5) << r.output;  // half of the layers hold no KV, the other keeps every second chunk
  EXPECT_GT(g["decode_state_bytes"].get<int64_t>(), 0);
}

TEST(GenerateCli, BadInputExitsTwo) {
  TempDir dir;
  const std::string cfg = train_small(dir);
  const std::string p = " --prompt hi";
  expect_one_line_input_error(run_natsl("generate " + cfg + " checkpoint=" + dir / "nowhere" + p), {dir / "nowhere"});
  expect_one_line_input_error(run_natsl("generate " + dir / "small.yaml model.vocab_size=258 train.out_dir=" + dir / "empty" + p),
                   {"no checkpoint= given", dir / "empty/checkpoints", "natsl generate CONFIG checkpoint=DIR"});
  expect_one_line_input_error(run_natsl("generate " + cfg + " --prompt ''"), {"the prompt is empty"});
  write_text(dir / "empty.txt", "");
  expect_one_line_input_error(run_natsl("generate " + cfg + " --prompt-file " + dir / "empty.txt"),
                   {"the prompt is empty", dir / "empty.txt"});
  expect_one_line_input_error(run_natsl("generate " + cfg + " --prompt-file " + dir / "none.txt"), {dir / "none.txt"});
  expect_one_line_input_error(run_natsl("generate " + cfg), {"--prompt TEXT or --prompt-file FILE"});
  expect_one_line_input_error(run_natsl("generate " + cfg + p + " --prompt-file " + dir / "empty.txt"), {"--prompt"});
  expect_one_line_input_error(run_natsl("generate " + cfg + p + " --temperature -1"), {"--temperature"});
  expect_one_line_input_error(run_natsl("generate " + cfg + p + " --temperature warm"), {"--temperature"});
  expect_one_line_input_error(run_natsl("generate " + cfg + p + " --top-p 1.5"), {"--top-p", "(0, 1]"});
  expect_one_line_input_error(run_natsl("generate " + cfg + p + " --top-k -2"), {"--top-k"});
  expect_one_line_input_error(run_natsl("generate " + cfg + p + " --max-new-tokens 0"), {"--max-new-tokens"});
  expect_one_line_input_error(run_natsl("generate " + cfg + p + " --max-new-tokens many"), {"--max-new-tokens"});
  // Another model than the checkpoint's, or a tokenizer the model's vocabulary cannot hold.
  expect_one_line_input_error(run_natsl("generate " + cfg + p + " model.hidden_size=32"),
                   {"model.hidden_size", "generate with the config the checkpoint was trained with"});
  expect_one_line_input_error(run_natsl("generate " + dir / "small.yaml train.out_dir=" + dir / "run" + p),
                   {"model.vocab_size 64", "tokenizer"});
}

TEST(GenerateCli, Help) {
  const CommandResult r = run_natsl("generate --help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* m : {"--prompt", "--prompt-file", "--max-new-tokens", "--temperature", "--top-k", "--top-p",
                        "--seed", "--json", "checkpoint=DIR"})
    EXPECT_NE(r.output.find(m), std::string::npos) << m;
  EXPECT_NE(run_natsl("--help").output.find("generate"), std::string::npos);
}

}  // namespace
}  // namespace natsl
