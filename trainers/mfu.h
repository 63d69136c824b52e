#pragma once
// Model FLOP utilisation: achieved training FLOP/s over the accelerator's dense bf16 peak.
//   MFU = flops_per_token * tokens_per_second / peak,
// flops_per_token from layers/model/model_size.h (6 * matmul params + the mixers' attention/state terms; the
// formula is in docs/flops.md). Peaks are dense (never the 2:4-sparse figures); docs/metrics.md lists them.
#include <optional>
#include <string>

#include "core/device.h"

namespace natsl {

// Dense bf16 tensor-core peak in FLOP/s for a GPU product name ("NVIDIA H200"), or nullopt if unknown.
std::optional<double> dense_bf16_peak_flops(const std::string& gpu_name);
// The product name of a CUDA device ("" for the CPU or without the CUDA backend).
std::string device_name(Device d);

}  // namespace natsl
