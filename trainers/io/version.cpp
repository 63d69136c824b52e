#include "trainers/io/version.h"

#include <Eigen/Core>

#if defined(__GLIBC__)
#include <gnu/libc-version.h>
#endif

#ifndef NATSL_VERSION_STRING
#define NATSL_VERSION_STRING "unknown"
#endif
#ifndef NATSL_GIT_COMMIT
#define NATSL_GIT_COMMIT "unknown"
#endif
#ifndef NATSL_CPU_NUMERICS
#define NATSL_CPU_NUMERICS "unknown compiler"
#endif

namespace natsl {
const char* natsl_version() { return NATSL_VERSION_STRING; }
const char* natsl_git_commit() { return NATSL_GIT_COMMIT; }

std::string natsl_cpu_numerics() {
  std::string s = NATSL_CPU_NUMERICS;
  s += ", Eigen " + std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) + "." +
       std::to_string(EIGEN_MINOR_VERSION);
#if defined(__GLIBC__)
  s += std::string(", glibc ") + gnu_get_libc_version();  // libm's exp/log/tanh come with it
#else
  s += ", libm unknown";
#endif
  return s;
}
}  // namespace natsl
