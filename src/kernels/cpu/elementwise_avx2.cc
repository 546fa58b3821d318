// The element-wise kernels (elementwise_kernel.inc) compiled for the avx2 instruction set.
#include <cmath>
#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu::avx2 {
#include "kernels/cpu/elementwise_kernel.inc"
}  // namespace alem::cpu::avx2
