// What the AMX kernels (matmul_gemm_bf16_amx.cc, matmul_gemm_int8_amx.cc) share: loading a tile
// configuration, and keeping the compiler from moving ordinary loads and stores across tile
// loads and stores. Included only by *_amx.cc files; everything here is internal to each.
//
// GCC's AMX intrinsics under-declare their memory operands: _tile_loadconfig tells the compiler
// it reads 8 bytes (so the column stores of a 64-byte configuration were dropped as dead, and
// ldtilecfg faulted), and _tile_loadd / _tile_stored name only a pointer register, no memory at
// all. So the configuration is loaded with a full 64-byte operand here, and a compiler barrier
// stands between memory written by vector stores and the tile loads that read it, and between
// tile stores and the vector loads that read them.
#pragma once

#include <cstdint>

namespace alem::cpu::amx {
namespace {

inline void compiler_barrier() {
  asm volatile("" ::: "memory");
}

// One tile's shape: rows, and bytes per row (at most 16 and 64).
struct TileShape {
  uint8_t rows;
  uint16_t row_bytes;
};

// Loads palette 1 with tiles 0 .. count - 1 shaped as `shapes` (the rest unused).
inline void load_tile_config(const TileShape* shapes, int count) {
  struct alignas(64) Config {
    uint8_t bytes[64];
  } config{};
  config.bytes[0] = 1;
  for (int t = 0; t < count; ++t) {
    config.bytes[16 + 2 * t] = static_cast<uint8_t>(shapes[t].row_bytes & 0xFF);  // little-endian
    config.bytes[17 + 2 * t] = static_cast<uint8_t>(shapes[t].row_bytes >> 8);
    config.bytes[48 + t] = shapes[t].rows;
  }
  asm volatile("ldtilecfg %0" ::"m"(config));
}

}  // namespace
}  // namespace alem::cpu::amx
