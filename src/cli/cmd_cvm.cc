// `alem cvm`: the confidential-VM side of `tdx` mode. `alem cvm render` turns a
// node spec, an image manifest and the node's resources into the QEMU launch of
// one TD guest per node (see confidential/cvm_launch.h); slurm/cvm/prolog.sh
// runs it on each node at job start.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "confidential/cvm_launch.h"

namespace alem::cli {
namespace {

struct CvmRenderOptions {
  std::string node_spec;
  std::string image;
  std::string memory;
  int cpus = 0;
  std::string out;
  std::string node;
  std::string job_config;
  bool print = false;
  bool no_file_check = false;
};

void run_cvm_render(const CvmRenderOptions& o) {
  const confidential::CvmNodeSpec spec = confidential::load_cvm_node_spec(o.node_spec);
  const confidential::CvmImage image = confidential::load_cvm_image(o.image, !o.no_file_check);
  const confidential::CvmResources res{o.memory, o.cpus};
  const std::vector<std::string> written =
      confidential::write_cvm_launch_files(spec, image, res, o.out, o.node, o.job_config);
  for (const std::string& path : written) std::printf("wrote %s\n", path.c_str());
  std::printf("image %s, image hash %s\n", image.name.c_str(), image.image_hash_hex.c_str());
  if (o.print) {
    for (const confidential::CvmNode& n : spec.nodes) {
      if (!o.node.empty() && n.name != o.node) continue;
      std::printf("%s\n", confidential::shell_quote_args(
                              confidential::render_cvm_qemu_args(
                                  spec, n, image, res, std::filesystem::absolute(o.out).string(),
                                  o.job_config))
                              .c_str());
    }
  }
}

}  // namespace

void add_cvm_command(CLI::App& app) {
  CLI::App* cvm =
      app.add_subcommand("cvm", "Confidential VMs: render each node's TDX guest launch");
  cvm->require_subcommand(1);
  auto o = std::make_shared<CvmRenderOptions>();
  CLI::App* render =
      cvm->add_subcommand("render", "Render the QEMU launch of a TD guest per node (slurm/cvm/)");
  render->add_option("--node-spec", o->node_spec, "Nodes (JSON: names, vsock CIDs, MACs, taps)")
      ->required();
  render->add_option("--image", o->image, "Image manifest (JSON: files, expected measurements)")
      ->required();
  render->add_option("--mem", o->memory, "Guest memory, e.g. 64G")->required();
  render->add_option("--cpus", o->cpus, "Guest vCPUs")->required();
  render->add_option("--out", o->out, "Folder for the launch scripts, pid files and QMP sockets")
      ->required();
  render->add_option("--node", o->node, "Render only this node (the prolog passes its own name)");
  render->add_option("--job-config", o->job_config,
                     "A file handed to each guest as fw_cfg opt/alem/job.json "
                     "(the job's settings)");
  render->add_flag("--print", o->print, "Also print each command line");
  render->add_flag("--no-file-check", o->no_file_check,
                   "Do not require the image's files to exist here (rendering "
                   "for another host)");
  render->callback([o] { run_cvm_render(*o); });
}

}  // namespace alem::cli
