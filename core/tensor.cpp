#include "core/tensor.h"

#include <algorithm>
#include <cstring>
#include <ostream>
#include <sstream>

#include "core/copy.h"
#include "core/cuda_check.h"
#include "core/stream.h"

namespace natsl {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t i = int64_t(s.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<int64_t>(s[i], 1);
  }
  return st;
}

// ---------------- Storage ----------------
Storage::Storage(Device d, size_t nbytes) : device_(d), ptr_(allocate(d, nbytes, &tag_)), nbytes_(nbytes) {}
Storage::Storage(Device d, void* ptr, size_t nbytes, std::shared_ptr<void> owner)
    : device_(d), ptr_(ptr), nbytes_(nbytes), owner_(std::move(owner)) {}
Storage::~Storage() {
  if (!owner_) deallocate(device_, ptr_, nbytes_, tag_);
}

// ---------------- bytes between devices ----------------
void copy_bytes(void* dst, Device dd, const void* src, Device sd, size_t n) {
  if (n == 0) return;
  if (dd.is_cpu() && sd.is_cpu()) {
    std::memcpy(dst, src, n);
    return;
  }
#ifdef NATSL_WITH_CUDA
  if (dd.is_cuda() && sd.is_cuda()) {
    cudaStream_t s = activate(dd.index);
    if (dd.index == sd.index) {
      NATSL_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, s));
    } else {
      synchronize(sd.index);
      NATSL_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dd.index, src, sd.index, n, s));
    }
  } else if (dd.is_cuda()) {
    // Host -> device: the source is pageable host memory that the caller may free right after, so
    // wait for the copy.
    cudaStream_t s = activate(dd.index);
    NATSL_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, s));
    NATSL_CUDA_CHECK(cudaStreamSynchronize(s));
  } else {
    cudaStream_t s = activate(sd.index);
    NATSL_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, s));
    NATSL_CUDA_CHECK(cudaStreamSynchronize(s));
  }
#else
  NATSL_FAIL("natsl was built without CUDA; cannot copy between ", sd.str(), " and ", dd.str());
#endif
}

// ---------------- Tensor ----------------
void Tensor::check_defined() const { NATSL_CHECK(impl_ != nullptr, "use of an undefined tensor"); }

Tensor Tensor::from_storage(std::shared_ptr<Storage> st, const Shape& shape, const Shape& strides,
                            int64_t offset, DType dt) {
  NATSL_CHECK(shape.size() == strides.size(), "shape/strides rank mismatch");
  NATSL_CHECK(int64_t(shape.size()) <= kMaxDims, "tensors have at most ", kMaxDims, " dims");
  for (int64_t d : shape) NATSL_CHECK(d >= 0, "negative size in shape ", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->device = st->device();
  impl->storage = std::move(st);
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = dt;
  return Tensor(std::move(impl));
}

Tensor Tensor::empty(const Shape& shape, DType dt, Device d) {
  int64_t n = shape_numel(shape);
  NATSL_CHECK(n >= 0, "bad shape ", shape_str(shape));
  auto st = std::make_shared<Storage>(d, size_t(n) * dtype_size(dt));
  return from_storage(std::move(st), shape, contiguous_strides(shape), 0, dt);
}

Tensor Tensor::zeros(const Shape& shape, DType dt, Device d) {
  Tensor t = empty(shape, dt, d);
  t.zero_();
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dt, Device d) {
  Tensor t = empty(shape, dt, d);
  t.fill_(value);
  return t;
}

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& v, const Shape& shape, DType dt, Device d) {
  NATSL_CHECK(int64_t(v.size()) == shape_numel(shape), "from_vector: ", v.size(), " values for shape ",
              shape_str(shape));
  Tensor host = empty(shape, dtype_v<T>, kCPU);
  if (!v.empty()) std::memcpy(host.data_ptr(), v.data(), v.size() * sizeof(T));
  if (dt != dtype_v<T>) host = host.to(dt);
  return d.is_cpu() ? host : host.to(d);
}

const Shape& Tensor::shape() const { check_defined(); return impl_->shape; }
const Shape& Tensor::strides() const { check_defined(); return impl_->strides; }
int64_t Tensor::offset() const { check_defined(); return impl_->offset; }
DType Tensor::dtype() const { check_defined(); return impl_->dtype; }
Device Tensor::device() const { check_defined(); return impl_->device; }
const std::shared_ptr<Storage>& Tensor::storage() const { check_defined(); return impl_->storage; }
int64_t Tensor::numel() const { return shape_numel(shape()); }

