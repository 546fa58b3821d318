// `alem info`: prints a model store's configuration, digest and tensor list (no weights read).
#include <cstdio>

#include "cli/commands.h"
#include "model/model_store.h"

namespace alem::cli {

void add_info_command(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  auto tensors = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("info", "Show a model store's config and digest");
  cmd->add_option("model", *path, "HDF5 model store")->required();
  cmd->add_flag("--tensors", *tensors, "Also list every tensor");
  cmd->callback([path, tensors] {
    ModelStoreReader store(*path);
    std::printf("config: %s\n", store.config().to_json().c_str());
    std::printf("parameters: %lld\n", static_cast<long long>(store.config().parameter_count()));
    std::printf("digest: %s\n", store.model_digest().c_str());
    std::printf("tokenizer: %zu tokens, %zu merges, pre-tokenizer %s\n",
                store.tokenizer().tokens.size(), store.tokenizer().merges.size(),
                store.tokenizer().pre_tokenizer.c_str());
    if (*tensors) {
      for (const TensorInfo& t : store.list_tensors()) {
        std::string shape;
        for (int64_t d : t.shape) {
          if (!shape.empty()) shape += 'x';
          shape += std::to_string(d);
        }
        std::printf("  %-55s %-6s %s\n", t.name.c_str(), dtype_name(t.dtype).c_str(),
                    shape.c_str());
      }
    }
  });
}

}  // namespace alem::cli
