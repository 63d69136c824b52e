// Sequential forward state pass of the CUDA GDN kernels: the kernel around state_fwd_body
// (gdn_state_fwd.cuh), its launch configurations and the choice among them.
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/gdn_state_fwd.cuh"

namespace natsl::kernels::cuda::gdn {
namespace {

template <class D, int KT, int STAGES, bool OUT, int VW>
__global__ void __launch_bounds__(4 * VW, 1) state_fwd_kernel(StateFwdParams<D> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  state_fwd_body<D, KT, STAGES, OUT, VW>(p, blockIdx.x, blockIdx.y, blockIdx.z, smem_raw);
}

template <class D, int KT, int STAGES, bool OUT, int VW>
void launch(const Plan& pl, const StateFwdParams<D>& p) {
  constexpr int smem = state_fwd_smem<D, KT, STAGES, OUT>();
  auto kern = state_fwd_kernel<D, KT, STAGES, OUT, VW>;
  NATSL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kern<<<dim3(unsigned(pl.s.N), unsigned(pl.s.HV), unsigned(pl.s.V / VW)), 4 * VW, smem, pl.stream>>>(p);
  NATSL_CUDA_CHECK_LAUNCH();
}

template <class D, int KT, bool OUT, int VW>
void launch_stages(const Plan& pl, const StateFwdParams<D>& p, int stages) {
  const int avail = max_smem_per_block(pl.dev.index);
  if (stages == 2 && state_fwd_smem<D, KT, 2, OUT>() <= avail) return launch<D, KT, 2, OUT, VW>(pl, p);
  NATSL_CHECK((state_fwd_smem<D, KT, 1, OUT>() <= avail), "gdn state pass: K = ", pl.s.K,
              " needs more shared memory than this GPU has");
  launch<D, KT, 1, OUT, VW>(pl, p);
}

template <class D, int KT, bool OUT>
void launch_vw(const Plan& pl, const StateFwdParams<D>& p, StateLayout lay) {
  if (lay.vw == 32) return launch_stages<D, KT, OUT, 32>(pl, p, lay.stages);
  launch_stages<D, KT, OUT, 64>(pl, p, lay.stages);
}

template <class D, bool OUT>
void launch_kt(const Plan& pl, const StateFwdParams<D>& p, StateLayout lay) {
  switch (pl.s.K) {
    case 64: return launch_vw<D, 1, OUT>(pl, p, lay);
    case 128: return launch_vw<D, 2, OUT>(pl, p, lay);
    case 256:
      if constexpr (std::is_same_v<D, bf16>) return launch_vw<D, 4, OUT>(pl, p, lay);
      [[fallthrough]];
    default: NATSL_FAIL("gdn state pass: unsupported K = ", pl.s.K, " for ", dtype_name(dtype_v<D>));
  }
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return (v && *v) ? std::atoi(v) : fallback;
}

}  // namespace

StateLayout state_layout(const Plan& pl, int ctas_per_vtile64) {
  StateLayout lay;
  int sms = 0;
  NATSL_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, pl.dev.index));
  // Each step of the pass is latency bound (about the same time for 64 or 32 columns, one CTA per SM at two
  // stages), so narrower tiles pay when the 32-column CTAs still fit in one wave.
  if (2 * ctas_per_vtile64 <= sms) lay.vw = 32;
  const int vw = env_int("NATSL_GDN_VTILE", 0), st = env_int("NATSL_GDN_STAGES", 0);
  if (vw == 32 || vw == 64) lay.vw = vw;
  if (st == 1 || st == 2) lay.stages = st;
  if (pl.s.V % lay.vw != 0) lay.vw = 64;
  return lay;
}

bool state_joint_enabled() { return env_int("NATSL_GDN_JOINT", 1) != 0; }

void run_state_fwd(const Plan& pl, const GdnArgs& args, const GdnInputs& in, const PrepOut& pr,
                   const StateFwdOut& out) {
  const GdnShape& s = pl.s;
  if (s.N == 0) return;
  const StateLayout lay = state_layout(pl, int(s.N * s.HV * (s.V / kC)));
  NATSL_CUDA_DISPATCH_FLOAT(in.q.dtype(), "gdn state pass", T, [&] {
    const StateFwdParams<T> p = state_fwd_params<T>(pl, args, in, pr, out);
    if (p.o) launch_kt<T, true>(pl, p, lay);
    else launch_kt<T, false>(pl, p, lay);
  });
}

}  // namespace natsl::kernels::cuda::gdn
