#include "core/cuda_graph.h"

#include <string>

#include "core/allocator.h"
#include "core/cuda_check.h"
#include "core/error.h"
#include "core/stream.h"

namespace natsl {

CudaGraph::CudaGraph(Device device) : device_(device) {
  NATSL_CHECK(device.is_cuda(), "CudaGraph: needs a CUDA device, got ", device.str());
}

#ifdef NATSL_WITH_CUDA
CudaGraph::~CudaGraph() {
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
  if (pool_) capture_pool_release(pool_);
}

void CudaGraph::capture(const std::function<void()>& fn) {
  NATSL_CHECK(pool_ == nullptr, "CudaGraph::capture: a graph is captured once");
  cudaStream_t s = activate(device_.index);
  pool_ = capture_pool_begin(device_.index);
  // Thread-local mode: another thread's unsafe CUDA calls do not break this capture. (Another thread must not
  // allocate on this device or queue work on its compute stream meanwhile: that would join the graph. natsl's
  // data loaders work on the CPU.)
  NATSL_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  std::string failure;
  try {
    fn();
  } catch (const std::exception& e) {
    failure = e.what();
  }
  capture_pool_end(pool_);
  cudaGraph_t g = nullptr;
  const cudaError_t end = cudaStreamEndCapture(s, &g);
  cudaGetLastError();  // a failed capture leaves its error here; it does not poison the context
  if (failure.empty() && end != cudaSuccess)
    failure = std::string("stream capture failed: ") + cudaGetErrorString(end);
  if (failure.empty()) {
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiate(&exec, g, 0);
    if (inst == cudaSuccess) {
      graph_ = g;
      exec_ = exec;
      size_t n = 0;
      cudaGraphGetNodes(g, nullptr, &n);
      nodes_ = int64_t(n);
      return;
    }
    cudaGetLastError();
    failure = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(inst);
  }
  if (g) cudaGraphDestroy(g);
  capture_pool_release(pool_);
  pool_ = nullptr;
  throw Error(ErrorKind::Internal, "CUDA graph capture on " + device_.str() + " failed: " + failure);
}

void CudaGraph::replay() const {
  NATSL_CHECK(exec_ != nullptr, "CudaGraph::replay: nothing captured");
  NATSL_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), activate(device_.index)));
}

int64_t CudaGraph::pool_bytes() const { return pool_ ? capture_pool_bytes(pool_) : 0; }
#else
CudaGraph::~CudaGraph() = default;
void CudaGraph::capture(const std::function<void()>&) {
  NATSL_FAIL("natsl was built without CUDA; CUDA graphs need a CUDA build");
}
void CudaGraph::replay() const { NATSL_FAIL("natsl was built without CUDA; CUDA graphs need a CUDA build"); }
int64_t CudaGraph::pool_bytes() const { return 0; }
#endif

}  // namespace natsl
