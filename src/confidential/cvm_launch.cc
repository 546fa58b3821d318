// Implements the confidential-VM launch rendering of cvm_launch.h: JSON parsing
// and validation with nlohmann::json, the QEMU argument vector, and the files
// slurm/cvm/prolog.sh runs.
#include "confidential/cvm_launch.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/json_input.h"

namespace alem::confidential {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string read_text(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  ALEM_CHECK(f.good(), std::string("cannot read the ") + what + " " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json parse_json(const std::string& text, const char* what) {
  json j;
  try {
    j = parse_json_bounded(text);  // bounded depth; errors never quote the text
  } catch (const JsonInputError& e) {
    throw Error(std::string(what) + ": not valid JSON: " + e.what(), __FILE__, __LINE__);
  }
  ALEM_CHECK(j.is_object(), std::string(what) + ": the top level must be a JSON object");
  return j;
}

std::string get_string(const json& j, const std::string& key, const std::string& where,
                       bool required, const std::string& fallback = "") {
  if (!j.contains(key)) {
    ALEM_CHECK(!required, where + ": \"" + key + "\" is required");
    return fallback;
  }
  ALEM_CHECK(j.at(key).is_string(), where + ": \"" + key + "\" must be a string");
  return j.at(key).get<std::string>();
}

void check_known_keys(const json& j, const std::set<std::string>& known, const std::string& where) {
  for (const auto& [key, value] : j.items()) {
    ALEM_CHECK(known.count(key) != 0, where + ": unknown key \"" + key + "\"");
  }
}

bool valid_name(const std::string& s, size_t max_len) {
  static const std::regex re("[A-Za-z0-9][A-Za-z0-9._-]*");
  return !s.empty() && s.size() <= max_len && std::regex_match(s, re);
}

bool valid_mac(const std::string& s) {
  static const std::regex re("([0-9a-f]{2}:){5}[0-9a-f]{2}");
  if (!std::regex_match(s, re)) return false;
  const int first = std::stoi(s.substr(0, 2), nullptr, 16);
  return (first & 1) == 0;  // unicast
}

// 52:54:00 (QEMU's prefix) + three bytes of FNV-1a over the node name.
std::string derived_mac(const std::string& name) {
  uint32_t h = 2166136261u;
  for (unsigned char c : name) h = (h ^ c) * 16777619u;
  char buf[18];
  std::snprintf(buf, sizeof buf, "52:54:00:%02x:%02x:%02x", (h >> 16) & 0xff, (h >> 8) & 0xff,
                h & 0xff);
  return buf;
}

Measurement parse_measurement(const json& m, const std::string& key, bool required) {
  Measurement out{};
  if (!m.contains(key)) {
    ALEM_CHECK(!required, "image manifest: measurements.\"" + key + "\" is required");
    return out;
  }
  ALEM_CHECK(m.at(key).is_string(), "image manifest: measurements." + key + " must be a string");
  const std::string hex = m.at(key).get<std::string>();
  ALEM_CHECK(hex.size() == out.size() * 2,
             "image manifest: measurements." + key + " must be " + std::to_string(out.size() * 2) +
                 " hex digits (48 bytes), got " + std::to_string(hex.size()));
  for (size_t i = 0; i < out.size(); ++i) {
    const std::string byte = hex.substr(2 * i, 2);
    ALEM_CHECK(std::isxdigit(static_cast<unsigned char>(byte[0])) &&
                   std::isxdigit(static_cast<unsigned char>(byte[1])),
               "image manifest: measurements." + key + " is not hex");
    out[i] = static_cast<uint8_t>(std::stoi(byte, nullptr, 16));
  }
  return out;
}

std::string resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty()) return path;
  const fs::path p(path);
  return (p.is_absolute() ? p : fs::path(base_dir) / p).lexically_normal().string();
}

void write_file(const fs::path& path, const std::string& text, bool executable) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  ALEM_CHECK(f.good(), "cannot write " + path.string());
  f << text;
  f.close();
  ALEM_CHECK(f.good(), "writing " + path.string() + " failed");
  if (executable)
    fs::permissions(path, fs::perms::owner_exec | fs::perms::group_exec, fs::perm_options::add);
}

json measurements_json(const CvmImage& image) {
  const TdReportBody& m = image.measurements;
  json j;
  j["mrtd"] = to_lower_hex(m.mrtd);
  j["mrconfigid"] = to_lower_hex(m.mrconfigid);
  j["mrowner"] = to_lower_hex(m.mrowner);
  j["mrownerconfig"] = to_lower_hex(m.mrownerconfig);
  for (int i = 0; i < 4; ++i) j["rtmr" + std::to_string(i)] = to_lower_hex(m.rtmr[i]);
  return j;
}

}  // namespace

