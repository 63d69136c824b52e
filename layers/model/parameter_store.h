#pragma once
// ParameterStore: after a model is built, lays all its parameters out in ONE FlatLayout and owns three
// buffers over it:
//   master  - f32 weights (what the optimizer updates and checkpoints save),
//   grads   - f32 gradients,
//   compute - what the forward reads: the master buffer itself for precision f32, a bf16 copy for bf16
//             (refreshed by sync_compute_from_master() after each optimizer step).
// Sharded (ZeRO-1, shards > 1): the store keeps only its rank's shard of the f32 master weights, a 1-D
// range [shard_begin, shard_end) of the padded layout, and the compute buffer is always a separate whole
// copy (f32 or bf16). After an optimizer step sync_compute_from_master() refreshes the shard's part of the
// compute buffer; the caller all-gathers the rest from the other ranks.
// Every module parameter becomes a view into the compute buffer that requires grad, with .grad preset to
// its view into the grad buffer, so backward accumulates in place (AccumulateGrad converts bf16 -> f32)
// and zero_grad() is one memset.
//
// The store keeps pointers to the module's parameter members: the module must outlive it.
#include <string>
#include <vector>

#include "core/flat_buffer.h"
#include "layers/module.h"

namespace natsl {

enum class Precision { f32, bf16 };
std::string precision_name(Precision p);

class ParameterStore {
 public:
  // Copies the module's current parameter values into the master buffer (so a model initialised or loaded
  // before the store keeps its weights), then binds the module to the buffers on `device`.
  // shards > 1 (ZeRO-1): the buffers are padded to `shards` equal parts and this store keeps master shard
  // `rank` only.
  ParameterStore(Module& model, Device device = kCPU, Precision precision = Precision::f32, int shards = 1,
                 int rank = 0);
  ParameterStore(const ParameterStore&) = delete;
  ParameterStore& operator=(const ParameterStore&) = delete;

  const FlatLayout& layout() const { return layout_; }
  const std::vector<ParameterRef>& parameters() const { return params_; }
  // The whole master weights; not available when sharded (use master_shard()).
  const FlatBuffer& master() const;
  const FlatBuffer& grads() const { return grads_; }
  const FlatBuffer& compute() const { return separate_compute() ? compute_ : master_; }
  bool sharded() const { return shards_ > 1; }
  // This store's part of the f32 master weights as a 1-D tensor over [shard_begin, shard_end) of the flat
  // layout (the whole flat master when not sharded); writable.
  const Tensor& master_shard() const { return master_shard_; }
  int64_t shard_begin() const { return shard_begin_; }
  int64_t shard_end() const { return shard_end_; }
  Device device() const { return device_; }
  Precision precision() const { return precision_; }
  int64_t num_params() const;

  void zero_grad();
  // Casts the master weights into the compute buffer (no-op for f32, where they are the same memory).
  // Sharded: only the shard's range of the compute buffer.
  void sync_compute_from_master();
  // Sets parameter i (layout order) to `value` (any dtype/device of its shape) in the master weights this
  // store holds and in the compute buffer.
  void set_parameter(int i, const Tensor& value);
  // True when the compute buffer is a copy of its own (bf16, or sharded), false when it is the master buffer.
  bool separate_compute() const { return precision_ == Precision::bf16 || shards_ > 1; }
  // Moves all three buffers and rebinds the module.
  void to(Device d);
  // Initialises every parameter by its ParamMeta, in layout order, drawing on the CPU in f32 from `gen`:
  // the same seed gives the same weights on every device and precision.
  void init(Generator& gen);

  // Per layout entry: true when AdamW should decay it (not no_decay; embeddings only if decay_embeddings).
  std::vector<bool> decay_mask(bool decay_embeddings = true) const;

  // name -> view of the f32 master weights (not sharded).
  StateDict state_dict() const;
  // Strict load (see Module::load_state_dict) into the master weights, then sync_compute_from_master().
  void load_state_dict(const StateDict& sd, const std::string& what = "state dict");

 private:
  void bind();  // points each module parameter at its compute view, its grad at the grad view
  int shards_ = 1;
  int64_t shard_begin_ = 0, shard_end_ = 0;
  Tensor master_shard_;
  std::vector<ParameterRef> params_;
  FlatLayout layout_;
  Device device_;
  Precision precision_;
  FlatBuffer master_, grads_, compute_;
};

}  // namespace natsl
