// `alem cvm render` (confidential/cvm_launch.h): the rendered launch script, parsed back by an
// independent shell-word parser (Python's shlex), carries every QEMU option a TDX guest needs;
// the image hash is checked against SHA-256 of the measurements computed here; bad node specs,
// manifests and resources are refused with the reason; the Slurm prolog/epilog pass `bash -n`
// (and shellcheck when installed), and the prolog's dry run renders through the real command.
#include <gtest/gtest.h>
#include <openssl/sha.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "confidential/cvm_launch.h"
#include "core/error.h"
#include "test_env.h"

namespace alem::confidential {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string hex_of(const std::vector<uint8_t>& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (uint8_t b : bytes) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

// Runs a shell command, returns its stdout; `status` gets the exit status.
std::string run(const std::string& command, int* status = nullptr) {
  FILE* p = popen(command.c_str(), "r");
  std::string out;
  char buf[4096];
  for (size_t n; p && (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int rc = p ? pclose(p) : -1;
  if (status) *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  return out;
}

// Reads a script's `exec` command the way sh does: line continuations removed, then POSIX
// shell words (Python's shlex), printed as a JSON array without the leading "exec".
constexpr const char* kShlexScript =
    R"PY(python3 -c 'import json,shlex,sys; t=open(sys.argv[1]).read().replace("\\\n", ""); )PY"
    R"PY(print(json.dumps(shlex.split(t[t.index("exec "):], comments=True)[1:]))' )PY";

std::string repo_root() {
  return fs::absolute(fs::path(test::data_dir()) / ".." / "..").lexically_normal().string();
}

class CvmRender : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("alem-cvm-test-" + std::to_string(getpid()));
    fs::create_directories(dir_ / "image");
    for (const char* f : {"OVMF.tdx.fd", "vmlinuz", "initrd.img", "rootfs.img"}) {
      std::ofstream(dir_ / "image" / f) << "x";
    }
    // Measurements and their image hash, computed here from the documented formula.
    std::vector<uint8_t> all;
    for (int r = 0; r < 8; ++r) {
      std::vector<uint8_t> reg(48, static_cast<uint8_t>(r == 1 || r == 2 || r == 3 ? 0 : 0x10 + r));
      regs_.push_back(hex_of(reg));
      all.insert(all.end(), reg.begin(), reg.end());
    }
    all.resize(all.size() + 64, 0);
    std::vector<uint8_t> digest(32);
    SHA256(all.data(), all.size(), digest.data());
    image_hash_ = hex_of(digest);
    manifest_ = {{"name", "test-image"},
                 {"firmware", "OVMF.tdx.fd"},
                 {"kernel", "vmlinuz"},
                 {"initrd", "initrd.img"},
                 {"cmdline", "console=ttyS0 root=/dev/vda ro quote='x y'"},
                 {"disk", "rootfs.img"},
                 {"measurements",
                  {{"mrtd", regs_[0]},
                   {"mrconfigid", regs_[1]},
                   {"mrowner", regs_[2]},
                   {"mrownerconfig", regs_[3]},
                   {"rtmr0", regs_[4]},
                   {"rtmr1", regs_[5]},
                   {"rtmr2", regs_[6]},
                   {"rtmr3", regs_[7]}}},
                 {"image_hash", image_hash_}};
    spec_ = {{"network", {{"mode", "tap"}, {"bridge", "br-alem"}}},
             {"nodes",
              {{{"name", "node001"}, {"vsock_cid", 10}, {"mac", "52:54:00:a1:00:01"}},
               {{"name", "node002"}}}}};
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const json& j) {
    const fs::path p = dir_ / name;
    std::ofstream(p) << j.dump(2);
    return p.string();
  }
  CvmImage image() { return parse_cvm_image(manifest_.dump(), (dir_ / "image").string()); }

  fs::path dir_;
  std::vector<std::string> regs_;
  std::string image_hash_;
  json manifest_, spec_;
};

// The value following `option` in argv (every occurrence).
std::vector<std::string> values_of(const std::vector<std::string>& argv,
                                   const std::string& option) {
  std::vector<std::string> out;
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == option) out.push_back(argv[i + 1]);
  }
  return out;
}

bool any_contains(const std::vector<std::string>& values, const std::string& needle) {
  for (const auto& v : values) {
    if (v.find(needle) != std::string::npos) return true;
  }
  return false;
}

