// Which source a binary was built from, recorded in calibration and results files.
#pragma once

namespace alem::plan {
// `git describe --always --dirty` of the source tree when the build was configured, or
// "unknown" outside a git checkout.
const char* git_revision();
}  // namespace alem::plan