int64_t Tensor::size(int64_t d) const {
  int64_t n = dim();
  if (d < 0) d += n;
  NATSL_CHECK(d >= 0 && d < n, "dim ", d, " out of range for ", str());
  return impl_->shape[d];
}

bool Tensor::is_contiguous() const {
  const Shape& sh = shape();
  const Shape& st = strides();
  int64_t acc = 1;
  for (int64_t i = int64_t(sh.size()) - 1; i >= 0; --i) {
    if (sh[i] == 1) continue;
    if (st[i] != acc) return false;
    acc *= sh[i];
  }
  return true;
}

void* Tensor::data_ptr() const {
  check_defined();
  return static_cast<char*>(impl_->storage->data()) + impl_->offset * int64_t(dtype_size(impl_->dtype));
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  return "Tensor" + shape_str(shape()) + " " + std::string(dtype_name(dtype())) + " " + device().str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

namespace {
int64_t wrap_dim(int64_t d, int64_t n, const char* what) {
  if (d < 0) d += n;
  NATSL_CHECK(d >= 0 && d < n, what, ": dim out of range (rank ", n, ")");
  return d;
}
}  // namespace

Tensor Tensor::view(const Shape& shape_in) const {
  NATSL_CHECK(is_contiguous(), "view() of a non-contiguous ", str(), "; call contiguous() or reshape()");
  Shape s = shape_in;
  int64_t known = 1, neg = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      NATSL_CHECK(neg < 0, "view(): only one -1 allowed");
      neg = int64_t(i);
    } else {
      known *= s[i];
    }
  }
  if (neg >= 0) {
    NATSL_CHECK(known > 0 && numel() % known == 0, "view(): cannot infer -1 for ", shape_str(shape_in),
                " from ", str());
    s[neg] = numel() / known;
  }
  NATSL_CHECK(shape_numel(s) == numel(), "view(): shape ", shape_str(shape_in), " does not fit ", str());
  Tensor t = from_storage(storage(), s, contiguous_strides(s), offset(), dtype());
  return t;
}

Tensor Tensor::reshape(const Shape& s) const { return is_contiguous() ? view(s) : contiguous().view(s); }

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  d0 = wrap_dim(d0, dim(), "transpose");
  d1 = wrap_dim(d1, dim(), "transpose");
  Shape sh = shape(), st = strides();
  std::swap(sh[d0], sh[d1]);
  std::swap(st[d0], st[d1]);
  return from_storage(storage(), sh, st, offset(), dtype());
}

Tensor Tensor::permute(const std::vector<int64_t>& order) const {
  NATSL_CHECK(int64_t(order.size()) == dim(), "permute: order has ", order.size(), " dims, tensor ", dim());
  Shape sh(order.size()), st(order.size());
  std::vector<bool> seen(order.size(), false);
  for (size_t i = 0; i < order.size(); ++i) {
    int64_t d = wrap_dim(order[i], dim(), "permute");
    NATSL_CHECK(!seen[d], "permute: repeated dim ", d);
    seen[d] = true;
    sh[i] = shape()[d];
    st[i] = strides()[d];
  }
  return from_storage(storage(), sh, st, offset(), dtype());
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  d = wrap_dim(d, dim(), "slice");
  int64_t n = shape()[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  end = std::min(end, n);
  NATSL_CHECK(start >= 0 && start <= end, "slice [", start, ", ", end, ") out of range for size ", n);
  Shape sh = shape();
  sh[d] = end - start;
  return from_storage(storage(), sh, strides(), offset() + start * strides()[d], dtype());
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d, dim(), "select");
  int64_t n = shape()[d];
  if (index < 0) index += n;
  NATSL_CHECK(index >= 0 && index < n, "select index ", index, " out of range for size ", n);
  Shape sh = shape(), st = strides();
  int64_t off = offset() + index * st[d];
  sh.erase(sh.begin() + d);
  st.erase(st.begin() + d);
  return from_storage(storage(), sh, st, off, dtype());
}