TEST_F(CvmRender, ScriptParsesToEveryRequiredQemuOption) {
  const CvmNodeSpec spec = parse_cvm_node_spec(spec_.dump());
  const CvmImage img = image();
  EXPECT_EQ(img.image_hash_hex, image_hash_);
  const fs::path out = dir_ / "out";
  const auto written = write_cvm_launch_files(spec, img, {"64G", 16}, out.string());
  ASSERT_TRUE(fs::exists(out / "node001.qemu.sh"));
  ASSERT_TRUE(fs::exists(out / "node002.qemu.sh"));
  EXPECT_EQ(written.size(), 1u + 2u * 3u);

  // Independent parse: Python's shlex splits the script's exec line into words.
  const std::string script = (out / "node001.qemu.sh").string();
  int status = 0;
  const std::string parsed = run(std::string(kShlexScript) + script, &status);
  ASSERT_EQ(status, 0) << parsed;
  const std::vector<std::string> argv = json::parse(parsed).get<std::vector<std::string>>();
  ASSERT_FALSE(argv.empty());
  EXPECT_EQ(argv[0], "qemu-system-x86_64");
  const json launch = json::parse(std::ifstream(out / "node001.launch.json"));
  EXPECT_EQ(launch.at("argv").get<std::vector<std::string>>(), argv);
  EXPECT_EQ(launch.at("image_hash"), image_hash_);

  EXPECT_EQ(values_of(argv, "-accel"), std::vector<std::string>{"kvm"});
  EXPECT_EQ(values_of(argv, "-smp"), std::vector<std::string>{"16"});
  EXPECT_EQ(values_of(argv, "-m"), std::vector<std::string>{"64G"});
  // The TD object, as JSON QOM.
  bool tdx = false;
  for (const std::string& o : values_of(argv, "-object")) {
    if (o.empty() || o[0] != '{') continue;
    const json obj = json::parse(o);
    if (obj.at("qom-type") == "tdx-guest") {
      tdx = obj.at("id") == "tdx0" && obj.at("quote-generation-socket").at("type") == "vsock";
    }
  }
  EXPECT_TRUE(tdx) << "no tdx-guest object";
  EXPECT_TRUE(any_contains(values_of(argv, "-object"), "memory-backend-memfd,id=ram0,size=64G"));
  EXPECT_TRUE(any_contains(values_of(argv, "-object"), "private=on"));
  const auto machine = values_of(argv, "-machine");
  ASSERT_EQ(machine.size(), 1u);
  for (const char* part :
       {"q35", "kernel-irqchip=split", "confidential-guest-support=tdx0", "memory-backend=ram0"}) {
    EXPECT_NE(machine[0].find(part), std::string::npos) << part;
  }
  EXPECT_EQ(values_of(argv, "-bios"),
            std::vector<std::string>{(dir_ / "image" / "OVMF.tdx.fd").string()});
  EXPECT_EQ(values_of(argv, "-kernel"),
            std::vector<std::string>{(dir_ / "image" / "vmlinuz").string()});
  EXPECT_EQ(values_of(argv, "-append"),
            std::vector<std::string>{"console=ttyS0 root=/dev/vda ro quote='x y'"});
  EXPECT_TRUE(any_contains(values_of(argv, "-drive"), "readonly=on"));
  EXPECT_TRUE(any_contains(values_of(argv, "-device"), "vhost-vsock-pci,guest-cid=10"));
  EXPECT_TRUE(any_contains(values_of(argv, "-device"), "mac=52:54:00:a1:00:01"));
  EXPECT_TRUE(any_contains(values_of(argv, "-netdev"), "tap,id=net0,ifname=alem0"));
  EXPECT_EQ(
      values_of(argv, "-pidfile"),
      std::vector<std::string>{fs::absolute(out).lexically_normal().string() + "/node001.pid"});
  EXPECT_NE(std::find(argv.begin(), argv.end(), "-daemonize"), argv.end());

  // Node 2 got derived settings: the next CID and a 52:54:00 MAC of its own.
  const json launch2 = json::parse(std::ifstream(out / "node002.launch.json"));
  EXPECT_EQ(launch2.at("vsock_cid"), 4);  // 3 + index 1
  EXPECT_EQ(launch2.at("mac").get<std::string>().rfind("52:54:00:", 0), 0u);
  const json expected = json::parse(std::ifstream(out / "expected-measurements.json"));
  EXPECT_EQ(expected.at("image_hash"), image_hash_);
  EXPECT_EQ(expected.at("measurements").at("rtmr0"), regs_[4]);
}

TEST_F(CvmRender, OnlyTheNamedNode) {
  const CvmNodeSpec spec = parse_cvm_node_spec(spec_.dump());
  const fs::path out = dir_ / "one";
  write_cvm_launch_files(spec, image(), {"8G", 2}, out.string(), "node002");
  EXPECT_TRUE(fs::exists(out / "node002.qemu.sh"));
  EXPECT_FALSE(fs::exists(out / "node001.qemu.sh"));
  try {
    write_cvm_launch_files(spec, image(), {"8G", 2}, out.string(), "node999");
    ADD_FAILURE() << "an unknown node was rendered";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("node999 is not in the node spec"), std::string::npos);
  }
}

