#pragma once
// The per-device compute stream. natsl runs every op of a device on one stream, so ops are ordered without
// host synchronisation; only explicit reads back to the host (Tensor::to(cpu), item) synchronise.
#include "core/device.h"

#ifdef NATSL_WITH_CUDA
#include <cuda_runtime.h>
namespace natsl {
cudaStream_t compute_stream(int device);
// Makes `device` current on this thread (cudaSetDevice) and returns its compute stream.
cudaStream_t activate(int device);
void synchronize(int device);
}  // namespace natsl
#endif

namespace natsl {
// Waits for all work queued on the device (no-op on the CPU).
void synchronize(Device d);
}  // namespace natsl