CvmNodeSpec parse_cvm_node_spec(const std::string& json_text) {
  const json j = parse_json(json_text, "node spec");
  check_known_keys(j, {"network", "nodes"}, "node spec");
  CvmNodeSpec spec;
  if (j.contains("network")) {
    const json& n = j.at("network");
    ALEM_CHECK(n.is_object(), "node spec: \"network\" must be an object");
    check_known_keys(n, {"mode", "bridge"}, "node spec network");
    spec.network_mode = get_string(n, "mode", "node spec network", false, "tap");
    spec.bridge = get_string(n, "bridge", "node spec network", false);
  }
  ALEM_CHECK(
      spec.network_mode == "tap" || spec.network_mode == "user",
      "node spec: network.mode must be \"tap\" or \"user\", got \"" + spec.network_mode + "\"");
  ALEM_CHECK(spec.bridge.empty() || valid_name(spec.bridge, 15),
             "node spec: network.bridge \"" + spec.bridge + "\" is not a valid interface name");
  ALEM_CHECK(j.contains("nodes") && j.at("nodes").is_array() && !j.at("nodes").empty(),
             "node spec: \"nodes\" must be a non-empty array");
  std::set<std::string> names, macs, taps;
  std::set<uint32_t> cids;
  for (size_t i = 0; i < j.at("nodes").size(); ++i) {
    const json& e = j.at("nodes")[i];
    const std::string where = "node spec: nodes[" + std::to_string(i) + "]";
    ALEM_CHECK(e.is_object(), where + " must be an object");
    check_known_keys(e, {"name", "vsock_cid", "mac", "tap"}, where);
    CvmNode node;
    node.name = get_string(e, "name", where, true);
    ALEM_CHECK(valid_name(node.name, 63),
               where + ": name \"" + node.name + "\" must be 1-63 of [A-Za-z0-9._-]");
    if (e.contains("vsock_cid")) {
      ALEM_CHECK(e.at("vsock_cid").is_number_unsigned(),
                 where + ": vsock_cid must be a non-negative integer");
      const uint64_t cid = e.at("vsock_cid").get<uint64_t>();
      // 0-2 are the hypervisor, local and host; 0xffffffff is "any".
      ALEM_CHECK(cid >= 3 && cid < 0xffffffffu,
                 where + ": vsock_cid " + std::to_string(cid) + " is reserved (use 3..2^32-2)");
      node.vsock_cid = static_cast<uint32_t>(cid);
    } else {
      node.vsock_cid = static_cast<uint32_t>(3 + i);
    }
    node.mac = get_string(e, "mac", where, false, derived_mac(node.name));
    ALEM_CHECK(valid_mac(node.mac), where + ": mac \"" + node.mac +
                                        "\" must be a unicast address like 52:54:00:12:34:56");
    node.tap = get_string(e, "tap", where, false, "alem" + std::to_string(i));
    ALEM_CHECK(valid_name(node.tap, 15),
               where + ": tap \"" + node.tap + "\" must be a 1-15 character interface name");
    ALEM_CHECK(names.insert(node.name).second,
               where + ": node name \"" + node.name + "\" appears twice");
    ALEM_CHECK(cids.insert(node.vsock_cid).second,
               where + ": vsock_cid " + std::to_string(node.vsock_cid) + " appears twice");
    ALEM_CHECK(macs.insert(node.mac).second, where + ": mac " + node.mac + " appears twice");
    spec.nodes.push_back(std::move(node));
  }
  return spec;
}

CvmNodeSpec load_cvm_node_spec(const std::string& path) {
  return parse_cvm_node_spec(read_text(path, "node spec"));
}

