// Does compute-sanitizer racecheck model the mbarrier protocol of natsl's bulk-copy pipelines?
//
// One block: 4 consumer warps and 1 producer warp stream NT tiles of global memory through S shared-memory
// stages with the full/empty mbarrier protocol of kernels/cuda/gdn (the same PTX helpers,
// kernels/cuda/ptx_sm90.cuh): the producer's lane 0 waits on the stage's `empty` barrier, arms `full` with
// the byte count and issues cp.async.bulk into the stage; the consumers wait on `full`, read the stage (and,
// with --write, write it too, then fence.proxy.async as natsl's passes do), and one lane per warp arrives on
// `empty`.
//   probe correct        the protocol as natsl uses it: no data race exists
//   probe correct --write
//   probe racy           the producer skips the `empty` wait: the copy engine overwrites a stage that the
//                        consumers may still read (a real race; results may come out wrong, and the run may
//                        deadlock when the producer re-arms a barrier whose phase the consumers have not
//                        completed: run.sh bounds every run)
//   probe correct --cpasync / probe racy --cpasync
//                        the same with the loads of gdn/state_fwd.cu's warp-specialised pass: every producer lane
//                        issues 16-byte cp.async copies and arrives on `full` with cp.async.mbarrier.arrive.noinc
//                        (full counts 32 arrivals), no byte count
// Each mode checks its result on the host and prints it. Run each under
//   compute-sanitizer --tool racecheck --racecheck-report hazard ./probe MODE
// If racecheck reports the same hazards for `correct` as for `racy`, it does not model the mbarrier
// completion of bulk copies, and its hazards on natsl's TMA kernels say nothing; if it reports none for
// `correct` and some for `racy`, hazards on natsl's kernels are real.
//
// Build (sm_90, from the repository root): nvcc -O2 -arch=sm_90 -I. -o probe experiments/kernel_lab/racecheck_tma/probe.cu
#include <cstdio>
#include <cstring>
#include <vector>

#include "kernels/cuda/ptx_sm90.cuh"

namespace ptx = natsl::kernels::cuda::ptx;

constexpr int kS = 2;             // stages
constexpr int kNT = 64;           // tiles streamed
constexpr int kTile = 2048;       // floats per tile (8 KiB)
constexpr int kConsumerWarps = 4;

__device__ __forceinline__ void cp_async_arrive_noinc(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(ptx::smem_addr(bar)) : "memory");
}

__global__ void probe(const float* src, float* out, bool racy, bool write, bool cpasync) {
  __shared__ alignas(128) float stage[kS][kTile];
  __shared__ alignas(8) uint64_t full[kS], empty[kS];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kS; ++s) {
      if (cpasync) ptx::mbar_init_count(&full[s], 32);
      else ptx::mbar_init1(&full[s]);
      ptx::mbar_init_count(&empty[s], kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  if (warp == kConsumerWarps && cpasync) {  // producer, cp.async: every lane copies and arrives
    for (int i = 0; i < kNT; ++i) {
      const int s = i % kS;
      if (i >= kS && !racy) ptx::mbar_wait_parity(&empty[s], uint32_t(i / kS - 1) & 1u);
      for (int k = 4 * lane; k < kTile; k += 4 * 32)
        ptx::cp_async16(ptx::smem_addr(&stage[s][k]), src + int64_t(i) * kTile + k, true);
      cp_async_arrive_noinc(&full[s]);
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    return;
  }
  if (warp == kConsumerWarps) {  // producer
    if (lane == 0) {
      for (int i = 0; i < kNT; ++i) {
        const int s = i % kS;
        if (i >= kS && !racy) ptx::mbar_wait_parity(&empty[s], uint32_t(i / kS - 1) & 1u);
        ptx::mbar_arrive_expect(&full[s], kTile * 4);
        ptx::bulk_g2s(stage[s], src + int64_t(i) * kTile, kTile * 4, &full[s]);
      }
    }
    return;
  }
  float acc = 0.f;
  for (int i = 0; i < kNT; ++i) {
    const int s = i % kS;
    ptx::mbar_wait_parity(&full[s], uint32_t(i / kS) & 1u);
    for (int k = threadIdx.x; k < kTile; k += 32 * kConsumerWarps) acc += stage[s][k];
    if (write) {
      // natsl's passes may write a stage they read (e.g. a transposed tile) before releasing it.
      for (int k = threadIdx.x; k < kTile; k += 32 * kConsumerWarps) stage[s][k] = 0.f;
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    }
    __syncwarp();
    if (lane == 0) ptx::mbar_arrive1(&empty[s]);
  }
  atomicAdd(out, acc);
}

int main(int argc, char** argv) {
  const bool racy = argc > 1 && !std::strcmp(argv[1], "racy");
  bool write = false, cpasync = false;
  for (int a = 2; a < argc; ++a) {
    write = write || !std::strcmp(argv[a], "--write");
    cpasync = cpasync || !std::strcmp(argv[a], "--cpasync");
  }
  std::vector<float> h(size_t(kNT) * kTile);
  double want = 0;
  for (size_t i = 0; i < h.size(); ++i) {
    h[i] = float(int(i % 7) - 3);  // small integers: the f32 sum is exact in any order
    want += h[i];
  }
  float *src = nullptr, *out = nullptr;
  cudaMalloc(&src, h.size() * 4);
  cudaMalloc(&out, 4);
  cudaMemcpy(src, h.data(), h.size() * 4, cudaMemcpyHostToDevice);
  cudaMemset(out, 0, 4);
  probe<<<1, 32 * (kConsumerWarps + 1)>>>(src, out, racy, write, cpasync);
  float got = 0;
  cudaError_t e = cudaMemcpy(&got, out, 4, cudaMemcpyDeviceToHost);
  std::printf("probe %s%s%s: %s, sum %.0f (want %.0f): %s\n", racy ? "racy" : "correct", write ? " --write" : "",
              cpasync ? " --cpasync" : "",
              cudaGetErrorString(e), got, want, got == want ? "right" : "WRONG");
  return e == cudaSuccess ? 0 : 1;
}
