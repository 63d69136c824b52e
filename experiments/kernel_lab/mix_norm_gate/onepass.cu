// Kernel lab (issue 18): NAtS-L's output-mixing backward in one pass over its inputs, against the production
// kernel (kernels/cuda/mix_norm_gate.cu), which reads og, oa, z and dy twice per row: once for the row sums
// <du, g_hat>, <du, a_hat>, once for the outputs. When a row is at most one 16-byte vector per thread (natsl-340m:
// 128 value channels = 16 vectors of bf16), the variant keeps the first pass's loads in registers for the second
// (the block capped at 256 threads, so the kernel may take more than 64 registers), so the inputs cross memory once.
// Second idea (REGACC, 2026-12-06): the production kernel adds each row's dgamma terms into its slot's f32
// partial row in global memory (a scalar read-modify-write of 2 x D floats per row, through L2); with one vector
// per thread per row a thread owns the same D/VEC columns of every row it visits, so the sums can stay in
// registers and be written once at the end (no memset either: every slot writes its whole partial row).
// Variants: one pass, one pass + REGACC. (Two passes + REGACC was promoted into production the same day, unmeasured:
// production is now that variant; the 2026-12-06 production time below is the read-modify-write one.)
// Every operation is the production kernel's, in its order, so the outputs should be bit-identical (the H100 run
// of 2026-12-06 found the one-pass dwlogits differing, the other five outputs equal: a different contraction of
// the row dot products; outputs that differ are reported with their largest difference relative to the largest
// magnitude); this program checks that and times them all, B8 T4096, 12 heads of 128 channels, bf16:
//   build-gpu/experiments/kernel_lab/natsl_lab_mix_norm_gate [--reps N]   (exit 1 when any output differs)
// The production profile (natsl-340m, H100, 99283bf) has the backward at 1.53 ms a call against ~0.33 ms of
// memory traffic. Promote the variant (into kernels/cuda/mix_norm_gate.cu, with the CUDA tests) only if it wins.
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
#include "kernels/mix_norm_gate.h"

using namespace natsl;
using namespace natsl::kernels::cuda;

