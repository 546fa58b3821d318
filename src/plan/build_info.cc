// The git revision, passed in by CMake (src/plan/CMakeLists.txt) as ALEM_GIT_REVISION.
#include "plan/build_info.h"

#ifndef ALEM_GIT_REVISION
#define ALEM_GIT_REVISION "unknown"
#endif

namespace alem::plan {
const char* git_revision() {
  return ALEM_GIT_REVISION;
}
}  // namespace alem::plan
