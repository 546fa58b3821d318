// `alem plan`: predicts, for every layout (tp x pp x ep x dp) of a model on a described cluster,
// the memory per rank and the step times, TTFT, ITL and tokens/s of a workload, and ranks them
// (src/plan/ holds the model; docs/planner.md explains it and how well it matches measurement).
// Output: a table on the terminal, or JSON / CSV with --json / --csv. `alem plan simulate` is
// the network simulation (cmd_plan_simulate.cc).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "model/model_store.h"
#include "plan/cost_model.h"

namespace alem::cli {
namespace {

struct PlanOptions {
  std::string model;
  std::string weights;  // dtype override
  std::string kv_cache_dtype = "bf16";
  std::string cluster;
  std::string calibration;
  plan::Workload workload;
  std::string layout;  // "tp,pp,ep,dp": only this one
  int max_ranks = 0;
  int top = 20;
  std::string json, csv;
  bool encrypt = false;
};

plan::ModelShape load_shape(const std::string& model, const std::string& weights) {
  plan::ModelShape shape;
  if (model.size() > 3 && model.substr(model.size() - 3) == ".h5") {
    ModelStoreReader store(model);
    const DType dtype = store.tensor_info(layer_tensor_name(0, "self_attn.q_proj.weight")).dtype;
    shape = plan::shape_from_config(store.config(), dtype_name(dtype));
  } else {
    shape = plan::named_shape(model);
  }
  if (!weights.empty()) {
    shape.weight_dtype = weights;
    shape.weight_bytes_per_param = plan::weight_bytes_for_dtype(weights);
  }
  shape.validate();
  return shape;
}

plan::Layout parse_layout(const std::string& text) {
  plan::Layout l;
  const int n = std::sscanf(text.c_str(), "%d,%d,%d,%d", &l.tp, &l.pp, &l.ep, &l.dp);
  ALEM_CHECK(n == 4 && l.tp >= 1 && l.pp >= 1 && l.ep >= 1 && l.dp >= 1,
             "--layout must be TP,PP,EP,DP with each at least 1, e.g. 2,1,1,1; got '" + text + "'");
  return l;
}

nlohmann::json step_json(const plan::StepTime& t) {
  return {{"total_s", t.total},           {"compute_s", t.compute},
          {"memory_s", t.memory},         {"communication_s", t.communication},
          {"encryption_s", t.encryption}, {"overhead_s", t.overhead}};
}

nlohmann::json to_json(const plan::Prediction& p) {
  nlohmann::json j = {{"layout",
                       {{"tp", p.layout.tp},
                        {"pp", p.layout.pp},
                        {"ep", p.layout.ep},
                        {"dp", p.layout.dp},
                        {"ranks", p.layout.world()}}},
                      {"fits", p.fits}};
  if (!p.fits) {
    j["why_not"] = p.why_not;
    return j;
  }
  j["nodes"] = p.nodes_used;
  j["memory_bytes_per_rank"] = {
      {"weights", p.memory.weights},         {"kv_cache", p.memory.kv_cache},
      {"activations", p.memory.activations}, {"reserved", p.memory.reserved},
      {"total", p.memory.total()},           {"capacity", p.memory.capacity}};
  j["batch_per_replica"] = p.batch;
  j["prefill_step"] = step_json(p.prefill);
  j["decode_step"] = step_json(p.decode);
  j["ttft_s"] = p.ttft_s;
  j["itl_s"] = p.itl_s;
  j["tokens_per_s"] = p.tokens_per_s;
  j["requests_per_s"] = p.requests_per_s;
  j["meets_targets"] = p.meets_targets;
  if (!p.target_note.empty()) j["target_note"] = p.target_note;
  if (p.overloaded) j["overloaded"] = true;
  return j;
}

void write_csv(std::ostream& out, const std::vector<plan::Prediction>& rows) {
  out << "tp,pp,ep,dp,ranks,fits,why_not,weights_gib,kv_gib,activations_gib,total_gib,"
         "capacity_gib,batch,prefill_s,prefill_compute_s,prefill_memory_s,prefill_comm_s,"
         "decode_s,decode_compute_s,decode_memory_s,decode_comm_s,decode_encryption_s,ttft_s,"
         "itl_s,tokens_per_s,requests_per_s,meets_targets\n";
  const double g = 1024.0 * 1024 * 1024;
  for (const auto& p : rows) {
    const auto& l = p.layout;
    out << l.tp << ',' << l.pp << ',' << l.ep << ',' << l.dp << ',' << l.world() << ','
        << (p.fits ? 1 : 0) << ",\"" << p.why_not << "\"," << p.memory.weights / g << ','
        << p.memory.kv_cache / g << ',' << p.memory.activations / g << ',' << p.memory.total() / g
        << ',' << p.memory.capacity / g << ',' << p.batch << ',' << p.prefill.total << ','
        << p.prefill.compute << ',' << p.prefill.memory << ',' << p.prefill.communication << ','
        << p.decode.total << ',' << p.decode.compute << ',' << p.decode.memory << ','
        << p.decode.communication << ',' << p.decode.encryption << ',' << p.ttft_s << ',' << p.itl_s
        << ',' << p.tokens_per_s << ',' << p.requests_per_s << ',' << (p.meets_targets ? 1 : 0)
        << '\n';
  }
}

std::string ms(double s) {
  char b[32];
  std::snprintf(b, sizeof b, s < 0.01 ? "%.2f" : (s < 1 ? "%.1f" : "%.0f"), s * 1e3);
  return b;
}

void print_table(const plan::ModelShape& m, const plan::ClusterSpec& c, const plan::Workload& w,
                 const std::vector<plan::Prediction>& rows, int top) {
  const double g = 1024.0 * 1024 * 1024;
  std::printf("# model %s: %.2fB params (%.2fB active), weights %s; cluster %s: %d x %d %s%s\n",
              m.name.c_str(), m.total_params() / 1e9, m.active_params() / 1e9,
              m.weight_dtype.c_str(), c.name.c_str(), c.nodes, c.devices_per_node,
              c.kind == "gpu" ? "GPUs" : "cores",
              c.calibration.empty() ? " (datasheet figures)" : " (calibrated)");
  std::printf("# workload: prompt %d, output %d, %s%s\n", w.prompt_tokens, w.output_tokens,
              w.concurrency > 0 ? ("concurrency " + std::to_string(w.concurrency)).c_str()
                                : ("arrivals " + std::to_string(w.arrival_rate) + "/s").c_str(),
              w.requests > 0 ? (", " + std::to_string(w.requests) + " requests").c_str() : "");
  std::printf("%-4s %-22s %5s %8s %7s %6s %9s %9s %9s %9s %9s %10s  %s\n", "rank", "layout",
              "ranks", "mem GiB", "KV GiB", "batch", "prefill", "decode", "compute", "memory",
              "comm", "tok/s", "TTFT ms / ITL ms");
  int shown = 0, refused = 0;
  for (const auto& p : rows) {
    if (!p.fits) {
      ++refused;
      continue;
    }
    if (++shown > top) continue;
    std::printf("%-4d %-22s %5d %8.2f %7.2f %6d %9s %9s %9s %9s %9s %10.1f  %s / %s%s%s\n", shown,
                p.layout.describe().c_str(), p.layout.world(), p.memory.total() / g,
                p.memory.kv_cache / g, p.batch, ms(p.prefill.total).c_str(),
                ms(p.decode.total).c_str(), ms(p.decode.compute).c_str(),
                ms(p.decode.memory).c_str(),
                ms(p.decode.communication + p.decode.encryption).c_str(), p.tokens_per_s,
                ms(p.ttft_s).c_str(), ms(p.itl_s).c_str(), p.target_note.empty() ? "" : "  ! ",
                p.target_note.c_str());
  }
  if (shown > top) std::printf("... %d more that fit (--top to show them)\n", shown - top);
  std::printf(
      "(prefill, decode: step times in ms; compute, memory, comm: the decode step's parts)\n");
  if (shown == 0) std::printf("no layout fits this cluster\n");
  if (refused > 0) {
    std::printf("\n%d layouts do not fit:\n", refused);
    int listed = 0;
    for (const auto& p : rows) {
      if (p.fits) continue;
      if (++listed > top) break;
      std::printf("  %-22s %s\n", p.layout.describe().c_str(), p.why_not.c_str());
    }
    if (refused > top) std::printf("  ... and %d more\n", refused - top);
  }
}

void run_plan(const PlanOptions& o) {
  ALEM_CHECK(!o.model.empty(), "alem plan: --model is required (a store .h5 or a named shape)");
  ALEM_CHECK(!o.cluster.empty(), "alem plan: --cluster FILE.toml is required");
  plan::ModelShape shape = load_shape(o.model, o.weights);
  ALEM_CHECK(o.kv_cache_dtype == "bf16" || o.kv_cache_dtype == "f32",
             "--kv-cache-dtype must be bf16 or f32, got '" + o.kv_cache_dtype + "'");
  shape.kv_bytes_per_value = o.kv_cache_dtype == "f32" ? 4 : 2;
  plan::ClusterSpec cluster = plan::load_cluster_spec(o.cluster);
  if (!o.calibration.empty())
    plan::apply_calibration(cluster, plan::load_calibration(o.calibration), o.calibration);
  if (o.encrypt) {
    cluster.encrypt_inter_node = true;
    ALEM_CHECK(cluster.aes_gcm_gbs > 0,
               "--encrypt: the cluster gives no encryption.aes_gcm_gbs "
               "(or calibrate with alem bench calibrate)");
  }
  plan::Workload w = o.workload;
  if (w.concurrency == 0 && w.arrival_rate == 0) w.concurrency = 1;
  std::vector<plan::Prediction> rows;
  if (!o.layout.empty()) {
    shape.validate();
    cluster.validate();
    w.validate();
    rows.push_back(plan::predict(shape, cluster, w, parse_layout(o.layout)));
  } else {
    rows = plan::plan_layouts(shape, cluster, w, o.max_ranks);
  }
  if (!o.csv.empty()) {
    if (o.csv == "-") {
      write_csv(std::cout, rows);
    } else {
      std::ofstream f(o.csv, std::ios::trunc);
      ALEM_CHECK(f.good(), "cannot write " + o.csv);
      write_csv(f, rows);
    }
  }
  if (!o.json.empty()) {
    nlohmann::json doc = {{"model",
                           {{"name", shape.name},
                            {"params", shape.total_params()},
                            {"active_params", shape.active_params()},
                            {"weights", shape.weight_dtype}}},
                          {"cluster", cluster.name},
                          {"calibration", cluster.calibration},
                          {"workload",
                           {{"prompt_tokens", w.prompt_tokens},
                            {"output_tokens", w.output_tokens},
                            {"concurrency", w.concurrency},
                            {"arrival_rate", w.arrival_rate},
                            {"requests", w.requests},
                            {"max_batch", w.max_batch}}},
                          {"layouts", nlohmann::json::array()}};
    for (const auto& p : rows) doc["layouts"].push_back(to_json(p));
    if (o.json == "-") {
      std::cout << doc.dump(2) << "\n";
    } else {
      std::ofstream f(o.json, std::ios::trunc);
      ALEM_CHECK(f.good(), "cannot write " + o.json);
      f << doc.dump(2) << "\n";
    }
  }
  if (o.json != "-" && o.csv != "-") print_table(shape, cluster, w, rows, o.top);
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto o = std::make_shared<PlanOptions>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "Predict memory, step times, TTFT, ITL and tokens/s of every layout; rank them");
  cmd->require_subcommand(0, 1);
  cmd->add_option("--model,-m", o->model,
                  "Model store (.h5) or a named shape: smollm2-135m, qwen3-8b, qwen3-32b, "
                  "qwen3-30b-a3b, qwen3-235b-a22b, llama-3.1-70b");
  cmd->add_option("--weights", o->weights,
                  "Weight dtype to plan for (bf16, f16, f32, int8, or a kept block type: q4_0, "
                  "q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k, iq4_nl, iq4_xs)");
  cmd->add_option("--kv-cache-dtype", o->kv_cache_dtype,
                  "KV cache dtype, as alem serve's: bf16 or f32")
      ->capture_default_str();
  cmd->add_option("--cluster,-c", o->cluster, "Cluster description (TOML, see plan/clusters/)");
  cmd->add_option("--calibration", o->calibration,
                  "Calibration file from `alem bench calibrate` (replaces datasheet figures)");
  cmd->add_option("--prompt-tokens", o->workload.prompt_tokens, "Prompt length")
      ->capture_default_str();
  cmd->add_option("--output-tokens", o->workload.output_tokens, "Generated tokens per request")
      ->capture_default_str();
  cmd->add_option("--concurrency", o->workload.concurrency,
                  "Requests in flight over the deployment (default 1 without --arrival-rate)");
  cmd->add_option("--arrival-rate", o->workload.arrival_rate, "Requests per second (open loop)");
  cmd->add_option("--requests", o->workload.requests,
                  "Requests in all (closed loop; 0: steady state)");
  cmd->add_option("--batch", o->workload.max_batch,
                  "Sequences one replica runs at once (default: as many as in flight)");
  cmd->add_option("--max-batch-tokens", o->workload.max_batch_tokens, "Token budget of a step")
      ->capture_default_str();
  cmd->add_option("--ttft-target", o->workload.ttft_target_s, "TTFT target in seconds");
  cmd->add_option("--itl-target", o->workload.itl_target_s, "ITL target in seconds");
  cmd->add_option("--layout", o->layout, "Only this layout: TP,PP,EP,DP");
  cmd->add_option("--max-ranks", o->max_ranks,
                  "Largest world to consider (default: the cluster's devices; CPU ranks may "
                  "oversubscribe cores)");
  cmd->add_flag("--encrypt", o->encrypt, "Encrypt traffic between nodes (confidential mode)");
  cmd->add_option("--top", o->top, "Rows shown on the terminal")->capture_default_str();
  cmd->add_option("--json", o->json, "Write all layouts as JSON to FILE (- for stdout)");
  cmd->add_option("--csv", o->csv, "Write all layouts as CSV to FILE (- for stdout)");
  add_plan_simulate_command(*cmd);
  cmd->callback([o, cmd] {
    if (cmd->get_subcommands().empty()) run_plan(*o);
  });
}

}  // namespace alem::cli
