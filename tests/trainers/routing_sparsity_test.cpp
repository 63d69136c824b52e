// Every routing-sparsity control reaches what it asks for when a tiny NAtS-L model trains on the CPU
// (docs/training.md, "Routing-sparsity controls"): the fraction target (global and per layer, from above and
// from below), the penalty, the top-k budget, and the fixed routings. The fraction read is routed_frac, the
// softmax share of the routable chunks (all but the last, which training forces to both branches), averaged
// over the last 20 steps' metrics. The targets train with Gumbel sampling: the tiny task's chunks are too alike
// for an argmax router to tell apart (it labels a head's chunks all alike, so only 0, 1/2 and 1 are reachable),
// while sampled labels reach any fraction in expectation.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "trainers/trainer.h"
#include "trainer_test_util.h"

namespace natsl {
namespace {

// Two NAtS-L layers, 512-token sequences: 8 chunks, 7 routable, per (row, router head).
RunConfig sparsity_config(const std::string& out_dir) {
  RunConfig c;
  c.model.vocab_size = 520;  // MQAR draws from a vocabulary larger than the sequence
  c.model.hidden_size = 16;
  c.model.num_layers = 2;
  c.model.layers = {"natsl", "natsl"};
  c.model.num_heads = 2;
  c.model.head_dim = 8;
  c.model.num_attn_heads = 2;
  c.model.attn_qk_norm = true;
  c.model.intermediate_size = 32;
  c.data.mqar.num_kv_pairs = 8;
  c.train.steps = 80;
  c.train.batch_size = 2;
  c.train.seq_len = 512;
  c.train.warmup_steps = 0;
  c.train.schedule = "constant";
  c.train.lr = 1e-2;
  c.train.device = "cpu";
  c.train.eval_batches = 0;
  c.train.eval_every = 0;
  c.train.ckpt_every = 0;
  c.train.out_dir = out_dir;
  return c;
}

// Mean routed_frac per layer over the last `last` steps of a run of `cfg`.
std::vector<double> routed_fractions(RunConfig cfg, int64_t last = 20) {
  validate_config(cfg);
  Trainer tr(cfg, TrainerOptions{nullptr, true});
  tr.train();
  std::vector<double> sum(size_t(cfg.model.num_layers), 0.0);
  std::vector<nlohmann::json> rows;
  std::ifstream in(cfg.train.out_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  EXPECT_GE(int64_t(rows.size()), last);
  for (size_t i = rows.size() - size_t(last); i < rows.size(); ++i)
    for (size_t l = 0; l < sum.size(); ++l) sum[l] += rows[i]["stats"]["layers." + std::to_string(l) + ".routed_frac"].get<double>();
  for (double& s : sum) s /= double(last);
  return sum;
}

TEST(RoutingSparsity, FractionTargetsAreReachedFromAboveAndBelow) {
  for (double target : {0.15, 0.7}) {
    SCOPED_TRACE(target);
    testing::TempDir dir;
    RunConfig c = sparsity_config(dir / std::to_string(target));
    c.model.nats_sample = "gumbel";
    c.model.nats_frac_target = {target};
    c.model.nats_frac_target_coef = 20.0;
    c.model.nats_frac_warmup_steps = 10;
    for (double f : routed_fractions(c)) EXPECT_NEAR(f, target, 0.1);
  }
}

TEST(RoutingSparsity, PerLayerTargets) {
  testing::TempDir dir;
  RunConfig c = sparsity_config(dir.str());
  c.model.nats_sample = "gumbel";
  c.model.nats_frac_target = {0.1, 0.6};
  c.model.nats_frac_target_coef = 20.0;
  const std::vector<double> f = routed_fractions(c);
  EXPECT_NEAR(f[0], 0.1, 0.1);
  EXPECT_NEAR(f[1], 0.6, 0.1);
}

TEST(RoutingSparsity, PenaltyDrivesTheFractionDown) {
  testing::TempDir dir;
  RunConfig free_run = sparsity_config(dir / "free");
  RunConfig penalised = sparsity_config(dir / "penalised");
  penalised.model.nats_frac_penalty = 5.0;
  const std::vector<double> f0 = routed_fractions(free_run), f1 = routed_fractions(penalised);
  for (size_t l = 0; l < f0.size(); ++l) {
    EXPECT_LT(f1[l], 0.05) << "layer " << l;
    EXPECT_LT(f1[l], f0[l]) << "layer " << l;
  }
}

TEST(RoutingSparsity, BudgetsAndFixedRoutingsHaveTheirFractions) {
  struct Case {
    std::string routing;
    double fraction;
    int64_t every;
    double expect, tol;
  };
  // 7 routable chunks: top-k 0.3 -> round(2.1) = 2 of 7; every 3rd -> chunks 0, 3, 6 = 3 of 7; random 0.3 over
  // 2 rows x 7 x 2 heads x 20 steps = 560 labels (standard error 0.019).
  const Case cases[] = {{"topk", 0.3, 4, 2.0 / 7.0, 1e-6},   {"every_nth", 0.25, 3, 3.0 / 7.0, 1e-6},
                        {"random", 0.3, 4, 0.3, 0.08},         {"all_softmax", 0.25, 4, 1.0, 0.0},
                        {"all_gdn", 0.25, 4, 0.0, 0.0}};
  for (const Case& k : cases) {
    SCOPED_TRACE(k.routing);
    testing::TempDir dir;
    RunConfig c = sparsity_config(dir / k.routing);
    c.train.steps = 25;
    c.model.nats_routing = k.routing;
    c.model.nats_routing_fraction = k.fraction;
    c.model.nats_routing_every = k.every;
    for (double f : routed_fractions(c)) EXPECT_NEAR(f, k.expect, k.tol);
  }
}

}  // namespace
}  // namespace natsl
