// The paged-attention kernel (attention_kernel.inc) compiled for the portable build (no AVX2).
// Kept in its own namespace and translation unit so the build can give it its own ISA flags.
#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu::scalar {
#include "kernels/cpu/attention_kernel.inc"
}  // namespace alem::cpu::scalar
