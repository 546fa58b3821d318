// Rendering the launch of one TDX confidential VM per Slurm node (`alem cvm render`, slurm/cvm/).
// In `tdx` mode each node's job step runs inside a TD guest booted from a measured image; the
// host only starts and stops it. This file turns three inputs into a QEMU argument vector per
// node, so the launch is reviewable, reproducible and testable without TDX hardware:
//
//   node spec (JSON)       { "network": {"mode": "tap" | "user", "bridge": "br0"},
//                            "nodes": [ {"name": "node001", "vsock_cid": 10,
//                                        "mac": "52:54:00:00:00:01", "tap": "alem0"}, ... ] }
//                          vsock_cid, mac and tap are optional (derived from the node's index
//                          and name when absent).
//   image manifest (JSON)  { "name": "...", "firmware": "OVMF.tdx.fd", "kernel": "vmlinuz",
//                            "initrd": "initrd.img", "cmdline": "...", "disk": "root.img",
//                            "disk_format": "raw", "measurements": { "mrtd": <96 hex>,
//                            "mrconfigid", "mrowner", "mrownerconfig" (default zero),
//                            "rtmr0".."rtmr3" }, "image_hash": <64 hex> }
//                          Paths are relative to the manifest's folder. image_hash must equal
//                          the COCOON image hash of the measurements (confidential/image_hash.h):
//                          it is what the network's allowlist and the bundle verifier check.
//   resources              memory ("64G"), vCPUs.
//
// Every bad input is refused with alem::Error naming the field and the reason.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "confidential/image_hash.h"

namespace alem::confidential {

struct CvmNode {
  std::string name;
  uint32_t vsock_cid = 0;
  std::string mac;
  std::string tap;  // tap network mode only
};

struct CvmNodeSpec {
  std::string network_mode = "tap";  // "tap" (bridged, for MPI between nodes) or "user"
  std::string bridge;
  std::vector<CvmNode> nodes;
};

struct CvmImage {
  std::string name;
  std::string firmware, kernel, initrd, cmdline, disk, disk_format = "raw";  // absolute paths
  TdReportBody measurements;  // mrtd, mrconfigid, mrowner, mrownerconfig, rtmr0..3
  std::string image_hash_hex;
};

struct CvmResources {
  std::string memory;  // QEMU size: digits then M, G or T
  int cpus = 0;
};

CvmNodeSpec parse_cvm_node_spec(const std::string& json_text);
CvmNodeSpec load_cvm_node_spec(const std::string& path);
// `base_dir` resolves the manifest's relative paths; check_files: every file must exist.
CvmImage parse_cvm_image(const std::string& json_text, const std::string& base_dir,
                         bool check_files = true);
CvmImage load_cvm_image(const std::string& path, bool check_files = true);
void validate_cvm_resources(const CvmResources& resources);

// The QEMU command (argv[0] = "qemu-system-x86_64") that boots `node` as a TD guest. run_dir
// holds the pid file, the QMP socket and the console log. job_config (optional): a file handed
// to the guest as fw_cfg "opt/alem/job.json".
std::vector<std::string> render_cvm_qemu_args(const CvmNodeSpec& spec, const CvmNode& node,
                                              const CvmImage& image, const CvmResources& res,
                                              const std::string& run_dir,
                                              const std::string& job_config = "");

// argv as a POSIX sh word list (single-quoted where needed).
std::string shell_quote_args(const std::vector<std::string>& args);

// Writes, under out_dir, for each node (or only `only_node` when not empty):
//   <node>.qemu.sh (executable; exec's QEMU), <node>.launch.json (argv, image, image hash),
//   <node>.env (network and vsock settings for the prolog/epilog, shell assignments), and
//   expected-measurements.json (the allowlist entry for the verifier).
// Returns the paths written. Throws when only_node is not in the spec.
std::vector<std::string> write_cvm_launch_files(const CvmNodeSpec& spec, const CvmImage& image,
                                                const CvmResources& res, const std::string& out_dir,
                                                const std::string& only_node = "",
                                                const std::string& job_config = "");

}  // namespace alem::confidential
