#include "trainers/version.h"

#ifndef NATSL_VERSION_STRING
#define NATSL_VERSION_STRING "unknown"
#endif
#ifndef NATSL_GIT_COMMIT
#define NATSL_GIT_COMMIT "unknown"
#endif

namespace natsl {
const char* natsl_version() { return NATSL_VERSION_STRING; }
const char* natsl_git_commit() { return NATSL_GIT_COMMIT; }
}  // namespace natsl
