#pragma once
// Options of the CUDA matmul (plain C++: callable from code built without nvcc).

namespace natsl::kernels::cuda {

// f32 matmuls use exact f32 arithmetic unless TF32 tensor cores are allowed (faster, ~1e-3 relative
// error: 10-bit mantissa products, f32 accumulation). Off by default, so f32 results match the CPU.
void set_matmul_allow_tf32(bool allow);
bool matmul_allow_tf32();

}  // namespace natsl::kernels::cuda
