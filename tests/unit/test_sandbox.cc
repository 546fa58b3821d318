// `sandbox` mode (confidential/sandbox.h), applied in forked children so the test process stays
// as it was: each call on the deny list fails with EPERM, ordinary work still runs (threads,
// files, TCP on 127.0.0.1, memory), /tmp is a private tmpfs that neither side sees into, and
// no_new_privs and the seccomp mode are what the kernel reports in /proc/self/status.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/perf_event.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "confidential/sandbox.h"

namespace alem::confidential {
namespace {

// Runs `body` in a forked child. The child writes a failure text to a pipe (empty: success).
template <typename F>
std::string run_in_child(F body) {
  int fds[2];
  if (pipe(fds) != 0) return "pipe failed";
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    std::string failure;
    try {
      failure = body();
    } catch (const std::exception& e) {
      failure = std::string("threw: ") + e.what();
    }
    if (!failure.empty()) (void)!write(fds[1], failure.data(), failure.size());
    close(fds[1]);
    _exit(failure.empty() ? 0 : 1);
  }
  close(fds[1]);
  std::string out;
  char buf[512];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status)) return "child died with signal " + std::to_string(WTERMSIG(status));
  if (WEXITSTATUS(status) != 0 && out.empty()) return "child exited with an error";
  return out;
}

// "<call>: <expectation>" when `rc`/errno is not the EPERM failure of a denied call.
std::string expect_eperm(const char* call, long rc) {
  if (rc == -1 && errno == EPERM) return "";
  return std::string(call) + ": expected EPERM, got rc " + std::to_string(rc) + " (" +
         std::strerror(errno) + ")\n";
}

std::string status_field(const std::string& name) {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind(name + ":", 0) == 0) {
      const size_t v = line.find_first_not_of(" \t", name.size() + 1);
      return v == std::string::npos ? "" : line.substr(v);
    }
  }
  return "";
}

TEST(Sandbox, DeniedCallsFailWithEperm) {
  const std::string failure = run_in_child([] {
    const SandboxReport report = enter_sandbox();
    std::string f;
    if (!report.no_new_privs) f += "no_new_privs not set\n";
    if (report.denied_syscalls < 30) f += "too few seccomp rules\n";
    f += expect_eperm("ptrace", ptrace(PTRACE_TRACEME, 0, nullptr, nullptr));
    char local[8] = {}, remote[8] = "secret";
    iovec l{local, sizeof local}, r{remote, sizeof remote};
    f += expect_eperm("process_vm_readv", process_vm_readv(getpid(), &l, 1, &r, 1, 0));
    f += expect_eperm("process_vm_writev", process_vm_writev(getpid(), &l, 1, &r, 1, 0));
    f += expect_eperm("kexec_load", syscall(SYS_kexec_load, 0, 0, nullptr, 0));
    f += expect_eperm("init_module", syscall(SYS_init_module, nullptr, 0, ""));
    f += expect_eperm("finit_module", syscall(SYS_finit_module, -1, "", 0));
    f += expect_eperm("delete_module", syscall(SYS_delete_module, "x", 0));
    f += expect_eperm("bpf", syscall(SYS_bpf, 0, nullptr, 0));
    perf_event_attr attr{};
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_CPU_CLOCK;
    f += expect_eperm("perf_event_open", syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
    f += expect_eperm("keyctl", syscall(SYS_keyctl, 0, 0, 0, 0, 0));
    f += expect_eperm("add_key", syscall(SYS_add_key, "user", "k", "v", 1, 0));
    f += expect_eperm("personality(PER_LINUX32)", personality(PER_LINUX32));
    if (personality(0xffffffff) == -1) f += "personality query was refused\n";
    f += expect_eperm("userfaultfd", syscall(SYS_userfaultfd, 0));
    f += expect_eperm("mount", mount("none", "/mnt", "tmpfs", 0, nullptr));
    f += expect_eperm("umount2", umount2("/tmp", MNT_DETACH));
    f += expect_eperm("unshare", unshare(CLONE_NEWNS));
    f += expect_eperm("setns", setns(-1, 0));
    f += expect_eperm("chroot", chroot("/"));
    f += expect_eperm("swapoff", syscall(SYS_swapoff, "/nonexistent"));
    const long cloned = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, nullptr, nullptr, nullptr, 0);
    if (cloned == 0) _exit(0);  // only if the filter let it through: the copy ends at once
    f += expect_eperm("clone(CLONE_NEWUSER)", cloned);
    f += expect_eperm("io_uring_setup", syscall(SYS_io_uring_setup, 1, nullptr));
    return f;
  });
  EXPECT_EQ(failure, "");
}

// Control: without the sandbox the same calls succeed here, so the EPERMs above come from it.
TEST(Sandbox, WithoutItTheCallsWork) {
  const std::string failure = run_in_child([] {
    std::string f;
    char local[8] = {}, remote[8] = "secret";
    iovec l{local, sizeof local}, r{remote, sizeof remote};
    if (process_vm_readv(getpid(), &l, 1, &r, 1, 0) != 8) f += "process_vm_readv failed\n";
    if (personality(PER_LINUX32) == -1) f += "personality failed\n";
    personality(PER_LINUX);
    if (status_field("Seccomp") != "0") f += "the test process already has a filter\n";
    return f;
  });
  EXPECT_EQ(failure, "");
}

