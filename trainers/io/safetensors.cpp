#include "trainers/io/safetensors.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/file_checksum.h"
#include "data/sync_file.h"

namespace natsl {

namespace {

constexpr uint64_t kMaxHeaderBytes = uint64_t(100) << 20;  // the reference loader's limit

const std::vector<std::pair<DType, std::string>>& dtype_names() {
  static const std::vector<std::pair<DType, std::string>> names = {
      {DType::f32, "F32"}, {DType::bf16, "BF16"}, {DType::f64, "F64"},
      {DType::i32, "I32"}, {DType::i64, "I64"},   {DType::u8, "U8"}};
  return names;
}

bool parse_dtype(const std::string& s, DType& out) {
  for (const auto& [dt, name] : dtype_names())
    if (name == s) {
      out = dt;
      return true;
    }
  return false;
}

}  // namespace

std::string safetensors_dtype_name(DType dt) {
  for (const auto& [d, name] : dtype_names())
    if (d == dt) return name;
  NATSL_FAIL("no safetensors name for dtype ", dtype_name(dt));
}

uint64_t write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata,
                       const std::function<void(size_t)>& after_tensor) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    NATSL_CHECK(name != "__metadata__" && !header.contains(name), "duplicate or reserved tensor name '", name, "'");
    uint64_t nbytes = t.nbytes();
    header[name] = {{"dtype", safetensors_dtype_name(t.dtype())},
                    {"shape", t.shape()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data region 8-byte aligned
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(text.size()) >> (8 * i));

  SyncedFile f(path);
  Xxh3Stream checksum;
  auto put = [&](const void* data, size_t n) {
    f.write(data, n);
    checksum.update(data, n);
  };
  put(len, 8);
  put(text.data(), text.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    Tensor host = tensors[i].second.contiguous().to(kCPU);
    put(host.data_ptr(), host.nbytes());
    if (after_tensor) after_tensor(i);
  }
  f.close();
  return checksum.digest();
}

SafeTensorsReader::SafeTensorsReader(const std::string& path) : path_(path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  uint64_t size = fs::file_size(path, ec);
  if (ec) throw InputError("cannot read safetensors file '" + path + "': " + ec.message());
  auto bad = [&](const std::string& what) {
    return InputError("'" + path + "' is not a valid safetensors file: " + what);
  };
  if (size < 8) throw bad("only " + std::to_string(size) + " bytes");
  in_.open(path, std::ios::binary);
  if (!in_) throw InputError("cannot open '" + path + "'");
  unsigned char len[8];
  in_.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(len[i]) << (8 * i);
  if (n > kMaxHeaderBytes || n > size - 8)
    throw bad("header length " + std::to_string(n) + " does not fit the file of " + std::to_string(size) + " bytes");
  std::string text(n, '\0');
  in_.read(text.data(), std::streamsize(n));
  if (!in_) throw bad("cannot read the header");
  data_start_ = 8 + n;
  const uint64_t data_len = size - data_start_;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw bad(std::string("the header is not JSON (") + e.what() + ")");
  }
  if (!header.is_object()) throw bad("the header is not a JSON object");
  for (auto it = header.begin(); it != header.end(); ++it) {
    const auto& v = it.value();
    if (it.key() == "__metadata__") {
      if (!v.is_object()) throw bad("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) throw bad("__metadata__." + m.key() + " is not a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    SafeTensorEntry e;
    e.name = it.key();
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      throw bad("entry '" + e.name + "' lacks dtype, shape or data_offsets");
    if (!v["dtype"].is_string() || !parse_dtype(v["dtype"].get<std::string>(), e.dtype))
      throw bad("entry '" + e.name + "' has an unsupported dtype " + v["dtype"].dump());
    if (!v["shape"].is_array()) throw bad("entry '" + e.name + "' has a bad shape");
    // Every product and sum below is checked: a header is untrusted, and 2^32 x 2^32 must not wrap to 0.
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > uint64_t(INT64_MAX))
        throw bad("entry '" + e.name + "' has a bad shape " + v["shape"].dump());
      e.shape.push_back(d.get<int64_t>());
      if (__builtin_mul_overflow(numel, d.get<uint64_t>(), &numel))
        throw bad("entry '" + e.name + "' has a shape " + v["shape"].dump() + " whose element count overflows");
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, uint64_t(dtype_size(e.dtype)), &nbytes))
      throw bad("entry '" + e.name + "' has a shape " + v["shape"].dump() + " whose byte count overflows");
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw bad("entry '" + e.name + "' has bad data_offsets");
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    if (e.end < e.begin || e.end - e.begin != nbytes)
      throw bad("entry '" + e.name + "' spans " + off.dump() + ", which does not match its shape and dtype");
    if (e.end > data_len)
      throw bad("entry '" + e.name + "' spans " + off.dump() + ", past the " + std::to_string(data_len) +
                " data bytes of the file (truncated?)");
    entries_.push_back(std::move(e));
  }
  // The tensors must tile the data region exactly; a shorter file is a truncated write.
  std::vector<const SafeTensorEntry*> by_offset;
  for (const auto& e : entries_) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  uint64_t pos = 0;
  for (const auto* e : by_offset) {
    if (e->begin != pos) throw bad("tensor '" + e->name + "' does not start where the previous one ends");
    pos = e->end;
  }
  if (pos != data_len)
    throw bad("the header describes " + std::to_string(pos) + " data bytes but the file holds " +
              std::to_string(data_len) + (pos > data_len ? " (truncated?)" : ""));
}

