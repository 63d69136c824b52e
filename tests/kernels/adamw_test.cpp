// The AdamW kernel (kernels/adamw.h; the optimizer over it is tested in tests/trainers/optim/adamw_test.cpp):
// argument checks of the CPU update, then the CUDA multi-tensor kernel against the CPU reference (CudaAdamW,
// skipped without a GPU).
#include <cstring>

#include "kernels/adamw.h"
#include "tests/cuda_test_util.h"
#include "tests/ops_test_util.h"

using namespace natsl;
using namespace natsl::testing;

TEST(AdamW, KernelRejectsBf16MasterWeights) {
  Tensor p = Tensor::zeros({4}, DType::bf16), g = Tensor::zeros({4}, DType::bf16);
  EXPECT_THROW(kernels::adamw_step(p, g, Tensor::zeros({4}), Tensor::zeros({4}), {{0, 4, true}}, {}, Tensor()),
               Error);
  Tensor p32 = Tensor::zeros({4});
  EXPECT_THROW(kernels::adamw_step(p32, Tensor::zeros({4}), Tensor::zeros({4}), Tensor::zeros({4}), {{2, 4, true}},
                                   {}, Tensor()),
               Error);  // segment past the end
}

// The compute copy written in the same pass (kernels/adamw.h): on the CPU, and on the GPU below.
namespace {

// Two steps on `dev` with and without a compute copy of dtype `cdt` (a view at element `shift` of a larger
// buffer filled with a sentinel): the master weights and moments are the same bits either way, the copy holds
// the cast of the updated weights inside the segments (cast on the same device) and the sentinel elsewhere.
void check_compute_copy(Device dev, DType grad_dt, DType cdt, int64_t shift) {
  const std::string what = "adamw compute copy " + dtype_str(cdt) + " grads " + dtype_str(grad_dt) + " shift " +
                           std::to_string(shift) + (dev.is_cuda() ? " (GPU)" : " (CPU)");
  const std::vector<kernels::AdamWSegment> segs = {{0, 100, true}, {128, 1, false}, {192, 4099, true}};
  const int64_t total = 4400;
  Tensor p0 = q(randn({total}, 11), DType::f32).to(dev);
  Tensor pa = p0.clone(), pb = p0.clone();
  Tensor ma = Tensor::zeros({total}, DType::f32, dev), va = ma.clone(), mb = ma.clone(), vb = ma.clone();
  Tensor backing = Tensor::full({total + shift}, 7.0, cdt, dev);
  Tensor copy = backing.slice(0, shift, shift + total);
  kernels::AdamWHyper h;
  h.lr = 1e-2;
  h.weight_decay = 0.1;
  for (int64_t step = 1; step <= 2; ++step) {
    h.step = step;
    Tensor g = q(randn({total}, 20 + uint64_t(step), DType::f64, 0.1), grad_dt).to(dev);
    kernels::adamw_step(pa, g, ma, va, segs, h, Tensor(), copy);
    kernels::adamw_step(pb, g, mb, vb, segs, h, Tensor());
  }
  expect_same_bits(pa, pb, what + ": master weights");
  expect_same_bits(ma, mb, what + ": m");
  expect_same_bits(va, vb, what + ": v");
  const std::vector<float> got = copy.to(kCPU).to(DType::f32).to_vector<float>();
  const std::vector<float> cast = pa.to(cdt).to(kCPU).to(DType::f32).to_vector<float>();
  std::vector<bool> covered(size_t(total), false);
  for (const auto& s : segs)
    for (int64_t i = s.offset; i < s.offset + s.numel; ++i) covered[size_t(i)] = true;
  int wrong = 0, touched = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (covered[i] && std::memcmp(&got[i], &cast[i], sizeof(float)) != 0) ++wrong;
    if (!covered[i] && got[i] != 7.0f) ++touched;
  }
  EXPECT_EQ(wrong, 0) << what << ": copy elements that are not the cast of the updated weight";
  EXPECT_EQ(touched, 0) << what << ": copy elements outside the segments changed";
  if (shift > 0) {
    EXPECT_EQ(backing.to(kCPU).to(DType::f32).to_vector<float>()[0], 7.0f) << what;
  }
}

}  // namespace

TEST(AdamW, ComputeCopyIsTheCastOfTheUpdatedWeights) {
  for (DType gd : {DType::f32, DType::bf16})
    for (DType cd : {DType::bf16, DType::f32})
      for (int64_t shift : {0, 1}) check_compute_copy(kCPU, gd, cd, shift);
}

TEST(AdamW, KernelRejectsABadComputeCopy) {
  Tensor p = Tensor::zeros({8}), g = Tensor::zeros({8}), m = Tensor::zeros({8}), v = Tensor::zeros({8});
  const std::vector<kernels::AdamWSegment> segs = {{0, 8, true}};
  EXPECT_THROW(kernels::adamw_step(p, g, m, v, segs, {}, Tensor(), Tensor::zeros({7}, DType::bf16)), Error);
  EXPECT_THROW(kernels::adamw_step(p, g, m, v, segs, {}, Tensor(), Tensor::zeros({8}, DType::i32)), Error);
  EXPECT_THROW(kernels::adamw_step(p, g, m, v, segs, {}, Tensor(), p), Error);  // the master weights themselves
  kernels::adamw_step(p, g, m, v, segs, {}, Tensor(), Tensor::zeros({8}, DType::bf16));
}