void expect_refused(const std::function<void()>& f, const std::string& reason) {
  try {
    f();
    ADD_FAILURE() << "accepted; expected a refusal with: " << reason;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(reason), std::string::npos)
        << "reason \"" << e.what() << "\" lacks \"" << reason << "\"";
  }
}

TEST_F(CvmRender, BadNodeSpecsAreRefusedWithTheReason) {
  auto spec_with = [&](const std::function<void(json&)>& edit) {
    json s = spec_;
    edit(s);
    return s.dump();
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json", "not valid JSON"},
      {"[]", "top level must be a JSON object"},
      {spec_with([](json& s) { s["nodes"] = json::array(); }), "\"nodes\" must be a non-empty"},
      {spec_with([](json& s) { s["nodes"][1]["name"] = "node001"; }), "appears twice"},
      {spec_with([](json& s) { s["nodes"][0]["name"] = "bad name;rm"; }), "must be 1-63 of"},
      {spec_with([](json& s) { s["nodes"][0]["vsock_cid"] = 2; }), "vsock_cid 2 is reserved"},
      {spec_with([](json& s) { s["nodes"][0]["vsock_cid"] = -5; }), "non-negative integer"},
      {spec_with([](json& s) { s["nodes"][1]["vsock_cid"] = 10; }), "vsock_cid 10 appears twice"},
      {spec_with([](json& s) { s["nodes"][0]["mac"] = "01:00:5e:00:00:01"; }), "unicast"},
      {spec_with([](json& s) { s["nodes"][0]["mac"] = "52:54:00:zz:00:01"; }), "unicast"},
      {spec_with([](json& s) { s["nodes"][0]["tap"] = "a-very-long-tap-name"; }), "1-15 character"},
      {spec_with([](json& s) { s["nodes"][0]["cpus"] = 4; }), "unknown key \"cpus\""},
      {spec_with([](json& s) { s["network"]["mode"] = "bridge"; }), "\"tap\" or \"user\""},
      {spec_with([](json& s) { s["network"]["bridge"] = "br;x"; }), "not a valid interface"},
  };
  for (const auto& [text, reason] : cases) {
    SCOPED_TRACE(text);
    expect_refused([&] { parse_cvm_node_spec(text); }, reason);
  }
}

TEST_F(CvmRender, BadManifestsAreRefusedWithTheReason) {
  const std::string base = (dir_ / "image").string();
  auto with = [&](const std::function<void(json&)>& edit) {
    json m = manifest_;
    edit(m);
    return m.dump();
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {with([](json& m) { m["image_hash"] = std::string(64, '0'); }),
       "does not match the measurements"},
      {with([](json& m) { m["measurements"]["rtmr1"] = std::string(95, 'a'); }),
       "must be 96 hex digits"},
      {with([](json& m) { m["measurements"]["mrtd"] = std::string(96, 'g'); }), "is not hex"},
      {with([](json& m) { m["measurements"].erase("rtmr3"); }), "\"rtmr3\" is required"},
      {with([](json& m) { m.erase("measurements"); }), "\"measurements\""},
      {with([](json& m) { m["kernel"] = "missing-kernel"; }), "does not exist"},
      {with([](json& m) {
         m.erase("kernel");
         m.erase("disk");
       }),
       "give a kernel"},
      {with([](json& m) { m["cmdline"] = "a\nb"; }), "one line"},
      {with([](json& m) { m["disk_format"] = "vmdk"; }), "disk_format"},
      {with([](json& m) { m["extra"] = 1; }), "unknown key \"extra\""},
  };
  for (const auto& [text, reason] : cases) {
    SCOPED_TRACE(reason);
    expect_refused([&] { parse_cvm_image(text, base); }, reason);
  }
  // Rendering for another host: files need not exist here when asked so.
  json m = manifest_;
  m["kernel"] = "/elsewhere/vmlinuz";
  EXPECT_EQ(parse_cvm_image(m.dump(), base, /*check_files=*/false).kernel, "/elsewhere/vmlinuz");
}