TEST(Sandbox, OrdinaryWorkStillRuns) {
  const std::string failure = run_in_child([] {
    // A listening socket made before the sandbox, like the HTTP API's.
    const int server = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (server < 0 || bind(server, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        listen(server, 4) != 0 || getsockname(server, reinterpret_cast<sockaddr*>(&addr), &len)) {
      return std::string("cannot listen on 127.0.0.1");
    }
    enter_sandbox();
    std::string f;
    // Threads (clone3 answers ENOSYS, libc falls back to clone).
    std::atomic<int> sum{0};
    std::thread workers[4];
    for (int i = 0; i < 4; ++i) workers[i] = std::thread([&sum, i] { sum += i + 1; });
    for (auto& w : workers) w.join();
    if (sum != 10) f += "threads did not run\n";
    // TCP on loopback, both ends.
    const int client = socket(AF_INET, SOCK_STREAM, 0);
    if (client < 0 || connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      f += std::string("connect: ") + std::strerror(errno) + "\n";
    } else {
      const int peer = accept(server, nullptr, nullptr);
      const char msg[] = "ping";
      char got[8] = {};
      if (peer < 0 || write(client, msg, 4) != 4 || read(peer, got, 4) != 4 ||
          std::string(got) != "ping") {
        f += "loopback exchange failed\n";
      }
      if (peer >= 0) close(peer);
    }
    // Memory: mmap, mlock where allowed, madvise.
    void* p = mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || madvise(p, 1 << 20, MADV_DONTDUMP) != 0) f += "mmap/madvise failed\n";
    std::memset(p, 1, 1 << 20);
    munmap(p, 1 << 20);
    // Files in /tmp (the private one) and reading /proc.
    {
      std::ofstream out("/tmp/alem-sandbox-scratch");
      out << "ok";
    }
    std::ifstream in("/tmp/alem-sandbox-scratch");
    std::string text;
    in >> text;
    if (text != "ok") f += "cannot use /tmp\n";
    if (status_field("NoNewPrivs") != "1")
      f += "NoNewPrivs is " + status_field("NoNewPrivs") + "\n";
    if (status_field("Seccomp") != "2") f += "Seccomp mode is " + status_field("Seccomp") + "\n";
    // Forking a plain child (no namespace flags) still works.
    const pid_t child = fork();
    if (child == 0) _exit(7);
    int status = 0;
    if (child < 0 || waitpid(child, &status, 0) != child || WEXITSTATUS(status) != 7) {
      f += "fork failed\n";
    }
    return f;
  });
  EXPECT_EQ(failure, "");
}

TEST(Sandbox, PrivateTmpIsolatesBothWays) {
  const std::string host_file = "/tmp/alem-sandbox-host-" + std::to_string(getpid());
  const std::string inner_file = "/tmp/alem-sandbox-inner-" + std::to_string(getpid());
  { std::ofstream(host_file) << "host"; }
  bool private_tmp = true;
  const std::string failure = run_in_child([&] {
    const SandboxReport report = enter_sandbox();
    if (!report.private_tmp) return std::string("SKIP");
    std::string f;
    if (std::filesystem::exists(host_file)) f += "the host's /tmp file is visible inside\n";
    std::ofstream(inner_file) << "inner";
    if (!std::filesystem::exists(inner_file)) f += "cannot write the private /tmp\n";
    return f;
  });
  if (failure == "SKIP") private_tmp = false;
  EXPECT_TRUE(std::filesystem::exists(host_file));
  std::filesystem::remove(host_file);
  if (!private_tmp) GTEST_SKIP() << "this machine allows no mount namespace";
  EXPECT_EQ(failure, "");
  EXPECT_FALSE(std::filesystem::exists(inner_file)) << "the sandbox's /tmp leaked to the host";
}

TEST(Sandbox, StepsCanBeTurnedOff) {
  const std::string failure = run_in_child([] {
    SandboxOptions o;
    o.namespaces = false;
    o.seccomp = false;
    const SandboxReport r = enter_sandbox(o);
    std::string f;
    if (r.mount_namespace || r.private_tmp || r.denied_syscalls != 0) f += "steps ran anyway\n";
    if (r.skipped.size() != 2) f += "skipped steps are not reported\n";
    if (status_field("Seccomp") != "0") f += "a filter was installed\n";
    if (!r.no_new_privs) f += "no_new_privs is always set\n";
    return f;
  });
  EXPECT_EQ(failure, "");
}

TEST(Sandbox, DenyListNamesKnownCalls) {
  const auto& names = sandbox_denied_syscalls();
  for (const char* must :
       {"ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "init_module", "bpf",
        "perf_event_open", "keyctl", "personality", "userfaultfd", "mount", "unshare", "setns"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), must), names.end()) << must;
  }
}

}  // namespace
}  // namespace alem::confidential
