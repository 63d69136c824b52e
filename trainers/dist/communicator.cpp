#include "trainers/dist/communicator.h"

namespace natsl::dist {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::avg: return "avg";
    case ReduceOp::max: return "max";
  }
  return "?";
}

std::unique_ptr<Communicator> connect_communicator(const LaunchInfo& launch, Store& store, Device device,
                                                   Millis timeout, const std::string& prefix) {
  if (device.is_cpu()) return make_gloo_communicator(launch, store, timeout, prefix);
  return make_nccl_communicator(launch, store, device, timeout, prefix);
}

}  // namespace natsl::dist
