// `alem convert`: imports a GGUF file or a Hugging Face folder (config.json, *.safetensors,
// tokenizer.json) into alem's HDF5 model store, showing progress per tensor; `--verify`
// re-checks a store's digest.
#include <filesystem>

#include "cli/commands.h"
#include "cli/progress.h"
#include "core/error.h"
#include "core/log.h"
#include "model/convert.h"

namespace alem::cli {
namespace {

struct ConvertCommandOptions {
  std::string input;
  std::string output;
  std::string dtype = "auto";
  std::string name;
  bool verify = false;
};

void run_convert(const ConvertCommandOptions& o) {
  if (o.verify) {
    const std::string problem = verify_store(o.input);
    ALEM_CHECK(problem.empty(), o.input + ": verification failed: " + problem);
    std::printf("%s: digest verified\n", o.input.c_str());
    return;
  }
  ALEM_CHECK(!o.output.empty(), "convert needs an output path (alem convert IN OUT.h5)");
  ConvertOptions options;
  // "auto": a GGUF keeps its own types (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q3_K/Q4_K/Q5_K/Q6_K/IQ4_NL/
  // IQ4_XS blocks as they are; others to bf16); a
  // Hugging Face folder becomes bf16.
  options.keep_gguf_types = o.dtype == "auto";
  options.dtype = o.dtype == "auto" ? DType::BF16 : parse_dtype(o.dtype);
  options.model_name = o.name;
  StepProgress progress("converting", "tensors");
  options.progress = [&progress](int64_t done, int64_t total) { progress(done, total); };
  ConvertReport report;
  if (std::filesystem::is_directory(o.input)) {
    report = convert_safetensors(o.input, o.output, options);
  } else {
    report = convert_gguf(o.input, o.output, options);
  }
  log_info("converted", {{"output", o.output},
                         {"dtype", o.dtype},
                         {"tensors", std::to_string(report.tensor_count)},
                         {"parameters", std::to_string(report.parameter_count)},
                         {"bytes", std::to_string(report.bytes_written)},
                         {"seconds", log_number(report.seconds)},
                         {"digest", report.digest}});
}

}  // namespace

void add_convert_command(CLI::App& app) {
  auto o = std::make_shared<ConvertCommandOptions>();
  CLI::App* cmd = app.add_subcommand(
      "convert", "Import a GGUF file or Hugging Face folder into an HDF5 model store");
  cmd->add_option("input", o->input,
                  "GGUF file, Hugging Face model folder, or (with --verify) a store")
      ->required();
  cmd->add_option("output", o->output, "Output .h5 model store");
  cmd->add_option("--dtype", o->dtype,
                  "Stored weight type: auto (a GGUF keeps its Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q3_K/"
                  "Q4_K/Q5_K/Q6_K/IQ4_NL/IQ4_XS blocks, anything else becomes bf16), bf16, f32, "
                  "f16, int8, q4_0, q4_1, q5_0, q5_1, q8_0, q3_k, q4_k, q5_k, q6_k, iq4_nl or "
                  "iq4_xs (K-quants and iq4_xs for rows of whole 256-value "
                  "blocks; other rows q8_0, or iq4_nl for iq4_xs)")
      ->capture_default_str();
  cmd->add_option("--name", o->name,
                  "Model name stored in the config and served by `alem serve` (default: the "
                  "GGUF general.name, or the Hugging Face folder name)");
  cmd->add_flag("--verify", o->verify, "Recompute and check the digest of an existing store");
  cmd->callback([o] { run_convert(*o); });
}

}  // namespace alem::cli
