// Implements enter_sandbox() (sandbox.h) with prctl, unshare, mount and libseccomp.
#include "confidential/sandbox.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>

#include "core/error.h"
#include "core/log.h"

namespace alem::confidential {
namespace {

std::string errno_text(int err) {
  return std::strerror(err);
}

int thread_count() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

bool write_file(const char* path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  f.flush();
  return f.good();
}

// Mount + IPC namespaces; a user namespace first when the process lacks CAP_SYS_ADMIN.
void enter_namespaces(const SandboxOptions& o, SandboxReport& r) {
  const int flags = CLONE_NEWNS | CLONE_NEWIPC;
  if (unshare(flags) != 0) {
    const int direct_err = errno;
    if (thread_count() != 1) {
      r.skipped.push_back("namespaces: unshare refused (" + errno_text(direct_err) +
                          ") and a user namespace needs a single-threaded process");
      return;
    }
    const uid_t uid = geteuid();
    const gid_t gid = getegid();
    if (unshare(CLONE_NEWUSER | flags) != 0) {
      r.skipped.push_back("namespaces: unshare refused (" + errno_text(direct_err) +
                          "), also inside a user namespace (" + errno_text(errno) + ")");
      return;
    }
    r.user_namespace = true;
    // Keep the same ids inside, so files keep their owners.
    write_file("/proc/self/setgroups", "deny");
    if (!write_file("/proc/self/uid_map", std::to_string(uid) + " " + std::to_string(uid) + " 1") ||
        !write_file("/proc/self/gid_map", std::to_string(gid) + " " + std::to_string(gid) + " 1")) {
      r.skipped.push_back("user namespace: could not write the id maps");
    }
  }
  r.mount_namespace = true;
  r.ipc_namespace = true;
  // Nothing mounted here propagates back to the host.
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    r.skipped.push_back("private tmp: cannot make / a private mount (" + errno_text(errno) + ")");
    return;
  }
  if (!o.private_tmp) return;
  const std::string data = "mode=1777,size=" + std::to_string(o.tmp_size_mb) + "m";
  if (mount("alem-tmp", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, data.c_str()) != 0) {
    r.skipped.push_back("private tmp: mounting a tmpfs on /tmp failed (" + errno_text(errno) + ")");
    return;
  }
  r.private_tmp = true;
}

struct SeccompDeleter {
  void operator()(void* ctx) const { seccomp_release(ctx); }
};

int install_seccomp() {
  std::unique_ptr<void, SeccompDeleter> ctx(seccomp_init(SCMP_ACT_ALLOW));
  ALEM_CHECK(ctx != nullptr, "seccomp_init failed");
  int rules = 0;
  auto add = [&](const std::string& name, uint32_t action, unsigned count,
                 const scmp_arg_cmp* args) {
    const int nr = seccomp_syscall_resolve_name(name.c_str());
    if (nr == __NR_SCMP_ERROR) return;  // not a call on this architecture
    const int rc = seccomp_rule_add_array(ctx.get(), action, nr, count, args);
    ALEM_CHECK(rc == 0, "seccomp: cannot add the rule for " + name + ": " + errno_text(-rc));
    ++rules;
  };
  for (const std::string& name : sandbox_denied_syscalls()) {
    if (name == "personality") {
      // Reading the persona (0xffffffff) stays allowed; changing it does not.
      const scmp_arg_cmp query = SCMP_A0(SCMP_CMP_NE, 0xffffffffu);
      add(name, SCMP_ACT_ERRNO(EPERM), 1, &query);
    } else {
      add(name, SCMP_ACT_ERRNO(EPERM), 0, nullptr);
    }
  }
  // clone3 passes its flags in memory the filter cannot read: ENOSYS makes libc fall back to
  // clone, whose namespace flags are checked below.
  add("clone3", SCMP_ACT_ERRNO(ENOSYS), 0, nullptr);
  const uint64_t ns_flags = CLONE_NEWNS | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET |
                            CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP;
  for (uint64_t f = 1; f != 0 && f <= ns_flags; f <<= 1) {
    if ((ns_flags & f) == 0) continue;
    const scmp_arg_cmp has_flag = SCMP_A0(SCMP_CMP_MASKED_EQ, f, f);
    add("clone", SCMP_ACT_ERRNO(EPERM), 1, &has_flag);
  }
  ALEM_CHECK(seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_TSYNC, 1) == 0,
             "seccomp: cannot ask for thread synchronisation");
  const int rc = seccomp_load(ctx.get());
  ALEM_CHECK(rc == 0, "seccomp: loading the filter failed: " + errno_text(-rc));
  return rules;
}

}  // namespace

const std::vector<std::string>& sandbox_denied_syscalls() {
  static const std::vector<std::string> names = {
      // reading or changing other processes
      "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
      // the kernel itself
      "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "bpf",
      "perf_event_open", "iopl", "ioperm", "reboot", "swapon", "swapoff", "syslog", "acct",
      "lookup_dcookie", "quotactl", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
      // file-system and namespace changes after setup
      "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount",
      "fsconfig", "fspick", "mount_setattr", "unshare", "setns", "open_by_handle_at",
      "name_to_handle_at", "fanotify_init", "vhangup",
      // kernel key rings, personas, user-space page faults, io_uring
      "keyctl", "add_key", "request_key", "personality", "userfaultfd", "io_uring_setup",
      "io_uring_enter", "io_uring_register"};
  return names;
}

SandboxReport enter_sandbox(const SandboxOptions& options) {
  SandboxReport r;
  ALEM_CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0,
             "sandbox: prctl(PR_SET_NO_NEW_PRIVS) failed: " + errno_text(errno));
  r.no_new_privs = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1;
  if (options.namespaces) {
    enter_namespaces(options, r);
  } else {
    r.skipped.push_back("namespaces: turned off");
  }
  if (options.seccomp) {
    r.denied_syscalls = install_seccomp();
  } else {
    r.skipped.push_back("seccomp: turned off");
  }
  LogFields fields{{"no_new_privs", r.no_new_privs ? "1" : "0"},
                   {"user_ns", r.user_namespace ? "1" : "0"},
                   {"mount_ns", r.mount_namespace ? "1" : "0"},
                   {"ipc_ns", r.ipc_namespace ? "1" : "0"},
                   {"private_tmp", r.private_tmp ? "1" : "0"},
                   {"seccomp_rules", std::to_string(r.denied_syscalls)}};
  std::string skipped;
  for (const std::string& s : r.skipped) skipped += (skipped.empty() ? "" : "; ") + s;
  if (!skipped.empty()) fields.emplace_back("skipped", skipped);
  if (skipped.empty()) {
    log_info("sandbox", fields);
  } else {
    log_warn("sandbox: some steps were skipped", fields);
  }
  return r;
}

}  // namespace alem::confidential
