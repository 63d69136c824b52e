// One optimizer step of the Trainer against the formulas written out here (global-norm clipping as
// torch.nn.utils.clip_grad_norm_, AdamW as torch.optim.AdamW, the no-decay group), the non-finite skip, the
// stop after train.max_consecutive_nonfinite such steps, and no checkpoint of non-finite weights.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include "core/error.h"
#include "trainers/trainer.h"
#include "trainer_test_util.h"

namespace natsl {
namespace {

RunConfig small_config(const std::string& out_dir) {
  RunConfig c = testing::millisecond_run_config(out_dir);
  c.train.steps = 1;
  c.train.batch_size = 4;
  c.train.grad_accum = 2;
  c.train.schedule = "constant";
  c.train.lr = 0.01;
  c.train.eps = 0.1;
  c.train.weight_decay = 0.5;
  c.train.betas = {0.9, 0.95};
  validate_config(c);
  return c;
}

// NaN weights from now on: the embedding table of the master copy filled with NaN.
void poison_embeddings(const Trainer& tr) {
  const ParameterStore& ps = tr.parameters();
  ps.master().view(ps.layout().find("model.embeddings.weight")).fill_(std::numeric_limits<double>::quiet_NaN());
}

std::vector<float> host(const Tensor& t) { return t.to_vector<float>(); }

void check_one_step(double clip) {
  testing::TempDir dir;
  RunConfig cfg = small_config(dir.str());
  cfg.train.clip_grad_norm = clip;
  Trainer tr(cfg, TrainerOptions{nullptr, false});
  const ParameterStore& ps = tr.parameters();
  std::vector<float> p0 = host(ps.master().flat(DType::f32));
  std::vector<bool> decayed(p0.size(), false);
  for (size_t i = 0; i < ps.parameters().size(); ++i) {
    const FlatEntry& e = ps.layout().entries()[i];
    for (int64_t k = 0; k < e.numel(); ++k) decayed[size_t(e.offset + k)] = !ps.parameters()[i].meta->no_decay;
  }
  TrainSummary s = tr.train();
  ASSERT_EQ(s.step, 1);
  ASSERT_EQ(s.skipped_steps, 0);
  // The grad buffer still holds the step's (accumulated, mean-loss) gradients.
  std::vector<float> g = host(ps.grads().flat(DType::f32));
  std::vector<float> p1 = host(ps.master().flat(DType::f32));
  double sq = 0;
  for (float x : g) sq += double(x) * x;
  const double norm = std::sqrt(sq);
  const double c = clip > 0 ? std::min(1.0, clip / (norm + 1e-6)) : 1.0;
  if (clip > 0) {
    ASSERT_LT(c, 0.5) << "the test needs clipping to be active (norm " << norm << ")";
  }
  const double lr = cfg.train.lr, wd = cfg.train.weight_decay, eps = cfg.train.eps;
  size_t n_decayed = 0, n_checked = 0;
  for (size_t i = 0; i < p0.size(); ++i) {
    // First AdamW step: m_hat = c g, v_hat = (c g)^2, so the update is lr c g / (|c g| + eps).
    double cg = c * g[i];
    double expect = double(p0[i]) * (decayed[i] ? 1.0 - lr * wd : 1.0) - lr * cg / (std::abs(cg) + eps);
    ASSERT_NEAR(p1[i], expect, 1e-6 + 1e-5 * std::abs(expect)) << "element " << i;
    n_decayed += decayed[i];
    n_checked += 1;
  }
  EXPECT_GT(n_decayed, 0u);
  EXPECT_LT(n_decayed, n_checked);  // norm gains are in the no-decay group
}

TEST(Trainer, OneStepWithClippingMatchesTheFormulas) { check_one_step(0.01); }
TEST(Trainer, OneStepWithoutClippingMatchesTheFormulas) { check_one_step(0.0); }

TEST(Trainer, NonFiniteGradNormSkipsTheStep) {
  testing::TempDir dir;
  RunConfig cfg = small_config(dir.str());
  cfg.train.steps = 3;
  Trainer tr(cfg, TrainerOptions{nullptr, false});
  const ParameterStore& ps = tr.parameters();
  int emb = ps.layout().find("model.embeddings.weight");
  ASSERT_GE(emb, 0);
  ps.master().view(emb).fill_(std::numeric_limits<double>::quiet_NaN());
  std::vector<float> before = host(ps.master().flat(DType::f32));
  TrainSummary s = tr.train();
  EXPECT_EQ(s.step, 3);
  EXPECT_EQ(s.skipped_steps, 3);
  std::vector<float> after = host(ps.master().flat(DType::f32));
  for (size_t i = 0; i < before.size(); ++i)
    if (!std::isnan(before[i])) {
      ASSERT_EQ(before[i], after[i]) << "a skipped step changed element " << i;
    }
}

// Once the weights are NaN every step is skipped: after train.max_consecutive_nonfinite of them in a row the
// run stops with an error instead of running on to "done".
TEST(Trainer, NonFiniteStepsInARowStopTheRun) {
  testing::TempDir dir;
  RunConfig cfg = small_config(dir.str());
  cfg.train.steps = 10;
  cfg.train.max_consecutive_nonfinite = 3;
  Trainer tr(cfg, TrainerOptions{nullptr, false});
  poison_embeddings(tr);
  try {
    tr.train();
    ADD_FAILURE() << "the run went on with NaN weights";
  } catch (const InputError& e) {
    ADD_FAILURE() << "a diverged run is not bad input: " << e.what();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("not finite for 3 steps in a row"), std::string::npos) << m;
    EXPECT_NE(m.find("train.max_consecutive_nonfinite"), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
  EXPECT_EQ(tr.step(), 3);
}

// With skip_nonfinite off the NaN gradients reach the weights; the checkpoint at the end is refused.
TEST(Trainer, NonFiniteWeightsAreNeverCheckpointed) {
  testing::TempDir dir;
  RunConfig cfg = small_config(dir / "run");
  cfg.train.steps = 2;
  cfg.train.skip_nonfinite = false;
  Trainer tr(cfg, TrainerOptions{nullptr, true});
  poison_embeddings(tr);
  try {
    tr.train();
    ADD_FAILURE() << "a checkpoint of NaN weights was written";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("NaN or Inf"), std::string::npos) << e.what();
  }
  EXPECT_EQ(tr.step(), 2);
  EXPECT_FALSE(std::filesystem::exists(dir / "run/checkpoints/step_000002"));
  EXPECT_FALSE(std::filesystem::exists(dir / "run/checkpoints/.tmp-step_000002"));
}

}  // namespace
}  // namespace natsl

