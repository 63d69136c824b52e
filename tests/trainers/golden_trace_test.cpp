// The default demo's first steps are the same bits on every x86-64 CPU for a given build.
//
// The same binary once learned MQAR on one machine and stayed on the plateau on another, because Eigen sized
// its GEMM panels from the L1 cache that CPUID reported (kernels/cpu/eigen.h). Here configs/natsl-tiny.yaml
// trains a few steps three ways: as the machine sets it up, with one OpenMP thread, and with Eigen told of
// another CPU's caches. The per-step losses and gradient norms must agree bit for bit, and must equal the
// golden trace checked in for this build's numerics (compiler, -march, Eigen, glibc: natsl_cpu_numerics()).
// Builds without a golden entry check the invariance alone and print the entry to add;
// NATSL_UPDATE_GOLDEN=1 writes it (after a deliberate change of the CPU arithmetic).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <nlohmann/json.hpp>

#include "kernels/cpu/eigen.h"
#include "trainers/config.h"
#include "data/sync_file.h"
#include "trainers/trainer.h"
#include "trainers/io/version.h"
#include "trainer_test_util.h"

namespace natsl {
namespace {

const char* kGoldenFile = NATSL_SOURCE_DIR "/tests/trainers/golden/natsl_tiny_trace.json";

struct Trace {
  std::vector<double> loss, grad_norm;
  bool operator==(const Trace& o) const { return loss == o.loss && grad_norm == o.grad_norm; }
};

std::string show(const Trace& t) {
  std::ostringstream os;
  for (size_t i = 0; i < t.loss.size(); ++i) os << "\n  step " << i + 1 << ": loss " << t.loss[i] << " gnorm " << t.grad_norm[i];
  return os.str();
}

// 12 steps of the default demo (learning rate, warm-up and schedule pinned so that tuning the demo's length
// does not move the trace), read back from metrics.jsonl (JSON numbers round-trip doubles exactly).
Trace train_trace(const std::string& out_dir) {
  RunConfig cfg = load_config(std::string(NATSL_SOURCE_DIR) + "/configs/natsl-tiny.yaml",
                              {"train.steps=12", "train.warmup_steps=3", "train.lr=1e-3", "train.schedule=cosine",
                               "train.seed=0", "train.eval_every=0", "train.eval_batches=0", "train.ckpt_every=0",
                               "train.out_dir=" + out_dir});
  {
    Trainer tr(cfg, TrainerOptions{nullptr, true});
    tr.train();
  }
  Trace t;
  std::istringstream in(testing::read_text(out_dir + "/metrics.jsonl"));
  for (std::string line; std::getline(in, line);) {
    nlohmann::json row = nlohmann::json::parse(line);
    t.loss.push_back(row.at("loss").get<double>());
    t.grad_norm.push_back(row.at("grad_norm").get<double>());
  }
  return t;
}

TEST(GoldenTrace, NatslTinyIsTheSameBitsOnEveryCpu) {
  testing::TempDir dir;
  const Trace machine = train_trace(dir / "machine");
  ASSERT_EQ(machine.loss.size(), 12u);

  // One thread, and the cache sizes of another CPU as Eigen would have read them.
#if defined(_OPENMP)
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  Eigen::setCpuCacheSizes(40 << 10, 1280 << 10, 96 << 20);  // a size no common CPU has
  const Trace other = train_trace(dir / "other");
#if defined(_OPENMP)
  omp_set_num_threads(threads);
#endif
  std::printf("[golden] step 12: loss %a gnorm %a (this machine), %a %a (one thread, 40 KiB L1)\n", machine.loss.back(),
              machine.grad_norm.back(), other.loss.back(), other.grad_norm.back());
  EXPECT_TRUE(other == machine) << "this machine:" << show(machine) << "\none thread, 40 KiB L1:" << show(other);

  const std::string numerics = natsl_cpu_numerics();
  nlohmann::json golden = nlohmann::json::array();
  if (std::ifstream f{kGoldenFile}) golden = nlohmann::json::parse(f);
  const nlohmann::json entry = {{"numerics", numerics}, {"loss", machine.loss}, {"grad_norm", machine.grad_norm}};
  const char* update = std::getenv("NATSL_UPDATE_GOLDEN");
  if (update && std::string(update) == "1") {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& e : golden)
      if (e.at("numerics") != numerics) out.push_back(e);
    out.push_back(entry);
    const std::string tmp = std::string(kGoldenFile) + ".tmp";
    write_file_synced(tmp, out.dump(1) + "\n");
    std::filesystem::rename(tmp, kGoldenFile);
    std::cout << "[golden] wrote the entry for '" << numerics << "' to " << kGoldenFile << "\n";
    return;
  }
  for (const auto& e : golden) {
    if (e.at("numerics") != numerics) continue;
    Trace want{e.at("loss").get<std::vector<double>>(), e.at("grad_norm").get<std::vector<double>>()};
    EXPECT_TRUE(want == machine) << "the CPU arithmetic of this build (" << numerics
                                 << ") changed: golden" << show(want) << "\nnow" << show(machine)
                                 << "\n(if the change is deliberate, rerun with NATSL_UPDATE_GOLDEN=1)";
    return;
  }
  std::cout << "[golden] no golden trace for this build's numerics ('" << numerics
            << "'); the CPU/thread invariance above was checked. To record one: NATSL_UPDATE_GOLDEN=1 "
            << "build/tests/test_trainers --gtest_filter=GoldenTrace.*\n";
}

}  // namespace
}  // namespace natsl
