#pragma once
// How the CUDA GDN kernels are laid out for one call: the tuning that stays in production (tile widths,
// pipeline stages, tensor copies on or off, occupancy) and the layouts that remain as real alternatives
// (checked against the CPU reference by tests/kernels/gdn_cuda_test.cpp, timed by experiments/bench/bench_gdn).
//
// A default-constructed GdnPlan is what production runs: every field left at its "auto" value (0 or
// std::nullopt) is chosen per call from the shapes and the device (gdn::state_layout in state_fwd.cu), so the
// defaults measured fastest on the H200 (BENCHMARKS.md, "kernel history") are picked there and only there.
// Tests and benchmarks pass a plan with some fields set to reach the other layouts. Plain C++ (no CUDA
// types): host code and tests include it.
#include <optional>

namespace natsl::kernels::cuda {

enum class GdnPrepKernel {
  automatic,           // prep2: one kernel per (chunk, head) solving T and writing w, u, p
  solve_then_products, // prep2 solves T (forward only), prep3 computes w, u, p (same bits, not faster)
  generic,             // the first prep kernel: the fallback where prep2 does not fit shared memory (K = 256)
};

struct GdnPlan {
  // ---- every state pass (forward, reverse, joint) ----
  int vtile = 0;               // columns of V per CTA: 32 or 64; 0: 32 where those CTAs fit one wave
  int stages = 0;              // cp.async prefetch stages: 1 or 2; 0: 2
  std::optional<bool> occ2 = std::nullopt;  // two CTAs per SM (one stage, registers capped); auto: where one CTA per SM
                               // would leave a second, partial wave
  bool joint = true;           // the backward's forward recompute and reverse pass in one launch

  // ---- prep (both directions) ----
  GdnPrepKernel prep = GdnPrepKernel::automatic;
  bool prep_staged = true;     // bf16 w, u, p leave through a shared staging tile (16-byte stores)

  // ---- forward with output ----
  bool tma = true;             // tiles by the tensor copy engine (bf16, K <= 128); else the cp.async pass
  int tma_stages = 0;          // 1..3; 0: 3 (fewer where they do not fit)
  int l2pf = 0;                // L2 prefetch distance in chunks beyond the stages in flight (0: off)
  bool split = false;          // FLA's split: the pass stores h_n, v_new; a chunk-parallel kernel the output
  int split_stages = 0;        // the split pass's stages: 2..4; 0: 3
  bool out_per_vtile = false;  // the split's output kernel: one CTA per (chunk, head, V tile), not per (chunk, head)
  bool fwd_bulk = false;       // bf16 tiles by bulk copies (one per tile row) instead of cp.async
  bool ws = false;             // bf16 warp-specialised pass (one loading warp, mbarriers)

  // ---- backward ----
  std::optional<bool> bwd_tma = std::nullopt;  // tensor-copied tiles (bf16, K <= 128); auto: where the reverse pass at V tile
                               // 32 is one wave of CTAs
  int bwd_tma_vtile = 0;       // 32 or 64; 0: 32 where auto picks the tensor copies, else 64
  int bwd_tma_stages = 0;      // 1..3; 0: 1 for the joint launch, 2 for the reverse pass alone (auto), else 2
  bool fwd_store_staged = true;  // the recompute stores h_n, v_new from shared tiles (16-byte pieces)
  bool bwd_store_staged = true;  // the reverse pass stores dh, dv2 from shared tiles
  bool bwd_bulk = false;       // the reverse pass loads its tiles by bulk copies (3x slower on the H200)
  int bwd_l2pf = 0;            // the reverse pass's L2 prefetch distance in chunks (0: off)
};

}  // namespace natsl::kernels::cuda
