#pragma once
// Tensor maps for the bulk tensor copy engine (TMA, sm_90): the descriptors of bf16 matrices that a kernel copies
// box by box into shared memory (ptx::tma_load_2d / tma_load_3d). Encoded on the host through the driver entry
// point cuTensorMapEncodeTiled (no libcuda link); reads outside the map give zeros. Users: the GDN state passes
// (gdn/tma.cuh) and the Hopper attention forward (sparse_attention_fwd_wgmma.sm90a.cu).
#include <cuda.h>

#include <cstdint>

#include "core/dtype.h"

namespace natsl::kernels::cuda {

// A bf16 matrix of rows x cols (row pitch `pitch` elements) copied in boxes of box_rows x box_cols.
CUtensorMap tensor_map_2d(const bf16* base, int64_t rows, int64_t cols, int64_t pitch, int box_rows, int box_cols,
                          CUtensorMapSwizzle swizzle);

// `seqs` bf16 matrices of rows x cols each (row pitch `pitch`, matrix pitch `seq_pitch` elements), copied in boxes of
// box_rows x box_cols of one matrix: a box that runs past a matrix's last row reads zeros there, not the next
// matrix's rows (a sequence's partial last chunk).
CUtensorMap tensor_map_3d(const bf16* base, int64_t seqs, int64_t rows, int64_t cols, int64_t pitch, int64_t seq_pitch,
                          int box_rows, int box_cols, CUtensorMapSwizzle swizzle);

}  // namespace natsl::kernels::cuda