const SafeTensorEntry* SafeTensorsReader::find(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

void SafeTensorsReader::read_into(const std::string& name, const Tensor& dst) {
  const SafeTensorEntry* e = find(name);
  if (!e) throw InputError("'" + path_ + "' has no tensor '" + name + "'");
  if (e->dtype != dst.dtype() || e->shape != dst.shape())
    throw InputError("'" + path_ + "': tensor '" + name + "' is " + shape_str(e->shape) + " " +
                     std::string(dtype_name(e->dtype)) + " but " + shape_str(dst.shape()) + " " +
                     std::string(dtype_name(dst.dtype())) + " is expected");
  read_bytes_into(*e, 0, dst);
}

void SafeTensorsReader::read_bytes_into(const SafeTensorEntry& e, uint64_t offset, const Tensor& dst) {
  NATSL_CHECK(dst.is_contiguous(), "reading '", e.name, "' needs a contiguous destination");
  Tensor host = dst.device().is_cpu() ? dst : Tensor::empty(dst.shape(), dst.dtype(), kCPU);
  in_.clear();
  in_.seekg(std::streamoff(data_start_ + e.begin + offset));
  in_.read(static_cast<char*>(host.data_ptr()), std::streamsize(uint64_t(dst.numel()) * dtype_size(e.dtype)));
  if (!in_) throw InputError("'" + path_ + "': cannot read the bytes of tensor '" + e.name + "'");
  if (!dst.device().is_cpu()) dst.copy_(host);
}

void SafeTensorsReader::read_range_into(const std::string& name, int64_t first, const Tensor& dst) {
  const SafeTensorEntry* e = find(name);
  if (!e) throw InputError("'" + path_ + "' has no tensor '" + name + "'");
  if (e->dtype != dst.dtype())
    throw InputError("'" + path_ + "': tensor '" + name + "' is " + std::string(dtype_name(e->dtype)) + " but " +
                     std::string(dtype_name(dst.dtype())) + " is expected");
  // The header was checked against the file at open: end - begin = numel x element size.
  const int64_t numel = shape_numel(e->shape), n = dst.numel();
  if (first < 0 || n < 0 || first > numel || n > numel - first)
    throw InputError(fmt::format("'{}': elements [{}, {} + {}) are not inside tensor '{}' of {} elements", path_,
                                 first, first, n, name, numel));
  if (n == 0) return;
  read_bytes_into(*e, uint64_t(first) * dtype_size(e->dtype), dst);
}

Tensor SafeTensorsReader::read(const std::string& name) {
  const SafeTensorEntry* e = find(name);
  if (!e) throw InputError("'" + path_ + "' has no tensor '" + name + "'");
  Tensor t = Tensor::empty(e->shape, e->dtype, kCPU);
  read_into(name, t);
  return t;
}

}  // namespace natsl
