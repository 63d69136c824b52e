#pragma once
// One contiguous buffer per dtype holding a set of tensors, with per-tensor views (as llm.c does).
// Parameters, their gradients and the optimizer moments all use the same FlatLayout, so that zeroing the
// grads is one memset, an all-reduce runs over buckets without packing, ZeRO-1 shards by offset, AdamW
// is one multi-tensor launch and a checkpoint is one write per buffer.
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace natsl {

struct FlatEntry {
  std::string name;
  Shape shape;
  DType dtype;
  int64_t offset = 0;  // in elements, within the buffer of its dtype; aligned to kFlatAlign elements
  int64_t numel() const { return shape_numel(shape); }
};

class FlatLayout {
 public:
  static constexpr int64_t kFlatAlign = 64;  // elements: keeps every view 128-byte aligned for vector loads
  // Appends an entry and returns its index.
  int add(const std::string& name, const Shape& shape, DType dt);
  const std::vector<FlatEntry>& entries() const { return entries_; }
  int64_t total(DType dt) const;  // elements in the buffer of dt (0 if none)
  std::vector<DType> dtypes() const;
  int find(const std::string& name) const;  // -1 if absent
  // Rounds every dtype's total up to a multiple of `multiple` elements (ZeRO-1: equal shards per rank);
  // entries added later start after the padding.
  void pad_totals(int64_t multiple);

 private:
  std::vector<FlatEntry> entries_;
  std::map<DType, int64_t> totals_;
};

// Memory laid out by a FlatLayout, possibly in another dtype than the layout's (e.g. f32 AdamW moments
// for bf16 parameters: `as` overrides every entry's dtype).
class FlatBuffer {
 public:
  FlatBuffer() = default;
  FlatBuffer(const FlatLayout& layout, Device d, std::optional<DType> as = std::nullopt);
  Tensor view(int i) const { return views_.at(size_t(i)); }
  const std::vector<Tensor>& views() const { return views_; }
  // The whole buffer of a (layout) dtype as a 1-D tensor.
  Tensor flat(DType layout_dtype) const { return flats_.at(layout_dtype); }
  const std::map<DType, Tensor>& flats() const { return flats_; }
  void zero_();
  const FlatLayout& layout() const { return layout_; }

 private:
  FlatLayout layout_;
  std::map<DType, Tensor> flats_;  // keyed by the layout dtype
  std::vector<Tensor> views_;
};

}  // namespace natsl
