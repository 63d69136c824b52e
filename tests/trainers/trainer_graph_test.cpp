// trainers/trainer_graph.cpp: train.cuda_graph's fallback when a capture fails (the replayed steps' bits and the
// runs that stay eager are in resume_test.cpp's CudaGraphTraining cases, through the natsl program).
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/test_util.h"
#include "trainers/config.h"
#include "trainers/trainer.h"
#include "trainer_test_util.h"

namespace natsl {
namespace {

RunConfig gpu_hybrid_config(const std::string& out_dir) {
  RunConfig c;
  c.model.vocab_size = 320;
  c.model.hidden_size = 64;
  c.model.num_layers = 3;
  c.model.layers = {"gdn", "natsl", "attn"};
  c.model.num_heads = 2;
  c.model.head_dim = 128;
  c.model.expand_v = 1.0;
  c.model.num_attn_heads = 4;
  c.model.attn_qk_norm = true;
  c.model.attn_rope = false;
  c.model.intermediate_size = 64;
  c.model.nats_frac_target = {0.5};  // a routing penalty: its value is a statistic too
  c.model.nats_frac_warmup_steps = 0;
  c.data.mqar.vocab_size = 300;
  c.data.mqar.num_kv_pairs = 4;
  c.train.steps = 7;
  c.train.batch_size = 2;
  c.train.grad_accum = 2;
  c.train.seq_len = 256;
  c.train.warmup_steps = 2;
  c.train.lr = 1e-2;
  c.train.device = "cuda";
  c.train.precision = "bf16";
  c.train.deterministic = true;
  c.train.eval_batches = 0;
  c.train.ckpt_every = 0;
  c.train.out_dir = out_dir;
  return c;
}

struct GraphRun {
  std::vector<nlohmann::json> rows;
  std::string log;
};

GraphRun train_run(RunConfig cfg, bool fail_capture) {
  validate_config(cfg);
  TrainerOptions opts;
  opts.fail_cuda_graph_capture = fail_capture;
  char* buf = nullptr;
  size_t len = 0;
  opts.out = open_memstream(&buf, &len);
  {
    Trainer tr(cfg, opts);
    tr.train();
  }
  std::fclose(opts.out);
  GraphRun r{{}, std::string(buf, len)};
  std::free(buf);
  std::ifstream in(cfg.train.out_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) r.rows.push_back(nlohmann::json::parse(line));
  return r;
}

// One eager run against two runs with graphs. A forced capture failure: each failure is said, the step trains
// eagerly on the micro-batches it had taken, the next step tries once more, then the run stays eager: the same run
// as without graphs, bit for bit (the data read once per micro-batch, the statistics those of the eager steps).
// Graphs that work: the routing statistics the replays write reach the metrics (the restore of the modules'
// captured forward state), equal to the eager run's.
TEST(CudaGraphFallback, FailedCapturesLeaveTheEagerRunAndReplaysLogTheirOwnStatistics) {
  NATSL_REQUIRE_GPU();
  testing::TempDir dir;
  const GraphRun eager = train_run(gpu_hybrid_config(dir / "eager"), false);
  ASSERT_EQ(eager.rows.size(), 7u);
  auto expect_eager_rows = [&](const GraphRun& r, const std::string& what) {
    ASSERT_EQ(r.rows.size(), eager.rows.size()) << what;
    for (size_t i = 0; i < eager.rows.size(); ++i) {
      ASSERT_TRUE(eager.rows[i]["stats"].contains("layers.1.attn_frac")) << eager.rows[i].dump();
      EXPECT_EQ(r.rows[i]["loss"], eager.rows[i]["loss"]) << what << ", step " << i + 1;
      EXPECT_EQ(r.rows[i]["grad_norm"], eager.rows[i]["grad_norm"]) << what << ", step " << i + 1;
      EXPECT_EQ(r.rows[i]["stats"], eager.rows[i]["stats"]) << what << ", step " << i + 1;
    }
  };
  RunConfig cfg = gpu_hybrid_config(dir / "failing");
  cfg.train.cuda_graph = true;
  const GraphRun failing = train_run(cfg, true);
  EXPECT_NE(failing.log.find("cuda_graph: step 3 could not be captured (CUDA graph capture on cuda:0 failed: TrainerOptions::fail_cuda_graph_capture); "
                             "it runs eagerly, and the next step tries again"),
            std::string::npos)
      << failing.log;
  EXPECT_NE(failing.log.find("cuda_graph: step 4 could not be captured (CUDA graph capture on cuda:0 failed: TrainerOptions::fail_cuda_graph_capture); "
                             "this run stays eager"),
            std::string::npos)
      << failing.log;
  EXPECT_EQ(failing.log.find("cuda_graph: step 5"), std::string::npos) << failing.log;
  expect_eager_rows(failing, "failing captures");

  cfg.train.out_dir = dir / "graph";
  const GraphRun graph = train_run(cfg, false);
  EXPECT_NE(graph.log.find("cuda_graph: step 3 captured"), std::string::npos) << graph.log;
  expect_eager_rows(graph, "replayed steps");
}

}  // namespace
}  // namespace natsl
