#include "core/device.h"

#include <mutex>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"
#include "core/stream.h"

namespace natsl {

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "cuda") return cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    try {
      size_t used = 0;
      int i = std::stoi(s.substr(5), &used);
      if (used == s.size() - 5 && i >= 0) return cuda(i);
    } catch (const std::exception&) {
    }
  }
  throw InputError("bad device '" + s + "': expected cpu, cuda or cuda:N");
}

int cuda_device_count() {
#ifdef NATSL_WITH_CUDA
  static int n = [] {
    int c = 0;
    if (cudaGetDeviceCount(&c) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return c;
  }();
  return n;
#else
  return 0;
#endif
}

bool cuda_available() { return cuda_device_count() > 0; }

#ifdef NATSL_WITH_CUDA
namespace {
std::mutex g_stream_mu;
std::vector<cudaStream_t> g_streams;
}  // namespace

cudaStream_t compute_stream(int device) {
  std::lock_guard<std::mutex> lk(g_stream_mu);
  if (int(g_streams.size()) <= device) g_streams.resize(device + 1, nullptr);
  if (!g_streams[device]) {
    int prev = 0;
    NATSL_CUDA_CHECK(cudaGetDevice(&prev));
    NATSL_CUDA_CHECK(cudaSetDevice(device));
    NATSL_CUDA_CHECK(cudaStreamCreateWithFlags(&g_streams[device], cudaStreamNonBlocking));
    // Keep freed blocks in the stream-ordered pool instead of returning them to the driver at every
    // synchronisation (the default threshold 0 would re-map a step's activations each step).
    cudaMemPool_t pool;
    NATSL_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t keep = UINT64_MAX;
    NATSL_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    NATSL_CUDA_CHECK(cudaSetDevice(prev));
  }
  return g_streams[device];
}

cudaStream_t activate(int device) {
  int cur = -1;
  NATSL_CUDA_CHECK(cudaGetDevice(&cur));
  if (cur != device) NATSL_CUDA_CHECK(cudaSetDevice(device));
  return compute_stream(device);
}

void synchronize(int device) { NATSL_CUDA_CHECK(cudaStreamSynchronize(activate(device))); }
#endif

void synchronize(Device d) {
#ifdef NATSL_WITH_CUDA
  if (d.is_cuda()) synchronize(d.index);
#else
  (void)d;
#endif
}

}  // namespace natsl
