// `alem generate`: one prompt in, the model's completion out, computed by alem's own engine from
// an HDF5 model store; on one rank or sharded (mpirun -np N alem generate --tp T --pp P).
// The completion goes to stdout (it is the user's own output); statistics go to stderr.
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "cli/confidential_start.h"
#include "cli/progress.h"
#include "cli/runtime.h"
#include "confidential/memory_hygiene.h"
#include "confidential/sandbox.h"
#include "core/error.h"
#include "core/log.h"
#include "engine/generator.h"
#include "model/chat_template.h"
#include "model/model_store.h"
#include "model/tokenizer.h"
#include "mpi/nccl_process_group.h"

namespace alem::cli {
namespace {

struct GenerateOptions {
  std::string model;
  std::string prompt;
  std::string system;
  bool chat = false;
  std::string chat_template_file;  // --chat-template: replaces the store's template
  bool quiet_stats = false;
  std::string backend = "cpu";
  int block_size = 16;
  std::string kv_cache_dtype = "bf16";
  ParallelOptions parallel;
  SamplingParams sampling;
  int64_t seed = -1;
  ConfidentialFlags confidential;  // --confidential, --encrypt-interconnect
  bool allow_core_dumps = false;   // memory hygiene escape hatch (confidential/memory_hygiene.h)
  bool sandbox = false;            // confidential/sandbox.h
};

void run_generate(GenerateOptions& o) {
  // Before MPI starts: no core dumps, not dumpable (and MPI told to copy accordingly).
  confidential::harden_process({.allow_core_dumps = o.allow_core_dumps});
  ParallelContext ctx = make_context(o.parallel);
  try {
    if (o.seed >= 0) o.sampling.seed = static_cast<uint64_t>(o.seed);
    o.sampling.validate();
    ModelStoreReader store(o.model);
    // Attest, verify the cluster bundle, agree keys, encrypt traffic between hosts (collective).
    const auto confidential_session = start_confidential(ctx, o.confidential, store, nullptr);
    TokenizerData chat_data = store.tokenizer();
    if (!o.chat_template_file.empty()) {
      chat_data.chat_template = read_chat_template_file(o.chat_template_file);
    }
    // MPI is up and the store open. `--confidential sandbox` implies it.
    if (o.sandbox || o.confidential.mode == "sandbox") confidential::enter_sandbox();
    Tokenizer tokenizer(store.tokenizer());
    if (o.chat) check_chat_template(chat_data);  // a template alem cannot parse fails here
    std::vector<int32_t> prompt;
    if (o.chat) {
      std::vector<ChatMessage> messages;
      if (!o.system.empty()) messages.push_back({"system", o.system});
      messages.push_back({"user", o.prompt});
      // Message text is encoded without special-token parsing: a user cannot close the turn.
      prompt = encode_chat(messages, /*add_generation_prompt=*/true, chat_data, tokenizer);
    } else {
      prompt = tokenizer.encode(o.prompt, /*parse_special=*/false);
      if (store.tokenizer().add_bos_token && tokenizer.bos_id() >= 0) {
        prompt.insert(prompt.begin(), tokenizer.bos_id());
      }
    }

    auto backend = make_backend(o.backend);
    // GPU tensors go between tensor-parallel ranks over NCCL where this build has it, and never
    // between hosts with the interconnect encrypted (they are staged through host memory then).
    if (backend->memory_space() == MemorySpace::kDevice) {
      std::string no_nccl;
      if (!attach_device_groups(ctx, &no_nccl) && !no_nccl.empty() && ctx.world_rank == 0) {
        log_warn(no_nccl);
      }
    }
    EngineOptions engine_options;
    engine_options.block_size = o.block_size;
    engine_options.load_progress = model_load_progress(ctx.world_rank == 0);
    engine_options.kv_cache_dtype = parse_dtype(o.kv_cache_dtype);
    const int needed = static_cast<int>(prompt.size()) + o.sampling.max_tokens;
    engine_options.max_model_len = std::min(needed, store.config().context_limit());
    ShardedTransformer model(store, ctx, *backend, engine_options);

    std::vector<int32_t> eos = store.config().eos_token_ids;
    if (tokenizer.eos_id() >= 0) eos.push_back(tokenizer.eos_id());
    // ChatML turns end with <|im_end|>, which may differ from the tokenizer's eos.
    const int32_t im_end = tokenizer.token_id("<|im_end|>");
    if (o.chat && im_end >= 0) eos.push_back(im_end);
    Generator generator(model, ctx, eos);

    const bool printer = ctx.world_rank == 0;
    StreamingDecoder decoder(tokenizer);
    GenerationResult r = generator.generate(prompt, o.sampling, [&](int32_t token) {
      if (!printer) return;
      if (std::find(eos.begin(), eos.end(), token) != eos.end()) return;
      const std::string piece = decoder.push(token);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    });
    if (printer) {
      const std::string rest = decoder.flush();
      std::fwrite(rest.data(), 1, rest.size(), stdout);
      std::fputc('\n', stdout);
      std::fflush(stdout);
    }
    if (printer && !o.quiet_stats) {
      const double decode_tps = r.tokens.size() > 1 && r.decode_seconds > 0
                                    ? (r.tokens.size() - 1) / r.decode_seconds
                                    : 0.0;
      log_info(
          "generate done",
          {{"layout", ctx.layout.describe()},
           {"backend", backend->name()},
           {"weights",
            dtype_name(store.tensor_info(layer_tensor_name(0, "self_attn.q_proj.weight")).dtype)},
           {"load_s", log_number(model.load_seconds())},
           {"loaded_mb", log_number(model.bytes_loaded() / 1e6)},
           {"prompt_tokens", std::to_string(r.prompt_tokens)},
           {"completion_tokens", std::to_string(r.tokens.size())},
           {"finish_reason", r.finish_reason},
           {"prefill_tok_s", log_number(r.prompt_tokens / std::max(r.prefill_seconds, 1e-9))},
           {"decode_tok_s", log_number(decode_tps)}});
    }
  } catch (const std::exception& e) {
    fail_job(&ctx, e.what());
    throw;
  }
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  o->sampling.max_tokens = 128;
  o->sampling.temperature = 0.f;
  CLI::App* cmd = app.add_subcommand("generate", "Generate a completion for one prompt");
  cmd->add_option("--model,-m", o->model, "HDF5 model store (from `alem convert`)")->required();
  cmd->add_option("--prompt,-p", o->prompt, "Prompt text")->required();
  cmd->add_flag("--chat", o->chat, "Wrap the prompt in the model's chat template");
  cmd->add_option("--system", o->system, "System message (with --chat)");
  cmd->add_option("--chat-template", o->chat_template_file,
                  "Jinja chat template file to use instead of the model's (with --chat)");
  cmd->add_option("--max-tokens,-n", o->sampling.max_tokens, "Most tokens to generate")
      ->capture_default_str();
  cmd->add_option("--temperature,-t", o->sampling.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", o->sampling.top_k, "Keep the k most likely tokens (0 = off)");
  cmd->add_option("--top-p", o->sampling.top_p, "Nucleus sampling threshold");
  cmd->add_option("--min-p", o->sampling.min_p,
                  "Drop tokens below min-p times the top probability");
  cmd->add_option("--repetition-penalty", o->sampling.repetition_penalty, "HF repetition penalty");
  cmd->add_option("--presence-penalty", o->sampling.presence_penalty, "OpenAI presence penalty");
  cmd->add_option("--frequency-penalty", o->sampling.frequency_penalty, "OpenAI frequency penalty");
  cmd->add_option("--seed", o->seed, "Random seed (same seed, same text)");
  cmd->add_flag("--ignore-eos", o->sampling.ignore_eos, "Generate past end-of-sequence");
  cmd->add_option("--backend", o->backend, "Kernel backend: cpu, reference, cuda")
      ->capture_default_str();
  cmd->add_option("--block-size", o->block_size, "KV cache block size")->capture_default_str();
  cmd->add_option("--kv-cache-dtype", o->kv_cache_dtype, "KV cache element type: bf16 or f32")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  cmd->add_flag("--quiet", o->quiet_stats, "Do not print statistics to stderr");
  add_parallel_flags(*cmd, o->parallel);
  add_confidential_flags(*cmd, o->confidential);
  cmd->add_flag("--allow-core-dumps", o->allow_core_dumps,
                "Debugging only: keep core dumps possible (they may hold prompts)");
  cmd->add_flag("--sandbox", o->sandbox,
                "Namespaces, private /tmp, no_new_privs and a seccomp filter (docs/security.md); "
                "implied by --confidential sandbox");
  cmd->callback([o] { run_generate(*o); });
}

}  // namespace alem::cli
