#include "trainers/mfu.h"

#ifdef NATSL_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace natsl {

std::optional<double> dense_bf16_peak_flops(const std::string& name) {
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  // Vendor datasheets, dense bf16 with f32 accumulation (SXM boards unless named).
  if (has("H100") && (has("PCIe") || has("PCIE"))) return 756e12;
  if (has("H100") || has("H200") || has("GH200")) return 989e12;
  if (has("A100")) return 312e12;
  return std::nullopt;
}

std::string device_name(Device d) {
#ifdef NATSL_WITH_CUDA
  if (d.is_cuda()) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, d.index) == cudaSuccess) return prop.name;
    cudaGetLastError();
  }
#else
  (void)d;
#endif
  return "";
}

}  // namespace natsl
