#pragma once
// The token chunk of NAtS-L: the 64-token blocks a router labels, the GDN kernels' chunks (kernels/gdn.h) and
// the chunk-selected sparse attention's query and key tiles (kernels/sparse_attention.h). One value for all
// of them: the kernels' tile shapes are built on it (static_asserts tie them here), and the model accepts
// only this block size (model.nats_block_size).
namespace natsl::kernels {

inline constexpr int kChunk = 64;

}  // namespace natsl::kernels