TEST_F(CvmRender, BadResourcesAreRefused) {
  const CvmNodeSpec spec = parse_cvm_node_spec(spec_.dump());
  const CvmImage img = image();
  expect_refused(
      [&] {
        render_cvm_qemu_args(spec, spec.nodes[0], img, {"64", 4}, "/run");
      },
      "must be a size like");
  expect_refused(
      [&] {
        render_cvm_qemu_args(spec, spec.nodes[0], img, {"0G", 4}, "/run");
      },
      "must be a size like");
  expect_refused(
      [&] {
        render_cvm_qemu_args(spec, spec.nodes[0], img, {"8G", 0}, "/run");
      },
      "--cpus must be between 1 and 1024");
}

TEST_F(CvmRender, ShellQuotingSurvivesAnyWord) {
  const std::vector<std::string> words = {"plain", "two words", "it's", "$HOME", "a\"b", "", "`x`"};
  const fs::path f = dir_ / "words.sh";
  std::ofstream(f) << "exec " << shell_quote_args(words) << "\n";
  int status = 0;
  const std::string parsed = run(std::string(kShlexScript) + f.string(), &status);
  ASSERT_EQ(status, 0) << parsed;
  EXPECT_EQ(json::parse(parsed).get<std::vector<std::string>>(), words);
}

TEST(CvmScripts, PrologAndEpilogPassShellChecks) {
  const std::string dir = repo_root() + "/slurm/cvm";
  for (const char* script : {"prolog.sh", "epilog.sh"}) {
    int status = 0;
    const std::string out = run("bash -n " + dir + "/" + script + " 2>&1", &status);
    EXPECT_EQ(status, 0) << script << ": " << out;
    if (run("command -v shellcheck").empty()) continue;
    const std::string lint = run("shellcheck " + dir + "/" + script + " 2>&1", &status);
    EXPECT_EQ(status, 0) << script << ": " << lint;
  }
}

TEST(CvmScripts, PrologDryRunRendersThisNode) {
  const char* alem = std::getenv("ALEM_BINARY");
  if (!alem) GTEST_SKIP() << "ALEM_BINARY not set (ctest sets it)";
  const fs::path dir = fs::temp_directory_path() / ("alem-cvm-prolog-" + std::to_string(getpid()));
  const std::string root = repo_root();
  fs::create_directories(dir);
  // The shipped examples, with stand-in image files next to a copy of the manifest.
  for (const char* f : {"OVMF.tdx.fd", "vmlinuz", "initrd.img", "rootfs.img"}) {
    std::ofstream(dir / f) << "x";
  }
  fs::copy_file(root + "/slurm/cvm/image-manifest.example.json", dir / "image.json");
  std::ofstream(dir / "cvm.env") << "ALEM_CVM_NODE_SPEC=" << root
                                 << "/slurm/cvm/node-spec.example.json\nALEM_CVM_IMAGE="
                                 << dir.string()
                                 << "/image.json\nALEM_CVM_MEM=16G\nALEM_CVM_RUN_DIR="
                                 << dir.string() << "/run\nALEM_BIN=" << alem << "\n";
  const std::string env = "ALEM_CVM_CONFIG=" + (dir / "cvm.env").string() +
                          " ALEM_CVM_DRY_RUN=1 SLURM_JOB_ID=4242 SLURMD_NODENAME=node002 "
                          "SLURM_CPUS_ON_NODE=8 SLURM_JOB_CONSTRAINTS=gpu,alem-cvm ";
  int status = 0;
  const std::string out = run(env + "bash " + root + "/slurm/cvm/prolog.sh 2>&1", &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_TRUE(fs::exists(dir / "run" / "4242" / "node002.qemu.sh")) << out;
  EXPECT_FALSE(fs::exists(dir / "run" / "4242" / "node001.qemu.sh"));
  // A job without the constraint is left alone.
  const std::string other = "ALEM_CVM_CONFIG=" + (dir / "cvm.env").string() +
                            " SLURM_JOB_ID=4243 SLURMD_NODENAME=node002 SLURM_JOB_CONSTRAINTS=gpu ";
  run(other + "bash " + root + "/slurm/cvm/prolog.sh 2>&1", &status);
  EXPECT_EQ(status, 0);
  EXPECT_FALSE(fs::exists(dir / "run" / "4243"));
  // The epilog removes the job's run folder (the guest was never started in a dry run).
  const std::string epi = run(env + "bash " + root + "/slurm/cvm/epilog.sh 2>&1", &status);
  EXPECT_EQ(status, 0) << epi;
  EXPECT_FALSE(fs::exists(dir / "run" / "4242"));
  // A bad request through the real command fails the prolog with the reason.
  std::ofstream(dir / "cvm.env", std::ios::app) << "ALEM_CVM_MEM=lots\n";
  const std::string bad = run(env + "bash " + root + "/slurm/cvm/prolog.sh 2>&1", &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(bad.find("must be a size like"), std::string::npos) << bad;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace alem::confidential
