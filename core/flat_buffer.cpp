#include "core/flat_buffer.h"

namespace natsl {

int FlatLayout::add(const std::string& name, const Shape& shape, DType dt) {
  NATSL_CHECK(find(name) < 0, "FlatLayout: duplicate tensor name '", name, "'");
  int64_t& tot = totals_[dt];
  FlatEntry e{name, shape, dt, tot};
  tot += (e.numel() + kFlatAlign - 1) / kFlatAlign * kFlatAlign;
  entries_.push_back(e);
  return int(entries_.size()) - 1;
}

void FlatLayout::pad_totals(int64_t multiple) {
  NATSL_CHECK(multiple > 0, "FlatLayout::pad_totals: multiple must be > 0");
  for (auto& [dt, n] : totals_) n = (n + multiple - 1) / multiple * multiple;
}

int64_t FlatLayout::total(DType dt) const {
  auto it = totals_.find(dt);
  return it == totals_.end() ? 0 : it->second;
}

std::vector<DType> FlatLayout::dtypes() const {
  std::vector<DType> out;
  for (auto& [dt, n] : totals_) out.push_back(dt);
  return out;
}

int FlatLayout::find(const std::string& name) const {
  for (size_t i = 0; i < entries_.size(); ++i)
    if (entries_[i].name == name) return int(i);
  return -1;
}

FlatBuffer::FlatBuffer(const FlatLayout& layout, Device d, std::optional<DType> as) : layout_(layout) {
  for (DType dt : layout.dtypes()) {
    Tensor flat = Tensor::zeros({layout.total(dt)}, as.value_or(dt), d);
    flats_[dt] = flat;
  }
  for (const FlatEntry& e : layout.entries()) {
    const Tensor& flat = flats_.at(e.dtype);
    views_.push_back(Tensor::from_storage(flat.storage(), e.shape, contiguous_strides(e.shape), e.offset,
                                          flat.dtype()));
  }
}

void FlatBuffer::zero_() {
  for (auto& [dt, t] : flats_) t.zero_();
}

}  // namespace natsl