Tensor Tensor::unsqueeze(int64_t d) const {
  if (d < 0) d += dim() + 1;
  NATSL_CHECK(d >= 0 && d <= dim(), "unsqueeze: dim out of range");
  Shape sh = shape(), st = strides();
  int64_t stride = d < dim() ? st[d] * sh[d] : 1;
  sh.insert(sh.begin() + d, 1);
  st.insert(st.begin() + d, stride);
  return from_storage(storage(), sh, st, offset(), dtype());
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d, dim(), "squeeze");
  NATSL_CHECK(shape()[d] == 1, "squeeze: dim ", d, " has size ", shape()[d]);
  Shape sh = shape(), st = strides();
  sh.erase(sh.begin() + d);
  st.erase(st.begin() + d);
  return from_storage(storage(), sh, st, offset(), dtype());
}

Tensor Tensor::expand(const Shape& target) const {
  NATSL_CHECK(int64_t(target.size()) >= dim(), "expand: target rank below tensor rank");
  size_t lead = target.size() - shape().size();
  Shape st(target.size(), 0);
  for (size_t i = 0; i < target.size(); ++i) {
    if (i < lead) continue;
    int64_t s = shape()[i - lead];
    if (s == target[i]) st[i] = strides()[i - lead];
    else NATSL_CHECK(s == 1, "expand: cannot expand ", str(), " to ", shape_str(target));
  }
  return from_storage(storage(), target, st, offset(), dtype());
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
  Tensor t = empty(shape(), dtype(), device());
  t.copy_(*this);
  return t;
}

Tensor Tensor::to(Device d) const {
  if (d == device()) return *this;
  Tensor src = contiguous();
  Tensor t = empty(shape(), dtype(), d);
  copy_bytes(t.data_ptr(), d, src.data_ptr(), src.device(), src.nbytes());
  return t;
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype()) return *this;
  Tensor t = empty(shape(), dt, device());
  t.copy_(*this);
  return t;
}

void Tensor::copy_(const Tensor& src) const {
  NATSL_CHECK(src.shape() == shape(), "copy_: shape ", shape_str(src.shape()), " into ", shape_str(shape()));
  if (src.device() != device()) {
    Tensor moved = src.to(device());
    strided_copy(moved, *this);
  } else {
    strided_copy(src, *this);
  }
}

void Tensor::fill_(double v) const { fill(*this, v); }
void Tensor::zero_() const {
  if (is_contiguous() && device().is_cpu()) {
    std::memset(data_ptr(), 0, nbytes());
    return;
  }
#ifdef NATSL_WITH_CUDA
  if (is_contiguous() && device().is_cuda()) {
    NATSL_CUDA_CHECK(cudaMemsetAsync(data_ptr(), 0, nbytes(), activate(device().index)));
    return;
  }
#endif
  fill(*this, 0.0);
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor h = to(kCPU).to(dtype_v<T>).contiguous();
  std::vector<T> out(size_t(h.numel()));
  if (!out.empty()) std::memcpy(out.data(), h.data_ptr(), out.size() * sizeof(T));
  return out;
}

double Tensor::item() const {
  NATSL_CHECK(numel() == 1, "item() on ", str(), " with ", numel(), " elements");
  return to_vector<double>()[0];
}

// ---------------- autograd state ----------------
bool Tensor::requires_grad() const { return impl_ && impl_->requires_grad; }
const Tensor& Tensor::set_requires_grad(bool r) const {
  check_defined();
  NATSL_CHECK(!r || is_floating(dtype()), "only floating tensors can require grad");
  impl_->requires_grad = r;
  return *this;
}
const Tensor& Tensor::grad() const { check_defined(); return impl_->grad; }
Tensor& Tensor::mutable_grad() const { check_defined(); return impl_->grad; }
void Tensor::set_grad(const Tensor& g) const { check_defined(); impl_->grad = g; }
const std::shared_ptr<Node>& Tensor::grad_fn() const {
  static const std::shared_ptr<Node> none;
  return impl_ ? impl_->grad_fn : none;
}
int Tensor::output_nr() const { return impl_ ? impl_->output_nr : 0; }
void Tensor::set_grad_fn(std::shared_ptr<Node> fn, int nr) const {
  check_defined();
  impl_->grad_fn = std::move(fn);
  impl_->output_nr = nr;
  impl_->requires_grad = impl_->grad_fn != nullptr || impl_->requires_grad;
}
Tensor Tensor::detach() const {
  return from_storage(storage(), shape(), strides(), offset(), dtype());
}

