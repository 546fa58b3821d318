// The element-wise kernels (elementwise_kernel.inc) compiled for the scalar instruction set.
#include <cmath>
#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu::scalar {
#include "kernels/cpu/elementwise_kernel.inc"
}  // namespace alem::cpu::scalar
