// `sandbox` mode for the serving processes: the Linux-level isolation that a machine without a
// confidential VM can still give. It narrows what a compromised or buggy serving process can do
// and keeps its scratch files private; it does NOT protect the prompts from root on the host,
// the hypervisor or the hardware (that takes `tdx`, see docs/security.md).
//
// enter_sandbox() applies, in order:
//   1. PR_SET_NO_NEW_PRIVS (no setuid/file-capability gains through exec);
//   2. new mount and IPC namespaces (directly with CAP_SYS_ADMIN, else inside a new user
//      namespace when the process is still single-threaded), with a fresh tmpfs on /tmp;
//      the network namespace is kept, since MPI and the HTTP API need the host's network;
//   3. a seccomp filter (libseccomp) that answers EPERM to the calls an inference server never
//      makes: ptrace, process_vm_readv/writev, kexec, module loading, mount/unshare/setns after
//      setup, bpf, perf_event_open, keyctl, personality changes, userfaultfd, ... (the list is
//      sandbox_denied_syscalls()). clone3 gets ENOSYS so threads are made by clone, whose
//      namespace flags the filter can inspect. The filter is synchronised to every thread.
// Steps that the machine refuses (no namespaces allowed) are skipped and reported, never fatal;
// no_new_privs and the seccomp filter are required and throw alem::Error when they fail.
//
// Call it after MPI has started (Open MPI's session files live under the host's /tmp) and after
// the model store is open, before the HTTP server and the engine start their threads.
#pragma once

#include <string>
#include <vector>

namespace alem::confidential {

struct SandboxOptions {
  bool namespaces = true;   // mount + IPC namespaces
  bool private_tmp = true;  // a tmpfs on /tmp (needs the mount namespace)
  int tmp_size_mb = 256;    // size cap of that tmpfs
  bool seccomp = true;      // the deny-list filter
};

struct SandboxReport {
  bool no_new_privs = false;
  bool user_namespace = false;  // a user namespace had to be made for the others
  bool mount_namespace = false;
  bool ipc_namespace = false;
  bool private_tmp = false;
  int denied_syscalls = 0;           // rules installed (calls known on this architecture)
  std::vector<std::string> skipped;  // steps not applied, each with its reason
};

// Applies the sandbox to this process (see above) and logs one "sandbox" line.
SandboxReport enter_sandbox(const SandboxOptions& options = {});

// The system calls the filter answers with EPERM (names as libseccomp knows them).
const std::vector<std::string>& sandbox_denied_syscalls();

}  // namespace alem::confidential
