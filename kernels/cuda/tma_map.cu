// Tensor-map encoding (kernels/cuda/tma_map.h).
#include "kernels/cuda/tma_map.h"

#include <cudaTypedefs.h>

#include "core/cuda_check.h"

namespace natsl::kernels::cuda {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    NATSL_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q));
    NATSL_CHECK(f != nullptr && q == cudaDriverEntryPointSuccess,
                "tensor copies (TMA): the CUDA driver does not provide cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

CUtensorMap encode(const bf16* base, cuuint32_t rank, const cuuint64_t* dims, const cuuint64_t* strides,
                   const cuuint32_t* box, CUtensorMapSwizzle swizzle) {
  CUtensorMap m;
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  const CUresult r = tensor_map_encoder()(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rank, const_cast<bf16*>(base), dims,
                                          strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  NATSL_CHECK(r == CUDA_SUCCESS, "tensor copies (TMA): cuTensorMapEncodeTiled failed (CUresult ", int(r), ") for a ",
              rank, "-D map");
  return m;
}

}  // namespace

CUtensorMap tensor_map_2d(const bf16* base, int64_t rows, int64_t cols, int64_t pitch, int box_rows, int box_cols,
                          CUtensorMapSwizzle swizzle) {
  const cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(pitch) * sizeof(bf16)};
  const cuuint32_t box[2] = {cuuint32_t(box_cols), cuuint32_t(box_rows)};
  return encode(base, 2, dims, strides, box, swizzle);
}

CUtensorMap tensor_map_3d(const bf16* base, int64_t seqs, int64_t rows, int64_t cols, int64_t pitch, int64_t seq_pitch,
                          int box_rows, int box_cols, CUtensorMapSwizzle swizzle) {
  const cuuint64_t dims[3] = {cuuint64_t(cols), cuuint64_t(rows), cuuint64_t(seqs)};
  const cuuint64_t strides[2] = {cuuint64_t(pitch) * sizeof(bf16), cuuint64_t(seq_pitch) * sizeof(bf16)};
  const cuuint32_t box[3] = {cuuint32_t(box_cols), cuuint32_t(box_rows), 1};
  return encode(base, 3, dims, strides, box, swizzle);
}

}  // namespace natsl::kernels::cuda
