// What the instruction-set-specific kernels share and may not define themselves: their per-thread
// scratch buffers and the process's stream prefetch switch. This file is built without ISA
// flags. A std container, or any other inline code, instantiated in an *_avx512.cc file is
// emitted there with AVX-512 instructions allowed, and the linker keeps one copy of it for the
// whole program: the copy from a kernel file could then run on a CPU without AVX-512. The test
// `isa_objects_share_no_code` checks the kernel objects for such copies.
#include <cpuid.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu {

namespace {

StreamPrefetch stream_prefetch_at_start() {
  bool valid = false;
  // An invalid value is reported by make_cpu_backend, which every engine calls before a kernel.
  return stream_prefetch_setting(std::getenv("ALEM_CPU_PREFETCH"), amd_zen4(), l1_data_bytes(),
                                 &valid);
}

struct ThreadScratch {
  void* data[static_cast<int>(ScratchSlot::kCount)] = {};
  size_t bytes[static_cast<int>(ScratchSlot::kCount)] = {};
  ~ThreadScratch() {
    for (void* p : data) std::free(p);
  }
};

}  // namespace

bool vendor_is_amd() {
  static const bool amd = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) == 0) return false;
    char vendor[13] = {};
    std::memcpy(vendor, &ebx, 4);
    std::memcpy(vendor + 4, &edx, 4);
    std::memcpy(vendor + 8, &ecx, 4);
    return std::strcmp(vendor, "AuthenticAMD") == 0;
  }();
  return amd;
}

unsigned cpuid_display_family(unsigned eax) {
  const unsigned base = (eax >> 8) & 0xF;
  return base == 0xF ? base + ((eax >> 20) & 0xFF) : base;
}

unsigned cpuid_display_model(unsigned eax) {
  const unsigned base_family = (eax >> 8) & 0xF, base = (eax >> 4) & 0xF;
  return base_family == 0xF || base_family == 6 ? base + (((eax >> 16) & 0xF) << 4) : base;
}

bool amd_zen4_model(unsigned family, unsigned model) {
  if (family != 0x19) return false;
  // Family 19h holds Zen 3 (models 00-0Fh Milan, 20-2Fh Vermeer, 40-5Fh Rembrandt and Cezanne)
  // and Zen 4 (10-1Fh Genoa, 60-7Fh Raphael and Phoenix, A0-AFh Bergamo and Siena).
  return (model >= 0x10 && model <= 0x1F) || (model >= 0x60 && model <= 0x7F) ||
         (model >= 0xA0 && model <= 0xAF);
}

bool amd_zen4() {
  static const bool zen4 = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!vendor_is_amd() || __get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return false;
    return amd_zen4_model(cpuid_display_family(eax), cpuid_display_model(eax));
  }();
  return zen4;
}

size_t l1_data_bytes() {
  static const size_t bytes = [] {
    const long reported = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    return reported > 0 ? static_cast<size_t>(reported) : size_t{32} << 10;
  }();
  return bytes;
}

StreamPrefetch stream_prefetch_setting(const char* value, bool amd_zen4, size_t l1_bytes,
                                       bool* valid) {
  *valid = true;
  const StreamPrefetch rule =
      amd_zen4 ? StreamPrefetch{false, true, l1_bytes / 2} : StreamPrefetch{true, true, SIZE_MAX};
  StreamPrefetch tuned = rule;
  tuned.tuned = true;
  if (value == nullptr || *value == '\0' || std::strcmp(value, "auto") == 0) return tuned;
  if (std::strcmp(value, "static") == 0) return rule;
  if (std::strcmp(value, "all") == 0) return {true, true, SIZE_MAX};
  if (std::strcmp(value, "heavy") == 0) return {false, true, SIZE_MAX};
  if (std::strcmp(value, "none") == 0) return {false, false, SIZE_MAX};
  *valid = false;
  return tuned;
}

std::string stream_prefetch_name(StreamPrefetch setting) {
  std::string name = setting.light                       ? (setting.heavy ? "all" : "light")
                     : !setting.heavy                    ? "none"
                     : setting.light_x_bytes == SIZE_MAX ? "heavy"
                                                         : "heavy+wide-x";
  return setting.tuned ? name + ", light tuned" : name;
}

const StreamPrefetch stream_prefetch = stream_prefetch_at_start();
constinit thread_local LightPrefetch light_prefetch_now = LightPrefetch::kSetting;

void* thread_scratch(ScratchSlot slot, size_t bytes) {
  thread_local ThreadScratch scratch;
  const int i = static_cast<int>(slot);
  if (scratch.bytes[i] < bytes || scratch.data[i] == nullptr) {
    const size_t rounded = (bytes + 63) / 64 * 64 + 64;  // whole lines, and never zero
    void* fresh = std::aligned_alloc(64, rounded);
    if (fresh == nullptr) throw std::bad_alloc();
    std::free(scratch.data[i]);
    scratch.data[i] = fresh;
    scratch.bytes[i] = rounded;
  }
  return scratch.data[i];
}

}  // namespace alem::cpu
