#pragma once
// Tensor: a shared Storage plus shape, strides (in elements), offset (in elements), dtype and device.
// Views (view/reshape, slice, transpose, permute) share the storage. Kernels take contiguous tensors and
// check it (NATSL_CHECK(t.is_contiguous())).
//
// The member functions here never record autograd history: they are the raw tensor API. Model code uses
// the differentiable free functions of autograd/ops.h (natsl::reshape, natsl::matmul, ...), which call
// these and attach a backward node.
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"

namespace natsl {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

// A block of bytes on one device, freed when the last tensor viewing it goes away.
class Storage {
 public:
  Storage(Device d, size_t nbytes);
  // Wraps memory owned elsewhere (e.g. a slice of a parameter buffer kept alive by `owner`).
  Storage(Device d, void* ptr, size_t nbytes, std::shared_ptr<void> owner);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return ptr_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  Device device_;
  AllocTag tag_;  // where the memory came from (allocator.h); before ptr_, whose initialiser fills it
  void* ptr_ = nullptr;
  size_t nbytes_ = 0;
  std::shared_ptr<void> owner_;  // set when the memory is borrowed
};

class Node;  // autograd/engine.h
struct TensorImpl;

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor (no storage)
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- factories ----
  static Tensor empty(const Shape& shape, DType dt = DType::f32, Device d = kCPU);
  static Tensor zeros(const Shape& shape, DType dt = DType::f32, Device d = kCPU);
  static Tensor full(const Shape& shape, double value, DType dt = DType::f32, Device d = kCPU);
  // Copies host values (converted to dtype dt) into a new tensor on d.
  template <class T>
  static Tensor from_vector(const std::vector<T>& v, const Shape& shape, DType dt = dtype_v<T>, Device d = kCPU);
  static Tensor scalar(double v, DType dt = DType::f32, Device d = kCPU) { return full({}, v, dt, d); }
  // A tensor over existing storage.
  static Tensor from_storage(std::shared_ptr<Storage> st, const Shape& shape, const Shape& strides,
                             int64_t offset, DType dt);

  // ---- metadata ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& strides() const;
  int64_t offset() const;
  DType dtype() const;
  Device device() const;
  int64_t dim() const { return int64_t(shape().size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype()); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const;
  std::string str() const;  // "Tensor[2, 3] f32 cpu"

  void* data_ptr() const;
  template <class T>
  T* data() const {
    NATSL_CHECK(dtype() == dtype_v<T>, "data<", dtype_name(dtype_v<T>), ">() on a ", dtype_name(dtype()), " tensor");
    return static_cast<T*>(data_ptr());
  }

  // ---- views (share storage; no autograd) ----
  Tensor view(const Shape& shape) const;     // requires contiguous; one dim may be -1
  Tensor reshape(const Shape& shape) const;  // view if contiguous, else a contiguous copy
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor permute(const std::vector<int64_t>& order) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end) const;  // [start, end) along dim
  Tensor select(int64_t dim, int64_t index) const;              // drops dim
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze(int64_t dim) const;
  Tensor expand(const Shape& shape) const;  // broadcast view (stride 0)

  // ---- copies (in-place ones write the data the handle points to) ----
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(Device d) const;
  Tensor to(DType dt) const;
  void copy_(const Tensor& src) const;  // same shape; any dtype/device/strides
  void fill_(double v) const;
  void zero_() const;
  template <class T>
  std::vector<T> to_vector() const;  // host copy, converted to T (synchronises on CUDA)
  double item() const;              // one element as double (synchronises on CUDA)

  // ---- autograd state (the engine lives in autograd/) ----
  // A Tensor is a handle: const methods may change the data and autograd state it points to, as with
  // PyTorch's at::Tensor.
  bool requires_grad() const;
  const Tensor& set_requires_grad(bool r) const;
  const Tensor& grad() const;  // undefined until a backward reaches this leaf
  Tensor& mutable_grad() const;
  void set_grad(const Tensor& g) const;
  const std::shared_ptr<Node>& grad_fn() const;
  int output_nr() const;
  void set_grad_fn(std::shared_ptr<Node> fn, int output_nr) const;
  bool is_leaf() const { return grad_fn() == nullptr; }
  Tensor detach() const;  // same data, no history
  // Backpropagates from this tensor. A scalar uses gradient 1; otherwise `grad` gives dL/dthis.
  // Defined in autograd/engine.cpp.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
  void check_defined() const;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;
  int64_t offset = 0;
  DType dtype = DType::f32;
  Device device;
  // autograd
  bool requires_grad = false;
  Tensor grad;
  std::shared_ptr<Node> grad_fn;
  int output_nr = 0;
};

// Copies `n` bytes between any two devices (host pointers for CPU). Synchronises when the destination is
// the host.
void copy_bytes(void* dst, Device dd, const void* src, Device sd, size_t n);

std::ostream& operator<<(std::ostream& os, const Tensor& t);

}  // namespace natsl