namespace natsl {

// A model whose Gated DeltaNet heads the CUDA kernels cannot run is refused before the run starts, naming the
// config keys (the kernels would fail at the first forward). No GPU is touched: the check reads the config only.
TEST(Trainer, RefusesGdnHeadsTheCudaKernelsCannotRunBeforeStarting) {
  ModelConfig m;
  m.layers = {"gdn", "natsl"};
  m.num_layers = 2;
  m.head_dim = 32;
  m.expand_v = 1.0;
  try {
    check_model_fits_device(m, Device::cuda(0), Precision::bf16);
    FAIL() << "K = 32 accepted on CUDA";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("model.head_dim = 32"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("train.device=cpu"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(check_model_fits_device(m, kCPU, Precision::f32));  // the CPU path takes any size
  m.head_dim = 64;
  EXPECT_NO_THROW(check_model_fits_device(m, Device::cuda(0), Precision::bf16));
  m.head_dim = 256;
  EXPECT_NO_THROW(check_model_fits_device(m, Device::cuda(0), Precision::bf16));
  EXPECT_THROW(check_model_fits_device(m, Device::cuda(0), Precision::f32), InputError);  // f32: K <= 128
  m.layers = {"attn", "attn"};
  m.head_dim = 32;
  EXPECT_NO_THROW(check_model_fits_device(m, Device::cuda(0), Precision::bf16));  // no GDN heads at all
}

}  // namespace natsl