CvmImage parse_cvm_image(const std::string& json_text, const std::string& base_dir,
                         bool check_files) {
  const json j = parse_json(json_text, "image manifest");
  check_known_keys(j,
                   {"name", "firmware", "kernel", "initrd", "cmdline", "disk", "disk_format",
                    "measurements", "image_hash"},
                   "image manifest");
  CvmImage image;
  image.name = get_string(j, "name", "image manifest", true);
  image.firmware = resolve(base_dir, get_string(j, "firmware", "image manifest", true));
  image.kernel = resolve(base_dir, get_string(j, "kernel", "image manifest", false));
  image.initrd = resolve(base_dir, get_string(j, "initrd", "image manifest", false));
  image.cmdline = get_string(j, "cmdline", "image manifest", false);
  image.disk = resolve(base_dir, get_string(j, "disk", "image manifest", false));
  image.disk_format = get_string(j, "disk_format", "image manifest", false, "raw");
  ALEM_CHECK(image.disk_format == "raw" || image.disk_format == "qcow2",
             "image manifest: disk_format must be \"raw\" or \"qcow2\"");
  ALEM_CHECK(!image.kernel.empty() || !image.disk.empty(),
             "image manifest: give a kernel (direct boot) or a disk to boot from");
  ALEM_CHECK(!(image.initrd.size() || image.cmdline.size()) || !image.kernel.empty(),
             "image manifest: initrd and cmdline need a kernel");
  ALEM_CHECK(image.cmdline.find('\n') == std::string::npos,
             "image manifest: cmdline must be one line");
  if (check_files) {
    for (const std::string* p : {&image.firmware, &image.kernel, &image.initrd, &image.disk}) {
      ALEM_CHECK(p->empty() || fs::is_regular_file(*p),
                 "image manifest: file " + *p + " does not exist");
    }
  }
  ALEM_CHECK(j.contains("measurements") && j.at("measurements").is_object(),
             "image manifest: \"measurements\" (the expected MRTD and RTMRs) "
             "is required");
  const json& m = j.at("measurements");
  check_known_keys(
      m, {"mrtd", "mrconfigid", "mrowner", "mrownerconfig", "rtmr0", "rtmr1", "rtmr2", "rtmr3"},
      "image manifest measurements");
  image.measurements.mrtd = parse_measurement(m, "mrtd", true);
  image.measurements.mrconfigid = parse_measurement(m, "mrconfigid", false);
  image.measurements.mrowner = parse_measurement(m, "mrowner", false);
  image.measurements.mrownerconfig = parse_measurement(m, "mrownerconfig", false);
  for (int i = 0; i < 4; ++i) {
    image.measurements.rtmr[i] = parse_measurement(m, "rtmr" + std::to_string(i), true);
  }
  const std::string computed = to_lower_hex(cocoon_image_hash(image.measurements));
  std::string given = get_string(j, "image_hash", "image manifest", true);
  for (char& c : given) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  ALEM_CHECK(given == computed, "image manifest: image_hash " + given +
                                    " does not match the measurements, whose image hash is " +
                                    computed);
  image.image_hash_hex = computed;
  return image;
}

CvmImage load_cvm_image(const std::string& path, bool check_files) {
  const std::string base = fs::absolute(fs::path(path)).parent_path().string();
  return parse_cvm_image(read_text(path, "image manifest"), base, check_files);
}

void validate_cvm_resources(const CvmResources& r) {
  static const std::regex mem("[1-9][0-9]*[MGT]");
  ALEM_CHECK(std::regex_match(r.memory, mem),
             "--mem \"" + r.memory + "\" must be a size like 4096M, 64G or 1T");
  ALEM_CHECK(r.cpus >= 1 && r.cpus <= 1024,
             "--cpus must be between 1 and 1024, got " + std::to_string(r.cpus));
}

std::vector<std::string> render_cvm_qemu_args(const CvmNodeSpec& spec, const CvmNode& node,
                                              const CvmImage& image, const CvmResources& res,
                                              const std::string& run_dir,
                                              const std::string& job_config) {
  validate_cvm_resources(res);
  ALEM_CHECK(job_config.find(',') == std::string::npos,
             "the job config path must not contain a comma (QEMU option syntax)");
  const std::string run = fs::path(run_dir).lexically_normal().string();
  std::vector<std::string> a = {"qemu-system-x86_64",
                                "-name",
                                "alem-" + node.name + ",process=alem-cvm-" + node.name,
                                "-accel",
                                "kvm",
                                "-cpu",
                                "host",
                                "-smp",
                                std::to_string(res.cpus),
                                "-m",
                                res.memory};
  // The TD: its quote requests go to the host's Quote Generation Service over
  // vsock (CID 2).
  a.insert(a.end(), {"-object",
                     R"({"qom-type":"tdx-guest","id":"tdx0","quote-generation-socket":)"
                     R"({"type":"vsock","cid":"2","port":"4050"}})",
                     "-object", "memory-backend-memfd,id=ram0,size=" + res.memory + ",private=on",
                     "-machine",
                     "q35,kernel-irqchip=split,confidential-guest-support=tdx0,memory-"
                     "backend=ram0,"
                     "hpet=off",
                     "-bios", image.firmware});
  if (!image.kernel.empty()) {
    a.insert(a.end(), {"-kernel", image.kernel});
    if (!image.initrd.empty()) a.insert(a.end(), {"-initrd", image.initrd});
    if (!image.cmdline.empty()) a.insert(a.end(), {"-append", image.cmdline});
  }
  if (!image.disk.empty()) {
    // Read-only: the root file system is measured (dm-verity in the image),
    // never written.
    a.insert(a.end(), {"-drive",
                       "file=" + image.disk + ",if=none,id=disk0,format=" + image.disk_format +
                           ",readonly=on",
                       "-device", "virtio-blk-pci,drive=disk0"});
  }
  if (!job_config.empty()) {
    // The job's settings (model, layout, ...) reach the guest through fw_cfg.
    // They are not measured at boot; each rank binds their digest into its
    // attestation instead.
    a.insert(a.end(), {std::string("-fw_cfg"), "name=opt/alem/job.json,file=" + job_config});
  }
  if (spec.network_mode == "tap") {
    a.insert(a.end(), {"-netdev", "tap,id=net0,ifname=" + node.tap + ",script=no,downscript=no"});
  } else {
    a.insert(a.end(), {"-netdev", "user,id=net0"});
  }
  a.insert(a.end(), {"-device", "virtio-net-pci,netdev=net0,mac=" + node.mac, "-device",
                     "vhost-vsock-pci,guest-cid=" + std::to_string(node.vsock_cid), "-nodefaults",
                     "-nographic", "-vga", "none", "-serial",
                     "file:" + run + "/" + node.name + ".console.log", "-qmp",
                     "unix:" + run + "/" + node.name + ".qmp,server=on,wait=off", "-pidfile",
                     run + "/" + node.name + ".pid", "-daemonize"});
  return a;
}