namespace {

constexpr int kMaxThreads = 256;


// pg, pa: [gridDim.x * blockDim.y, D] f32 partial rows, zeroed before (as the production kernel).
// REGACC: the dgamma sums in registers, written once at the end (PartialRow; pg, pa need not be zeroed).
template <class T, int VEC, bool REGACC>
__global__ void __launch_bounds__(kMaxThreads)
    onepass_bwd_kernel(const T* __restrict__ og, const T* __restrict__ oa, const T* __restrict__ wl,
                       const T* __restrict__ z, const T* __restrict__ gg, const T* __restrict__ ga,
                       const float* __restrict__ rstd_g, const float* __restrict__ rstd_a, const T* __restrict__ dy,
                       T* __restrict__ dog, T* __restrict__ doa, T* __restrict__ dwl, T* __restrict__ dz,
                       float* __restrict__ pg, float* __restrict__ pa, int64_t rows, int64_t D) {
  extern __shared__ float scratch[];
  const int64_t slot = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  PartialRow<VEC, REGACC> part_g(pg + slot * D), part_a(pa + slot * D);
  const int64_t j = int64_t(threadIdx.x) * VEC;  // this thread's one vector of every row
  const bool mine = j < D;
  float wg[VEC], wa[VEC];
  if (mine) {
    load_vec<T, VEC>(gg + j, wg);
    load_vec<T, VEC>(ga + j, wa);
  }
  NATSL_FOR_EACH_ROW(r, rows) {
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * D;
    const float rg = active ? rstd_g[r] : 0.f, ra = active ? rstd_a[r] : 0.f;
    float a[VEC], b[VEC], zz[VEC], g[VEC];
    float dw0 = 0.f, dw1 = 0.f;
    if (active && mine) {
      load_vec<T, VEC>(og + off + j, a);
      load_vec<T, VEC>(oa + off + j, b);
      load_vec<T, VEC>(z + off + j, zz);
      load_vec<T, VEC>(dy + off + j, g);
      mix::add_row_dots(a, b, zz, g, wg, wa, rg, ra, dw0, dw1);
    }
    dw0 = row_sum(dw0, scratch);
    dw1 = row_sum(dw1, scratch);
    if (!active) continue;
    float w0, w1;
    mix::softmax2(to_f32(wl[2 * r]), to_f32(wl[2 * r + 1]), w0, w1);
    if (threadIdx.x == 0) {
      const float mean = w0 * dw0 + w1 * dw1;
      dwl[2 * r] = from_f32<T>(w0 * (dw0 - mean));
      dwl[2 * r + 1] = from_f32<T>(w1 * (dw1 - mean));
    }
    if (!mine) continue;
    const float cg = w0 * dw0 / float(D), ca = w1 * dw1 / float(D);
    float o_g[VEC], o_a[VEC], o_z[VEC];
    mix::outputs(a, b, zz, g, wg, wa, rg, ra, w0, w1, cg, ca, o_g, o_a, o_z, j, part_g, part_a);
    store_vec<T, VEC>(dog + off + j, o_g);
    store_vec<T, VEC>(doa + off + j, o_a);
    store_vec<T, VEC>(dz + off + j, o_z);
  }
  part_g.finish(D);
  part_a.finish(D);
}

enum class Variant { kOnePass, kOnePassRegAcc };

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
  const bool reg = var == Variant::kOnePassRegAcc;
  Tensor partial = partial_rows(2, g, D, reg, og.device(), s);
  float* pg = partial.data<float>();
  float* pa = pg + groups * D;
  auto launch = [&](auto kernel) {
    kernel<<<g.grid, g.block, g.smem, s>>>(cptr<T>(og), cptr<T>(oa), cptr<T>(wl), cptr<T>(z), cptr<T>(gg), cptr<T>(ga),
                                           rg.data<float>(), ra.data<float>(), cptr<T>(dy), mptr<T>(dog), mptr<T>(doa),
                                           mptr<T>(dwl), mptr<T>(dz), pg, pa, rows, D);
  };
  if (reg) launch(onepass_bwd_kernel<T, V, true>);
  else launch(onepass_bwd_kernel<T, V, false>);
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
  natsl::kernels::cuda::mix_norm_gate_fwd(og, oa, wl, z, gg, ga, 1e-6, y, rg, ra);
  auto outs = [&] {
    return std::vector<Tensor>{Tensor::empty({B, T, Ha, Dv}, DType::bf16, g), Tensor::empty({B, T, Ha, Dv}, DType::bf16, g),
                               Tensor::empty({B, T, Ha, 2}, DType::bf16, g), Tensor::empty({B, T, Ha, Dv}, DType::bf16, g),
                               Tensor::empty({Dv}, DType::bf16, g), Tensor::empty({Dv}, DType::bf16, g)};
  };
  std::vector<Tensor> p = outs();
  auto prod = [&] {
    natsl::kernels::cuda::mix_norm_gate_bwd(og, oa, wl, z, gg, ga, rg, ra, dy, p[0], p[1], p[2], p[3], p[4], p[5]);
  };
  prod();
  NATSL_CUDA_CHECK(cudaDeviceSynchronize());
  cudaStream_t s = activate(0);
  const double t_prod = bench::median_ms(prod, reps, s);
  const double bytes = 7.0 * double(B * T * Ha * Dv) * 2;  // og, oa, z, dy read; dog, doa, dz written
  std::printf("mix_norm_gate bwd B8 T4096 Ha12 Dv128 bf16 (%s timing, %d reps)\n", bench::timing_method(), reps);
  std::printf("  %-28s %.4f ms  (%.0f GB/s of the 7 tensors)\n", "production (two passes)", t_prod,
              bytes / (t_prod * 1e6));
  const char* names[] = {"dog", "doa", "dwlogits", "dz", "dgamma_g", "dgamma_a"};
  const struct {
    Variant var;
    const char* name;
  } variants[] = {{Variant::kOnePass, "one pass"},
                  {Variant::kOnePassRegAcc, "one pass, dgamma in regs"}};
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
    std::printf("  %-28s %.4f ms  (%.0f GB/s)  lab/production %.3f |%s\n", vv.name, t, bytes / (t * 1e6), t / t_prod,
                bits.c_str());
  }
  return all ? 0 : 1;
}
