// Implements the process hardening of memory_hygiene.h with prctl, setrlimit and /proc reads.
#include "confidential/memory_hygiene.h"

#include <sys/prctl.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "core/log.h"

namespace alem::confidential {
namespace {

uint64_t limit_value(rlim_t v) {
  return v == RLIM_INFINITY ? std::numeric_limits<uint64_t>::max() : static_cast<uint64_t>(v);
}

std::string limit_text(uint64_t v) {
  return v == std::numeric_limits<uint64_t>::max() ? "unlimited" : std::to_string(v);
}

uint64_t soft_limit(int resource) {
  struct rlimit r {};
  ALEM_CHECK(getrlimit(resource, &r) == 0,
             std::string("getrlimit failed: ") + std::strerror(errno));
  return limit_value(r.rlim_cur);
}

}  // namespace

bool process_dumpable() {
  return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0;
}

uint64_t core_limit_soft() {
  return soft_limit(RLIMIT_CORE);
}

uint64_t memlock_limit_soft() {
  return soft_limit(RLIMIT_MEMLOCK);
}

bool has_capability(int cap) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("CapEff:", 0) != 0) continue;
    const uint64_t mask = std::strtoull(line.c_str() + 7, nullptr, 16);
    return cap >= 0 && cap < 64 && ((mask >> cap) & 1) != 0;
  }
  return false;
}

HardeningReport harden_process(const HardeningOptions& options) {
  HardeningReport report;
  if (!options.allow_core_dumps) {
    // Not dumpable: no core file, and other processes of the same user cannot ptrace or read
    // /proc/PID/mem of this one.
    ALEM_CHECK(prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0,
               std::string("prctl(PR_SET_DUMPABLE, 0) failed: ") + std::strerror(errno));
    struct rlimit zero {
      0, 0
    };
    ALEM_CHECK(setrlimit(RLIMIT_CORE, &zero) == 0,
               std::string("setrlimit(RLIMIT_CORE, 0) failed: ") + std::strerror(errno));
    report.dumpable_cleared = !process_dumpable();
    report.core_limit_zero = core_limit_soft() == 0;
    // Open MPI's shared-memory transport copies large messages with process_vm_readv (CMA),
    // which the kernel refuses on a non-dumpable peer. Copy through the shared segment instead.
    // Set before MPI starts; an operator's own setting wins.
    setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", /*overwrite=*/0);
    const char* mech = std::getenv("OMPI_MCA_btl_vader_single_copy_mechanism");
    report.mpi_single_copy = mech ? mech : "";
  }
  report.lock_memory = options.lock_memory;
  set_sensitive_memory_locking(options.lock_memory);
  report.memlock_limit_bytes = memlock_limit_soft();
  constexpr int kCapIpcLock = 14;  // CAP_IPC_LOCK: mlock without the limit
  report.memlock_unlimited = report.memlock_limit_bytes == std::numeric_limits<uint64_t>::max() ||
                             has_capability(kCapIpcLock);
  LogFields fields{{"core_dumps", options.allow_core_dumps ? "allowed" : "off"},
                   {"dumpable", process_dumpable() ? "1" : "0"},
                   {"rlimit_core", limit_text(core_limit_soft())},
                   {"mlock", options.lock_memory ? "on" : "off"},
                   {"rlimit_memlock", limit_text(report.memlock_limit_bytes)},
                   {"cap_ipc_lock", has_capability(kCapIpcLock) ? "1" : "0"}};
  if (!report.mpi_single_copy.empty())
    fields.emplace_back("mpi_single_copy", report.mpi_single_copy);
  if (options.allow_core_dumps) {
    log_warn("memory hygiene: core dumps allowed (--allow-core-dumps); a dump may hold prompts",
             fields);
  } else {
    log_info("memory hygiene", fields);
  }
  return report;
}

void log_sensitive_memory(const std::string& what) {
  const SensitiveMemoryStats s = sensitive_memory_stats();
  LogFields fields{{"what", what},
                   {"mapped_bytes", std::to_string(s.mapped_bytes)},
                   {"locked_bytes", std::to_string(s.locked_bytes)},
                   {"buffers", std::to_string(s.buffers)},
                   {"lock_failures", std::to_string(s.lock_failures)},
                   {"rlimit_memlock", limit_text(memlock_limit_soft())}};
  if (s.lock_failures > 0) {
    log_warn(
        "sensitive memory: some buffers are not locked (raise RLIMIT_MEMLOCK, e.g. "
        "`ulimit -l unlimited` or Slurm's PropagateResourceLimits); they stay out of dumps",
        fields);
  } else {
    log_info("sensitive memory", fields);
  }
}

std::vector<std::string> mapping_vm_flags(const void* address) {
  const auto addr = reinterpret_cast<uintptr_t>(address);
  std::ifstream smaps("/proc/self/smaps");
  ALEM_CHECK(smaps.good(), "cannot read /proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    // A mapping's header: "start-end perms offset dev inode [path]".
    const size_t dash = line.find('-');
    const size_t space = line.find(' ');
    if (dash != std::string::npos && space != std::string::npos && dash < space &&
        line.find(':') > space) {
      const uintptr_t start = std::strtoull(line.substr(0, dash).c_str(), nullptr, 16);
      const uintptr_t end =
          std::strtoull(line.substr(dash + 1, space - dash - 1).c_str(), nullptr, 16);
      inside = addr >= start && addr < end;
      continue;
    }
    if (inside && line.rfind("VmFlags:", 0) == 0) {
      std::istringstream in(line.substr(8));
      std::vector<std::string> flags;
      for (std::string f; in >> f;) flags.push_back(f);
      return flags;
    }
  }
  return {};
}

}  // namespace alem::confidential
