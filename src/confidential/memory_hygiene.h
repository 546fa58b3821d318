// Process-level memory hygiene for the commands that hold prompts and completions (`alem serve`,
// `alem generate`): no core dumps, not ptrace-readable by other processes of the same user, and
// request memory (the KV cache, see SensitiveBuffer in core/aligned_buffer.h) out of dumps and
// locked in RAM where the memlock limit allows. Call harden_process() first thing, before MPI
// starts (it also steers Open MPI away from cross-process memory reads, which a non-dumpable
// process refuses), and log_sensitive_memory() once the KV cache is allocated.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace alem::confidential {

struct HardeningOptions {
  // Debugging escape hatch (--allow-core-dumps): leave the dumpable flag and RLIMIT_CORE alone.
  bool allow_core_dumps = false;
  // mlock the KV cache and request buffers where RLIMIT_MEMLOCK allows.
  bool lock_memory = true;
};

struct HardeningReport {
  bool dumpable_cleared = false;  // prctl(PR_SET_DUMPABLE, 0) took effect
  bool core_limit_zero = false;   // RLIMIT_CORE soft and hard are 0
  bool lock_memory = false;
  uint64_t memlock_limit_bytes = 0;  // RLIMIT_MEMLOCK soft limit (UINT64_MAX: unlimited)
  bool memlock_unlimited = false;    // unlimited limit or CAP_IPC_LOCK
  std::string mpi_single_copy;       // what Open MPI's shared-memory transport was told to use
};

// Applies the options and logs one "memory hygiene" line saying what was done. Throws
// alem::Error when a step that should always work (prctl, setrlimit) fails.
HardeningReport harden_process(const HardeningOptions& options);

// Logs how much sensitive memory is mapped, locked, and how many buffers could not be locked
// (with the memlock limit), as one "sensitive memory" line. Warns when some could not be locked.
void log_sensitive_memory(const std::string& what);

// Current state, read back from the kernel (for tests and `alem doctor`-style checks).
bool process_dumpable();        // prctl(PR_GET_DUMPABLE) != 0
uint64_t core_limit_soft();     // RLIMIT_CORE soft limit, UINT64_MAX when unlimited
uint64_t memlock_limit_soft();  // RLIMIT_MEMLOCK soft limit, UINT64_MAX when unlimited
bool has_capability(int cap);   // in the effective set (/proc/self/status CapEff)

// The VmFlags (two-letter codes, e.g. "dd" = excluded from dumps, "lo" = locked) of the mapping
// of this process that contains `address`, read from /proc/self/smaps. Empty when no mapping
// contains it.
std::vector<std::string> mapping_vm_flags(const void* address);

}  // namespace alem::confidential
