#pragma once
// The safetensors format (what PyTorch's `safetensors.torch.load_file` reads), written and read by hand:
//   bytes [0, 8)        N, the header length, u64 little-endian
//   bytes [8, 8 + N)    a JSON object, padded with spaces to a multiple of 8 bytes:
//                         {"NAME": {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]}, ...,
//                          "__metadata__": {"key": "string value", ...}}
//   bytes [8 + N, ...)  the tensor bytes, little-endian, row-major; BEGIN/END are relative to this point.
// The tensors tile the data region in order with no gap, as the reference loader requires.
// dtypes: F32, BF16, F64, I32, I64, U8 (natsl's DTypes).
#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace natsl {

std::string safetensors_dtype_name(DType dt);  // "F32", "BF16", ...

struct SafeTensorEntry {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte offsets in the data region
};

// Writes `tensors` (any device; copied to the host one at a time) in the given order, then fsyncs the file.
// `after_tensor(i)`, when set, runs after tensor i's bytes are written (tests use it to simulate a crash).
// Returns the XXH3-64 of every byte written (data/file_checksum.h), which checkpoints record.
uint64_t write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {},
                       const std::function<void(size_t)>& after_tensor = {});

// A safetensors file opened for reading: the header is parsed and checked against the file size at open
// (InputError naming the file on any inconsistency); tensor bytes are read on demand.
class SafeTensorsReader {
 public:
  explicit SafeTensorsReader(const std::string& path);
  const std::vector<SafeTensorEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafeTensorEntry* find(const std::string& name) const;
  // Copies tensor `name` into `dst` (any device), which must have the stored dtype and shape.
  void read_into(const std::string& name, const Tensor& dst);
  Tensor read(const std::string& name);  // a new CPU tensor
  // Copies dst.numel() consecutive elements of tensor `name` (row-major), starting at element `first`, into
  // the contiguous `dst` (any device) of the stored dtype: what a ZeRO-1 rank reads of another world size's
  // optimizer shard. InputError when the range is not inside the tensor.
  void read_range_into(const std::string& name, int64_t first, const Tensor& dst);
  const std::string& path() const { return path_; }

 private:
  // dst.numel() elements of entry e from byte `offset` of its data into dst (contiguous; any device).
  void read_bytes_into(const SafeTensorEntry& e, uint64_t offset, const Tensor& dst);
  std::string path_;
  std::ifstream in_;
  uint64_t data_start_ = 0;
  std::vector<SafeTensorEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace natsl
