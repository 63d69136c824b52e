#pragma once
// Where a tensor lives: the CPU, or CUDA device n.
#include <cstdint>
#include <string>

namespace natsl {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device&) const = default;
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
  // Parses "cpu", "cuda", "cuda:N"; throws InputError otherwise.
  static Device parse(const std::string& s);
};

inline const Device kCPU = Device::cpu();

// True when the CUDA backend is compiled in and at least one GPU is visible.
bool cuda_available();
int cuda_device_count();

}  // namespace natsl
