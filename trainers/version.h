#pragma once
// The build's identity, recorded in checkpoints and printed at start. The git commit is read when CMake
// configures (re-run cmake to refresh it); "unknown" outside a git checkout.
namespace natsl {
const char* natsl_version();
const char* natsl_git_commit();
}  // namespace natsl
