// Kernel lab (issue 18): NAtS-L's output-mixing backward (kernels/cuda/mix_norm_gate.cu). History: the production
// kernel read og, oa, z and dy twice per row (once for the row sums <du, g_hat>, <du, a_hat>, once for the
// outputs) and added each row's dgamma terms into its slot's f32 partial row in global memory. Two ideas were
// measured here: one pass (the first pass's loads kept in registers for the second, for rows of at most one
// 16-byte vector per thread in blocks of at most 256 threads) and the dgamma sums in registers (written once at
// the end). Both won (BENCHMARKS.md, 2026-12-06, H100): the row kernels' backward is now the one-pass kernel with
// the sums in registers (mix::bwd_onepass_kernel<T, VEC, true>, kernels/cuda/mix_norm_gate.cuh). Since then rows of
// at most 32 vectors (natsl-340m's 128 channels among them) take the short-row kernels by default (their lab,
// short_rows.cu, is gone: production holds it, NatslCuda.MixNormGateShortRowsGiveTheRowKernelsBits checks it against
// the row kernels and natsl_bench_ops times both), so the reference here is the row kernels by name
// (MixNormGatePlan{false}). The variant left here is the one-pass kernel with the sums in memory (REG = false),
// which checks that the two give the same bits and shows what the registers buy:
//   build-gpu/experiments/kernel_lab/natsl_lab_mix_norm_gate [--reps N]   (exit 1 when any output differs)
// B8 T4096, 12 heads of 128 channels, bf16.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/philox.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "experiments/bench/bench_timing.h"
#include "kernels/cuda/mix_norm_gate.cuh"
#include "kernels/cuda/mix_norm_gate_plan.h"
#include "kernels/mix_norm_gate.h"

using namespace natsl;
using namespace natsl::kernels::cuda;