// ---------------- copy / fill ----------------
namespace {
StridedLayout make_layout(const Tensor& src, const Tensor& dst) {
  StridedLayout L;
  L.ndim = int(dst.dim());
  for (int i = 0; i < L.ndim; ++i) {
    L.shape[i] = dst.shape()[i];
    L.src_strides[i] = src.defined() ? src.strides()[i] : 0;
    L.dst_strides[i] = dst.strides()[i];
  }
  return L;
}

template <class S, class D>
void cpu_copy(const Tensor& src, const Tensor& dst) {
  const S* s = static_cast<const S*>(src.data_ptr());
  D* d = static_cast<D*>(dst.data_ptr());
  int64_t n = dst.numel();
  if (src.is_contiguous() && dst.is_contiguous()) {
    for (int64_t i = 0; i < n; ++i) d[i] = convert<D>(s[i]);
    return;
  }
  // Walk the outer index once per innermost run; the run itself is a strided loop (contiguous in the
  // common permute/slice cases), so the index arithmetic is paid per row, not per element.
  StridedLayout L = make_layout(src, dst);
  const int last = L.ndim - 1;
  const int64_t run = L.ndim ? L.shape[last] : 1;
  const int64_t ss = L.ndim ? L.src_strides[last] : 0, ds = L.ndim ? L.dst_strides[last] : 0;
  for (int64_t r = 0; r < n / std::max<int64_t>(run, 1); ++r) {
    int64_t rem = r, so = 0, o = 0;
    for (int k = last - 1; k >= 0; --k) {
      int64_t idx = rem % L.shape[k];
      rem /= L.shape[k];
      so += idx * L.src_strides[k];
      o += idx * L.dst_strides[k];
    }
    const S* sp = s + so;
    D* dp = d + o;
    if (ss == 1 && ds == 1) {
      for (int64_t j = 0; j < run; ++j) dp[j] = convert<D>(sp[j]);
    } else {
      for (int64_t j = 0; j < run; ++j) dp[j * ds] = convert<D>(sp[j * ss]);
    }
  }
}
}  // namespace

void strided_copy(const Tensor& src, const Tensor& dst) {
  NATSL_CHECK(src.device() == dst.device(), "strided_copy across devices");
  if (dst.numel() == 0) return;
  if (dst.device().is_cpu()) {
    NATSL_DISPATCH_ALL(src.dtype(), S, [&] { NATSL_DISPATCH_ALL(dst.dtype(), D, [&] { cpu_copy<S, D>(src, dst); }); });
    return;
  }
#ifdef NATSL_WITH_CUDA
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    copy_bytes(dst.data_ptr(), dst.device(), src.data_ptr(), src.device(), dst.nbytes());
    return;
  }
  cuda::strided_copy(src.storage()->data(), src.dtype(), src.offset(), dst.storage()->data(), dst.dtype(),
                     dst.offset(), make_layout(src, dst), dst.numel(), dst.device().index);
#endif
}

void fill(const Tensor& dst, double v) {
  if (dst.numel() == 0) return;
  if (dst.device().is_cpu()) {
    NATSL_DISPATCH_ALL(dst.dtype(), D, [&] {
      D val = convert<D>(v);
      D* d = static_cast<D*>(dst.data_ptr());
      if (dst.is_contiguous()) {
        std::fill(d, d + dst.numel(), val);
        return;
      }
      StridedLayout L = make_layout(Tensor(), dst);
      for (int64_t i = 0, n = dst.numel(); i < n; ++i) {
        int64_t rem = i, o = 0;
        for (int k = L.ndim - 1; k >= 0; --k) {
          o += (rem % L.shape[k]) * L.dst_strides[k];
          rem /= L.shape[k];
        }
        d[o] = val;
      }
    });
    return;
  }
#ifdef NATSL_WITH_CUDA
  cuda::fill(dst.storage()->data(), dst.dtype(), dst.offset(), make_layout(Tensor(), dst), dst.numel(), v,
             dst.device().index);
#endif
}

// explicit instantiations
#define NATSL_INST(T)                                                                                  \
  template Tensor Tensor::from_vector<T>(const std::vector<T>&, const Shape&, DType, Device);          \
  template std::vector<T> Tensor::to_vector<T>() const;
NATSL_INST(float)
NATSL_INST(double)
NATSL_INST(bf16)
NATSL_INST(int32_t)
NATSL_INST(int64_t)
NATSL_INST(uint8_t)
#undef NATSL_INST

}  // namespace natsl
