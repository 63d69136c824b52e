#pragma once
// Selective activation recomputation (train.recompute): which parts of each block keep only their input in
// the forward and run again in the backward (autograd/checkpoint.h), trading one extra forward of those parts
// for the memory of their intermediate activations.
//
// Kinds: mlp (mlp_norm + GatedMLP + its residual add), attn / gdn / natsl (attn_norm + the mixer + its residual
// add, in the layers of that kind), mixer (the same, any kind), block (the whole block; the others are then moot).
// train.recompute_keep: [matmul] keeps the outputs of the matrix products of those parts from the first run
// (CheckpointKeep::Matmuls), so the recomputation runs only the ops between them.
#include <functional>
#include <string>
#include <vector>

#include "autograd/checkpoint.h"
#include "layers/module.h"

namespace natsl {

// The names train.recompute accepts, in the order the docs list them.
const std::vector<std::string>& recompute_kinds();
// The names train.recompute_keep accepts.
const std::vector<std::string>& recompute_keep_kinds();

struct RecomputePolicy {
  bool mlp = false, block = false;
  std::vector<std::string> mixers;  // mixer kinds recomputed ("attn", "gdn", "natsl")
  CheckpointKeep keep = CheckpointKeep::Inputs;  // what the recomputed parts keep from their first run

  // From train.recompute's and train.recompute_keep's names; an unknown name is an InputError naming the key
  // and the allowed values.
  static RecomputePolicy parse(const std::vector<std::string>& names, const std::vector<std::string>& keep = {});
  bool mixer(const std::string& kind) const;
  bool any() const { return mlp || block || !mixers.empty(); }
};

// A StateCapture (autograd/checkpoint.h) over every module of the trees under `roots`
// (Module::capture_forward_state).
StateCapture forward_state_capture(const std::vector<Module*>& roots);

// checkpoint() of fn, whose parameters are those of the trees under `roots` and whose forward state is theirs.
std::vector<Tensor> checkpoint_modules(const std::vector<Module*>& roots, const CheckpointFn& fn,
                                       const std::vector<Tensor>& inputs, CheckpointKeep keep = CheckpointKeep::Inputs);

}  // namespace natsl