namespace {

constexpr int kMaxThreads = mix::kOnePassThreads;


enum class Variant { kOnePassSumsInMemory };

// The variants' launcher: bf16, 16-byte aligned, D <= 256 vectors (else it refuses). The grid is production's
// (launch_rows with one vector per thread per row), the block capped at 256 threads.
void lab_bwd(Variant var, const Tensor& og, const Tensor& oa, const Tensor& wl, const Tensor& z, const Tensor& gg,
             const Tensor& ga, const Tensor& rg, const Tensor& ra, const Tensor& dy, const Tensor& dog,
             const Tensor& doa, const Tensor& dwl, const Tensor& dz, const Tensor& dgg, const Tensor& dga) {
  using T = bf16;
  constexpr int V = kVec<T>;
  const int64_t D = og.size(-1), rows = og.numel() / D;
  NATSL_CHECK(D % V == 0 && D / V <= kMaxThreads, "lab: D must be a multiple of ", V, " and at most ", kMaxThreads * V);
  const int dev = og.device().index;
  cudaStream_t s = activate(dev);
  const RowLaunch l = row_launch(D, V, 1, kMaxThreads);
  RowGrid g;
  g.block = dim3(unsigned(l.threads_x), unsigned(l.rows_per_block));
  g.grid = dim3(unsigned(grid_for(dev, rows, l.rows_per_block, 2048 / (l.threads_x * l.rows_per_block))));
  g.smem = size_t(32) * l.rows_per_block * sizeof(float);
  const int64_t groups = int64_t(g.grid.x) * g.block.y;
  const bool reg = false;  // Variant::kOnePassSumsInMemory
  Tensor partial = partial_rows(2, g, D, reg, og.device(), s);
  float* pg = partial.data<float>();
  float* pa = pg + groups * D;
  auto launch = [&](auto kernel) {
    kernel<<<g.grid, g.block, g.smem, s>>>(cptr<T>(og), cptr<T>(oa), cptr<T>(wl), cptr<T>(z), cptr<T>(gg), cptr<T>(ga),
                                           rg.data<float>(), ra.data<float>(), cptr<T>(dy), mptr<T>(dog), mptr<T>(doa),
                                           mptr<T>(dwl), mptr<T>(dz), pg, pa, rows, D);
  };
  switch (var) {
    case Variant::kOnePassSumsInMemory: launch(mix::bwd_onepass_kernel<T, V, false>); break;
  }
  NATSL_CUDA_CHECK_LAUNCH();
  column_sum<T>(pg, groups, D, mptr<T>(dgg), dev, s);
  column_sum<T>(pa, groups, D, mptr<T>(dga), dev, s);
}

Tensor rnd(const Shape& sh, DType dt, uint64_t seed) {
  Tensor t = Tensor::empty(sh, dt, Device::cuda(0));
  Generator g(seed);
  normal_(t, g, 0.0, 1.0);
  return t;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.to(Device::cpu()), hb = b.to(Device::cpu());
  return ha.numel() == hb.numel() && std::memcmp(ha.data_ptr(), hb.data_ptr(), size_t(ha.numel()) * dtype_size(ha.dtype())) == 0;
}

// max |a - b| / max |a| over the elements (as f32).
double rel_diff(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.to(Device::cpu()).to(DType::f32), hb = b.to(Device::cpu()).to(DType::f32);
  const float *pa = ha.data<float>(), *pb = hb.data<float>();
  double md = 0, ma = 0;
  for (int64_t i = 0; i < ha.numel(); ++i) {
    md = std::max(md, double(std::fabs(pa[i] - pb[i])));
    ma = std::max(ma, double(std::fabs(pa[i])));
  }
  return ma > 0 ? md / ma : md;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 50;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--reps") reps = std::atoi(argv[i + 1]);
  const int64_t B = 8, T = 4096, Ha = 12, Dv = 128;
  const Device g = Device::cuda(0);
  Tensor og = rnd({B, T, Ha, Dv}, DType::bf16, 1), oa = rnd({B, T, Ha, Dv}, DType::bf16, 2);
  Tensor z = rnd({B, T, Ha, Dv}, DType::bf16, 3), dy = rnd({B, T, Ha, Dv}, DType::bf16, 4);
  Tensor wl = rnd({B, T, Ha, 2}, DType::bf16, 5), gg = rnd({Dv}, DType::bf16, 6), ga = rnd({Dv}, DType::bf16, 7);
  Tensor y = Tensor::empty({B, T, Ha, Dv}, DType::bf16, g);
  Tensor rg = Tensor::empty({B, T, Ha}, DType::f32, g), ra = Tensor::empty({B, T, Ha}, DType::f32, g);
  const natsl::kernels::cuda::MixNormGatePlan row_kernels{false};
  natsl::kernels::cuda::mix_norm_gate_fwd(og, oa, wl, z, gg, ga, 1e-6, y, rg, ra, row_kernels);
  auto outs = [&] {
    return std::vector<Tensor>{Tensor::empty({B, T, Ha, Dv}, DType::bf16, g), Tensor::empty({B, T, Ha, Dv}, DType::bf16, g),
                               Tensor::empty({B, T, Ha, 2}, DType::bf16, g), Tensor::empty({B, T, Ha, Dv}, DType::bf16, g),
                               Tensor::empty({Dv}, DType::bf16, g), Tensor::empty({Dv}, DType::bf16, g)};
  };
  std::vector<Tensor> p = outs();
  auto prod = [&] {
    natsl::kernels::cuda::mix_norm_gate_bwd(og, oa, wl, z, gg, ga, rg, ra, dy, p[0], p[1], p[2], p[3], p[4], p[5],
                                            row_kernels);
  };
  prod();
  NATSL_CUDA_CHECK(cudaDeviceSynchronize());
  cudaStream_t s = activate(0);
  const double t_prod = bench::median_ms(prod, reps, s);
  const double bytes = 7.0 * double(B * T * Ha * Dv) * 2;  // og, oa, z, dy read; dog, doa, dz written
  std::printf("mix_norm_gate bwd B8 T4096 Ha12 Dv128 bf16 (%s timing, %d reps)\n", bench::timing_method(), reps);
  std::printf("  %-28s %.4f ms  (%.0f GB/s of the 7 tensors)\n", "row kernels (one pass)", t_prod,
              bytes / (t_prod * 1e6));
  const char* names[] = {"dog", "doa", "dwlogits", "dz", "dgamma_g", "dgamma_a"};
  const struct {
    Variant var;
    const char* name;
  } variants[] = {{Variant::kOnePassSumsInMemory, "one pass, dgamma in memory"}};
  bool all = true;
  for (const auto& vv : variants) {
    std::vector<Tensor> v = outs();
    auto lab = [&] { lab_bwd(vv.var, og, oa, wl, z, gg, ga, rg, ra, dy, v[0], v[1], v[2], v[3], v[4], v[5]); };
    lab();
    NATSL_CUDA_CHECK(cudaDeviceSynchronize());
    std::string bits;
    for (int i = 0; i < 6; ++i) {
      const bool ok = same_bits(p[size_t(i)], v[size_t(i)]);
      all = all && ok;
      char buf[96];
      if (ok) std::snprintf(buf, sizeof buf, " %s same", names[i]);
      else std::snprintf(buf, sizeof buf, " %s DIFFERS (rel %.2e)", names[i], rel_diff(p[size_t(i)], v[size_t(i)]));
      bits += buf;
    }
    const double t = bench::median_ms(lab, reps, s);
    std::printf("  %-28s %.4f ms  (%.0f GB/s)  lab/row kernels %.3f |%s\n", vv.name, t, bytes / (t * 1e6), t / t_prod,
                bits.c_str());
  }
  return all ? 0 : 1;
}
