#pragma once
// Process-wide choice of bit-reproducible kernels (as torch.use_deterministic_algorithms): every kernel is
// deterministic except where speed is bought with an f32 atomic whose order of additions varies from run to
// run. With the switch on, those kernels take an ordered path instead (slower, same bits every run). Today
// that is the CUDA sparse-attention backward's dq accumulation. The trainer sets it from
// `train.deterministic`; tests use the guard.
namespace natsl::kernels {

void set_deterministic(bool on);
bool deterministic();

class DeterministicGuard {
 public:
  explicit DeterministicGuard(bool on) : prev_(deterministic()) { set_deterministic(on); }
  ~DeterministicGuard() { set_deterministic(prev_); }
  DeterministicGuard(const DeterministicGuard&) = delete;
  DeterministicGuard& operator=(const DeterministicGuard&) = delete;

 private:
  bool prev_;
};

}  // namespace natsl::kernels