TEST(CudaAdamW, ComputeCopyIsTheCastOfTheUpdatedWeights) {
  NATSL_REQUIRE_GPU();
  // shift 0: the vector path (16-byte f32 / 8-byte bf16 stores); shift 1: the copy is misaligned, scalar path.
  for (DType gd : {DType::f32, DType::bf16})
    for (DType cd : {DType::bf16, DType::f32})
      for (int64_t shift : {0, 1}) check_compute_copy(gpu(), gd, cd, shift);
}

// CUDA multi-tensor AdamW against the CPU reference (which evaluates the update in double) over several
// steps on flat buffers with segments, gaps between segments (left untouched), decay on/off, f32 and bf16
// gradients, with and without a device grad_scale.
// Tolerances: params, m, v are f32 on both sides; the GPU evaluates in f32: kF32 (rel RMS 1e-5, max 1e-4).
using kernels::AdamWHyper;
using kernels::AdamWSegment;

namespace {

void run_adamw(const std::vector<AdamWSegment>& segs, int64_t total, DType grad_dt, bool with_scale, uint64_t seed) {
  const std::string what = "adamw grads " + dtype_str(grad_dt) + (with_scale ? " scaled" : "") + " segments " +
                           std::to_string(segs.size()) + " (first offset " + std::to_string(segs[0].offset) + ")";
  Tensor p_cpu = q(randn({total}, seed), DType::f32);
  Tensor m_cpu = Tensor::zeros({total}), v_cpu = Tensor::zeros({total});
  Tensor p_gpu = to_gpu(p_cpu), m_gpu = to_gpu(m_cpu), v_gpu = to_gpu(v_cpu);
  const std::vector<float> p0 = p_cpu.to_vector<float>();
  Tensor scale_cpu = with_scale ? Tensor::full({1}, 0.5, DType::f32) : Tensor();
  Tensor scale_gpu = with_scale ? to_gpu(scale_cpu) : Tensor();
  AdamWHyper h;
  h.lr = 1e-2;
  h.weight_decay = 0.1;
  for (int64_t step = 1; step <= 3; ++step) {
    h.step = step;
    Tensor g = q(randn({total}, seed + 10 * uint64_t(step), DType::f64, 0.1), grad_dt);
    kernels::adamw_step(p_cpu, g, m_cpu, v_cpu, segs, h, scale_cpu);
    kernels::adamw_step(p_gpu, to_gpu(g), m_gpu, v_gpu, segs, h, scale_gpu);
  }
  expect_match(p_gpu, p_cpu, kF32, what + " param");
  expect_match(m_gpu, m_cpu, kF32, what + " m");
  expect_match(v_gpu, v_cpu, kF32, what + " v");
  // Elements outside every segment are not touched.
  std::vector<bool> covered(size_t(total), false);
  for (const auto& s : segs)
    for (int64_t i = s.offset; i < s.offset + s.numel; ++i) covered[size_t(i)] = true;
  const std::vector<float> p1 = p_gpu.to_vector<float>();
  int changed = 0;
  for (size_t i = 0; i < p1.size(); ++i)
    if (!covered[i] && p1[i] != p0[i]) ++changed;
  EXPECT_EQ(changed, 0) << what << ": elements outside the segments changed";
}

}  // namespace

TEST(CudaAdamW, MatchesCpuOverSegmentsWithGaps) {
  NATSL_REQUIRE_GPU();
  // FlatLayout-style offsets (multiples of 64) with gaps, a one-element segment, a segment spanning
  // several chunks, decay on and off.
  const std::vector<AdamWSegment> aligned = {
      {0, 1000, true}, {1024, 1, false}, {1088, 77777, true}, {78912, 5, false}, {78976, 40000, false}};
  // Odd offsets: the scalar path.
  const std::vector<AdamWSegment> odd = {{3, 1001, true}, {1007, 13, false}, {1021, 50000, true}};
  uint64_t seed = 1;
  for (DType gd : {DType::f32, DType::bf16})
    for (bool scaled : {false, true}) {
      run_adamw(aligned, 119000, gd, scaled, seed += 100);
      run_adamw(odd, 51100, gd, scaled, seed += 100);
    }
}

TEST(CudaAdamW, EmptySegmentListIsANoOp) {
  NATSL_REQUIRE_GPU();
  Tensor p = to_gpu(q(randn({100}, 3), DType::f32));
  Tensor before = p.to(kCPU);
  Tensor g = Tensor::zeros({100}, DType::f32, gpu()), m = Tensor::zeros({100}, DType::f32, gpu()),
         v = Tensor::zeros({100}, DType::f32, gpu());
  kernels::adamw_step(p, g, m, v, {}, AdamWHyper{}, Tensor());
  expect_same_bits(p, before, "adamw with no segments");
}
