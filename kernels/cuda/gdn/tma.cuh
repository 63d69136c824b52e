#pragma once
// The bulk tensor copy engine (TMA, sm_90) for the GDN state passes: tensor maps over bf16 matrices, one copy
// instruction per tile, and the shared-memory stage they fill (gdn/state_fwd_tma.cu, gdn/state_bwd.cu).
//
// A stage: 3 KT + 1 unpadded 64 x 64 bf16 tiles in the 128-byte swizzle (Swizzled128, gdn/tile.cuh), one dense
// 64 x VW tile, the chunk's 64 gamma values; 1024-byte aligned (the swizzle repeats every 1024 bytes and each
// copied tile must start on such a boundary). Which tile holds what is the pass's choice (its stage view).
#include <cuda.h>

#include "kernels/cuda/gdn/state_fwd.cuh"
#include "kernels/cuda/tma_map.h"

namespace natsl::kernels::cuda::gdn {

// tensor_map_2d (kernels/cuda/tma_map.h, the enclosing namespace): the maps of the copied matrices.

constexpr int kSwTileBytes = kC * kC * int(sizeof(bf16));  // one swizzled 64 x 64 tile

template <int KT, int VW>
constexpr int tma_dense_offset() {
  return (3 * KT + 1) * kSwTileBytes;
}
template <int KT, int VW>
constexpr int tma_gamma_offset() {
  return tma_dense_offset<KT, VW>() + kC * VW * int(sizeof(bf16));
}
template <int KT, int VW>
constexpr int tma_stage_bytes() {
  return (tma_gamma_offset<KT, VW>() + kC * 4 + 1023) / 1024 * 1024;
}
// + 1024 bytes to align the dynamic shared memory, the KT + 2 padded tiles a step writes, the mbarriers.
template <int KT, int VW, int STAGES>
constexpr int tma_smem() {
  return 1024 + STAGES * tma_stage_bytes<KT, VW>() + (KT + 2) * kTileBytes<bf16> + 2 * STAGES * 8;
}

__device__ __forceinline__ unsigned char* tma_align(unsigned char* smem_raw) {
  return smem_raw + ((1024u - (smem_addr(smem_raw) & 1023u)) & 1023u);
}

using ptx::tma_load_2d;  // the tensor copy (ptx_sm90.cuh)

// Zeroes rows from..63 of `count` consecutive copied tiles (rows of row_bytes; a swizzle only moves 16-byte pieces
// within a row), by NTH threads. The copies fill rows past a chunk's end with the next sequence's tokens; the
// cp.async loads leave zeros there, and so must these (the same sums, and no inf or NaN from a neighbour).
template <int NTH>
__device__ __forceinline__ void zero_tile_rows(unsigned char* tiles, int count, int row_bytes, int from) {
  const int pieces = row_bytes / 16, nz = kC - from;
  for (int idx = threadIdx.x; idx < count * nz * pieces; idx += NTH) {
    const int t = idx / (nz * pieces), r = from + (idx / pieces) % nz, piece = idx % pieces;
    *reinterpret_cast<uint4*>(tiles + t * kSwTileBytes + r * row_bytes + piece * 16) = make_uint4(0u, 0u, 0u, 0u);
  }
}

// A step's view of a stage: three groups of KT swizzled tiles, the W, K and Q tiles in groups IW, IK, IQ (tile
// I KT + kt of group I), P in tile 3 KT, the dense tile after it.
template <int KT, int IW, int IK, int IQ>
struct TmaTiles {
  using LT = Swizzled128;
  static constexpr int TE = kC * kC;
  const bf16* base;
  __device__ __forceinline__ const bf16* W(int kt) const { return base + (IW * KT + kt) * TE; }
  __device__ __forceinline__ const bf16* K(int kt) const { return base + (IK * KT + kt) * TE; }
  __device__ __forceinline__ const bf16* Q(int kt) const { return base + (IQ * KT + kt) * TE; }
  __device__ __forceinline__ const bf16* P() const { return base + 3 * KT * TE; }
  __device__ __forceinline__ const bf16* dense() const { return base + (3 * KT + 1) * TE; }
};
// The forward pass's view: W in tiles 0..KT-1, K in KT..2KT-1, Q in 2KT..3KT-1, U dense.
template <int KT, int VW>
struct TmaStage : TmaTiles<KT, 0, 1, 2> {
  using LU = DenseTile<VW>;
  __device__ __forceinline__ const bf16* U() const { return this->dense(); }
};

}  // namespace natsl::kernels::cuda::gdn
