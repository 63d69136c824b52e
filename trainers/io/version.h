#pragma once
// The build's identity, recorded in checkpoints and printed at start. The git commit is read when CMake
// configures (re-run cmake to refresh it); "unknown" outside a git checkout.
#include <string>

namespace natsl {
const char* natsl_version();
const char* natsl_git_commit();
// What determines the CPU path's results bit for bit: two builds with the same string give the same losses
// on every x86-64 CPU (the CPU model and the thread count do not enter, kernels/cpu/eigen.h), e.g.
// "GNU 12.2.0, -march=x86-64-v3, Eigen 3.4.0, glibc 2.36".
std::string natsl_cpu_numerics();
}  // namespace natsl