std::string shell_quote_args(const std::vector<std::string>& args) {
  static const std::regex plain("[A-Za-z0-9_@%+=:,./-]+");
  std::string out;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& s = args[i];
    if (i) out += s.size() > 1 && s[0] == '-' ? " \\\n  " : " ";  // one option a line
    if (!s.empty() && std::regex_match(s, plain)) {
      out += s;
      continue;
    }
    out += '\'';
    for (char c : s) {
      if (c == '\'') {
        out += "'\\''";
      } else {
        out += c;
      }
    }
    out += '\'';
  }
  return out;
}

std::vector<std::string> write_cvm_launch_files(const CvmNodeSpec& spec, const CvmImage& image,
                                                const CvmResources& res, const std::string& out_dir,
                                                const std::string& only_node,
                                                const std::string& job_config) {
  validate_cvm_resources(res);
  std::vector<const CvmNode*> nodes;
  for (const CvmNode& n : spec.nodes) {
    if (only_node.empty() || n.name == only_node) nodes.push_back(&n);
  }
  ALEM_CHECK(!nodes.empty(), "node " + only_node + " is not in the node spec");
  fs::create_directories(out_dir);
  const std::string run_dir = fs::absolute(fs::path(out_dir)).lexically_normal().string();
  std::vector<std::string> written;
  json expected;
  expected["image"] = image.name;
  expected["image_hash"] = image.image_hash_hex;
  expected["measurements"] = measurements_json(image);
  const fs::path expected_path = fs::path(out_dir) / "expected-measurements.json";
  write_file(expected_path, expected.dump(2) + "\n", false);
  written.push_back(expected_path.string());
  for (const CvmNode* n : nodes) {
    const std::vector<std::string> args =
        render_cvm_qemu_args(spec, *n, image, res, run_dir, job_config);
    std::string script = "#!/bin/sh\n";
    script += "# Boots node " + n->name + " as a TDX guest (rendered by `alem cvm render`; image " +
              image.name + ", image hash " + image.image_hash_hex + ").\n";
    script += "exec " + shell_quote_args(args) + "\n";
    const fs::path sh = fs::path(out_dir) / (n->name + ".qemu.sh");
    write_file(sh, script, true);
    written.push_back(sh.string());
    json launch;
    launch["node"] = n->name;
    launch["vsock_cid"] = n->vsock_cid;
    launch["mac"] = n->mac;
    launch["argv"] = args;
    launch["image"] = image.name;
    launch["image_hash"] = image.image_hash_hex;
    launch["memory"] = res.memory;
    launch["cpus"] = res.cpus;
    const fs::path lj = fs::path(out_dir) / (n->name + ".launch.json");
    write_file(lj, launch.dump(2) + "\n", false);
    written.push_back(lj.string());
    // For slurm/cvm/prolog.sh and epilog.sh: the network and vsock settings, as
    // shell words (every value was validated to [A-Za-z0-9._:-]).
    std::string env = "ALEM_CVM_NODE=" + n->name +
                      "\nALEM_CVM_CID=" + std::to_string(n->vsock_cid) +
                      "\nALEM_CVM_NETWORK=" + spec.network_mode + "\nALEM_CVM_TAP=" + n->tap +
                      "\nALEM_CVM_BRIDGE=" + spec.bridge + "\nALEM_CVM_PIDFILE=" + run_dir + "/" +
                      n->name + ".pid\n";
    const fs::path ef = fs::path(out_dir) / (n->name + ".env");
    write_file(ef, env, false);
    written.push_back(ef.string());
  }
  return written;
}

}  // namespace alem::confidential
