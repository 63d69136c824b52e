// Trainer: train.cuda_graph, the step's forward + backward + gradient norm replayed as one CUDA graph
// (core/cuda_graph.h; docs/training.md "CUDA graphs").
#include <fmt/format.h>

#include "autograd/ops.h"
#include "kernels/reduce.h"
#include "layers/recompute.h"
#include "trainers/trainer.h"

namespace natsl {

bool Trainer::graph_step_wanted(int64_t s) {
  const TrainConfig& t = cfg_.train;
  if (!t.cuda_graph || graph_off_) return false;
  if (graph_) return true;
  if (first_step_this_process_ < 0) first_step_this_process_ = s;
  auto give_up = [&](const std::string& why) {
    graph_off_ = true;
    log("cuda_graph: this run stays eager: " + why);
    return false;
  };
  bool never = false;
  const std::string why = model_->graph_blocker(s, &never);
  if (!why.empty() && never) return give_up(why + ", which a replay would repeat");
  if (!device_.is_cuda()) return give_up("the device is the CPU (graphs are a CUDA feature)");
  if (comm_) return give_up("it has several ranks (the gradient reduction is not captured)");
  if (!why.empty()) return false;  // asked again at the next step
  // Two eager steps in this process first: lazy set-up (matrix-product plans, caches, kernel attributes)
  // happens outside the capture. The profiled steps run eagerly too (the profiler times ops; a replay has none).
  if (s < first_step_this_process_ + 2) return false;
  if (!t.profile_steps.empty() && s + 1 < t.profile_steps[1]) return false;
  return true;
}

Tensor Trainer::graph_step(int64_t s, std::vector<Batch>& batches) {
  {
    prof::Scope scope("data", "phase");
    batches.clear();
    for (int64_t m = 0; m < accum_; ++m) batches.push_back(next_batch(s, m));
  }
  auto same_shapes = [&] {
    for (size_t m = 0; m < batches.size(); ++m)
      if (batches[m].inputs.shape() != graph_batches_[m].inputs.shape() ||
          batches[m].targets.shape() != graph_batches_[m].targets.shape() ||
          batches[m].inputs.dtype() != graph_batches_[m].inputs.dtype() ||
          batches[m].targets.dtype() != graph_batches_[m].targets.dtype())
        return false;
    return true;
  };
  const bool capture = !graph_;
  if (capture) {
    // The device buffers the graph reads, made before the capture (so they are kept while it lives).
    graph_batches_.clear();
    for (const Batch& b : batches)
      graph_batches_.push_back({Tensor::empty(b.inputs.shape(), b.inputs.dtype(), device_),
                                Tensor::empty(b.targets.shape(), b.targets.dtype(), device_)});
  } else if (!same_shapes()) {
    graph_restore_ = nullptr;
    graph_.reset();
    graph_batches_.clear();
    graph_loss_ = Tensor();
    graph_off_ = true;
    log(fmt::format("cuda_graph: step {}'s batch differs in shape from the captured one; this run stays eager",
                    s + 1));
    return Tensor();
  }
  for (size_t m = 0; m < batches.size(); ++m) {
    graph_batches_[m].inputs.copy_(batches[m].inputs);
    graph_batches_[m].targets.copy_(batches[m].targets);
  }
  if (capture) {
    auto g = std::make_unique<CudaGraph>(device_);
    // A failed capture ran nothing, yet the modules kept what its forward made (routing statistics): put back
    // the state of the last eager step, which the eager re-run of this step then replaces.
    const std::function<void()> before = forward_state_capture({model_.get()})();
    try {
      g->capture([&] {
        store_->zero_grad();
        Tensor sum;
        for (int64_t m = 0; m < accum_; ++m) {
          const Tensor loss = forward_backward(graph_batches_[size_t(m)], m);
          sum = sum.defined() ? add(sum, loss) : loss;
        }
        kernels::sum_squares(store_->grads().flat(DType::f32), grad_sumsq_);
        graph_loss_ = sum;
        if (opts_.fail_cuda_graph_capture) throw Error("TrainerOptions::fail_cuda_graph_capture");
      });
    } catch (const std::exception& e) {
      before();
      graph_batches_.clear();
      graph_loss_ = Tensor();
      // Once more at the next step (a cache an evaluation replaced is rebuilt by this step's eager run), then
      // this run stays eager.
      graph_off_ = ++graph_failures_ >= 2;
      log(fmt::format("cuda_graph: step {} could not be captured ({}); {}", s + 1, e.what(),
                      graph_off_ ? "this run stays eager" : "it runs eagerly, and the next step tries again"));
      return Tensor();
    }
    graph_ = std::move(g);
    graph_restore_ = forward_state_capture({model_.get()})();
    log(fmt::format("cuda_graph: step {} captured ({} graph nodes, {:.0f} MiB private memory); the later steps "
                    "replay it",
                    s + 1, graph_->num_nodes(), double(graph_->pool_bytes()) / double(1 << 20)));
  }
  {
    prof::Scope scope("forward+backward (graph)", "phase");
    graph_->replay();
  }
  graph_restore_();
  return graph_loss_;
}

}  // namespace natsl
