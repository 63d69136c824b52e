#include "kernels/reduce.h"

#include <algorithm>

#include "kernels/dispatch.h"

namespace natsl::kernels {

void sum_dims(const Tensor& x, const std::vector<int64_t>& dims_in, const Tensor& out) {
  Device d = common_device({&x, &out}, "sum_dims");
  check_contiguous({&out}, "sum_dims");
  std::vector<int64_t> dims;
  for (int64_t k : dims_in) {
    int64_t w = k < 0 ? k + x.dim() : k;
    NATSL_CHECK(w >= 0 && w < x.dim(), "sum_dims: dim ", k, " out of range for ", x.str());
    dims.push_back(w);
  }
  std::sort(dims.begin(), dims.end());
  dims.erase(std::unique(dims.begin(), dims.end()), dims.end());
  Shape keep = x.shape();
  for (int64_t k : dims) keep[k] = 1;
  NATSL_CHECK(out.numel() == shape_numel(keep), "sum_dims: out ", out.str(), " for keepdim shape ", shape_str(keep));
  Tensor o = out.view(keep);
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::sum_dims(x, dims, o));
  else cpu::sum_dims(x, dims, o);
}

void sum_to_shape(const Tensor& x, const Tensor& out) {
  const Shape& xs = x.shape();
  const Shape& os = out.shape();
  NATSL_CHECK(os.size() <= xs.size(), "sum_to_shape: ", shape_str(os), " has more dims than ", shape_str(xs));
  size_t lead = xs.size() - os.size();
  std::vector<int64_t> dims;
  for (size_t i = 0; i < xs.size(); ++i) {
    if (i < lead) dims.push_back(int64_t(i));
    else if (os[i - lead] == 1 && xs[i] != 1) dims.push_back(int64_t(i));
    else NATSL_CHECK(os[i - lead] == xs[i], "sum_to_shape: ", shape_str(xs), " does not broadcast from ", shape_str(os));
  }
  sum_dims(x, dims, out);
}

void sum_squares(const Tensor& x, const Tensor& out) {
  Device d = common_device({&x, &out}, "sum_squares");
  check_contiguous({&x}, "sum_squares");
  NATSL_CHECK(out.numel() == 1, "sum_squares: out must have one element");
  if (d.is_cuda()) NATSL_CUDA_ONLY(cuda::sum_squares(x, out));
  else cpu::sum_squares(x, out);
}

}  // namespace natsl::kernels
