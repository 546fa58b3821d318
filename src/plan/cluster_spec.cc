// Cluster descriptions (TOML) and calibration files (JSON): parsing with errors that name the
// file, line and key, the alpha-beta fit of measured message times, and applying a calibration.
#include "plan/cluster_spec.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>

#include <toml++/toml.h>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace alem::plan {

double ClusterSpec::peak_flops(const std::string& dtype) const {
  auto it = peak_tflops.find(dtype);
  if (it == peak_tflops.end() && dtype == "f16") it = peak_tflops.find("bf16");
  ALEM_CHECK(it != peak_tflops.end(), "cluster '" + name + "' gives no peak_tflops for dtype '" +
                                          dtype + "' (add it under [device.peak_tflops])");
  return it->second * 1e12;
}

double LinkSpec::seconds(double bytes) const {
  if (measured.size() < 2) return latency_us * 1e-6 + bytes / (bandwidth_gbs * 1e9);
  // Per size range: linear between the neighbouring measured sizes; below the smallest, its
  // time (latency-bound); past the largest, its time plus the rest at the sustained rate.
  if (bytes <= measured.front().first) return measured.front().second;
  if (bytes >= measured.back().first)
    return measured.back().second + (bytes - measured.back().first) / sustained_bytes_per_s();
  size_t i = 1;
  while (measured[i].first < bytes) ++i;
  const auto& [b0, s0] = measured[i - 1];
  const auto& [b1, s1] = measured[i];
  return s0 + (s1 - s0) * (bytes - b0) / (b1 - b0);
}

namespace {

// A measured share per rank count: the count's own; beyond the largest measured count, that
// count's total shared by more ranks; else -1 (none measured).
double measured_share(const std::map<int, double>& shares, int ranks, double threads_per_rank) {
  const auto it = shares.find(ranks);
  if (it != shares.end() && it->second > 0) return it->second;
  if (!shares.empty()) {
    const auto& [measured, share] = *shares.rbegin();
    if (ranks > measured) return std::min<double>(threads_per_rank, share * measured / ranks);
  }
  return -1;
}

// Linear between whole rank counts (an average over a step may be a fraction).
template <typename ShareOf>
double interpolated(double ranks, const ShareOf& share_of) {
  ranks = std::max(ranks, 1.0);
  const int below = static_cast<int>(std::floor(ranks));
  const double frac = ranks - below;
  if (frac < 1e-9) return share_of(below);
  return share_of(below) * (1 - frac) + share_of(below + 1) * frac;
}

}  // namespace

double ClusterSpec::core_share(double ranks) const {
  return interpolated(ranks, [this](int k) { return core_share(k); });
}

double ClusterSpec::core_share(int ranks) const {
  ranks = std::max(ranks, 1);
  const double share = measured_share(rank_core_share, ranks, threads_per_rank);
  if (share > 0) return share;
  return std::min<double>(threads_per_rank, static_cast<double>(devices_per_node) / ranks);
}

double ClusterSpec::compute_share(double ranks) const {
  return interpolated(ranks, [this](int k) {
    const double share = measured_share(rank_core_share_batched, std::max(k, 1), threads_per_rank);
    return share > 0 ? share : core_share(k);
  });
}

double ClusterSpec::sync_seconds(int ranks) const {
  const auto it = sync_us_by_ranks.find(ranks);
  return (it != sync_us_by_ranks.end() ? it->second : sync_us) * 1e-6;
}

double ClusterSpec::sync_seconds(int ranks, double bytes) const {
  if (ranks != sync_ranks || sync_us_by_bytes.empty()) return sync_seconds(ranks);
  // Linear between the measured sizes, the nearest end beyond them.
  const auto hi = sync_us_by_bytes.lower_bound(bytes);
  if (hi == sync_us_by_bytes.begin()) return hi->second * 1e-6;
  if (hi == sync_us_by_bytes.end()) return sync_us_by_bytes.rbegin()->second * 1e-6;
  const auto lo = std::prev(hi);
  const double t = (bytes - lo->first) / (hi->first - lo->first);
  return (lo->second + (hi->second - lo->second) * t) * 1e-6;
}

double ClusterSpec::measured_all_reduce_seconds(int ranks, bool between_nodes, double bytes) const {
  if (ranks != all_reduce_ranks || between_nodes != all_reduce_between_nodes ||
      all_reduce_measured.size() < 2)
    return -1;
  LinkSpec idle;  // the same per-size interpolation as a link's
  idle.measured = all_reduce_measured;
  const auto& [b, s] = all_reduce_measured.back();
  idle.sustained_gbs = s > 0 ? b / s / 1e9 : 1;
  if (all_reduce_loaded.size() < 2) return idle.seconds(bytes);
  // Under load up to the largest size measured so; beyond, that plus the idle difference.
  LinkSpec loaded;
  loaded.measured = all_reduce_loaded;
  const double top = all_reduce_loaded.back().first;
  if (bytes <= top) return loaded.seconds(bytes);
  return all_reduce_loaded.back().second + idle.seconds(bytes) - idle.seconds(top);
}

double ClusterSpec::curve_matmul_seconds(const std::string& dtype, double bytes,
                                         double rows) const {
  const auto it = matmul_curve.find(dtype);
  if (it == matmul_curve.end() || it->second.size() < 2) return -1;
  const auto& curve = it->second;  // sorted by rows
  size_t i = 1;
  while (i + 1 < curve.size() && curve[i].first < rows) ++i;
  const auto& [r0, s0] = curve[i - 1];
  const auto& [r1, s1] = curve[i];
  const double per_byte = s0 + (s1 - s0) * (rows - r0) / (r1 - r0);
  return bytes * std::max(per_byte, 0.5 * curve.front().second);
}

double ClusterSpec::weight_storage_ratio(const std::string& dtype) const {
  return dtype == "bf16" ? bf16_weight_bytes / 2 : 1.0;
}

double ClusterSpec::weight_bandwidth(const std::string& dtype) const {
  const auto it = weight_stream_gbs.find(dtype);
  if (it != weight_stream_gbs.end() && it->second > 0) {
    return it->second * 1e9 * weight_storage_ratio(dtype);
  }
  return device_bandwidth_gbs * bandwidth_efficiency * 1e9;
}

void ClusterSpec::validate() const {
  const std::string where = "cluster '" + name + "' (" + source + "): ";
  ALEM_CHECK(kind == "gpu" || kind == "cpu", where + "kind must be \"gpu\" or \"cpu\"");
  ALEM_CHECK(nodes >= 1, where + "nodes must be at least 1");
  ALEM_CHECK(devices_per_node >= 1, where + "node.devices must be at least 1");
  ALEM_CHECK(threads_per_rank >= 1, where + "node.threads_per_rank must be at least 1");
  ALEM_CHECK(node_memory_gib > 0 || device_memory_gib > 0,
             where + "give node.memory_gib (CPU) or device.memory_gib (GPU)");
  ALEM_CHECK(kind == "cpu" || device_memory_gib > 0,
             where + "a GPU cluster needs device.memory_gib");
  ALEM_CHECK(!peak_tflops.empty(), where + "device.peak_tflops needs at least one dtype");
  for (const auto& [dtype, value] : peak_tflops)
    ALEM_CHECK(value > 0, where + "device.peak_tflops." + dtype + " must be positive");
  ALEM_CHECK(device_bandwidth_gbs > 0, where + "device.memory_bandwidth_gbs must be positive");
  ALEM_CHECK(bf16_weight_bytes >= 1.5 && bf16_weight_bytes <= 2,
             where + "node.bf16_weight_bytes must be between 1.5 (coded) and 2 (plain)");
  ALEM_CHECK(compute_efficiency > 0 && compute_efficiency <= 1 && bandwidth_efficiency > 0 &&
                 bandwidth_efficiency <= 1,
             where + "efficiencies must be in (0, 1]");
  ALEM_CHECK(intra_node.bandwidth_gbs > 0,
             where + "links.intra_node.bandwidth_gbs must be positive");
  ALEM_CHECK(nodes == 1 || inter_node.bandwidth_gbs > 0,
             where + "a cluster of several nodes needs links.inter_node.bandwidth_gbs");
  ALEM_CHECK(!(encrypt_inter_node || encrypt_intra_node) || aes_gcm_gbs > 0,
             where + "encryption is on: give encryption.aes_gcm_gbs");
}

namespace {

// Reads keys of one table, remembering which were seen so unknown keys can be refused.
class Keys {
 public:
  Keys(const toml::table& root, const std::string& source) : root_(root), source_(source) {}

  double number(const std::string& path, double fallback, bool required = false) {
    const toml::node* n = node(path);
    if (n == nullptr) {
      ALEM_CHECK(!required, source_ + ": missing key '" + path + "'");
      return fallback;
    }
    if (auto v = n->value<double>()) return *v;
    fail(*n, path, "must be a number");
  }
  int integer(const std::string& path, int fallback, bool required = false) {
    const toml::node* n = node(path);
    if (n == nullptr) {
      ALEM_CHECK(!required, source_ + ": missing key '" + path + "'");
      return fallback;
    }
    if (auto v = n->value<int64_t>(); v && *v >= 0 && *v < (1 << 30)) return static_cast<int>(*v);
    fail(*n, path, "must be a non-negative integer");
  }
  std::string text(const std::string& path, const std::string& fallback) {
    const toml::node* n = node(path);
    if (n == nullptr) return fallback;
    if (auto v = n->value<std::string>()) return *v;
    fail(*n, path, "must be a string");
  }
  bool boolean(const std::string& path, bool fallback) {
    const toml::node* n = node(path);
    if (n == nullptr) return fallback;
    if (auto v = n->value<bool>()) return *v;
    fail(*n, path, "must be true or false");
  }
  std::map<std::string, double> numbers_in(const std::string& path) {
    std::map<std::string, double> out;
    const toml::node* n = node(path);
    if (n == nullptr) return out;
    const toml::table* t = n->as_table();
    if (t == nullptr) fail(*n, path, "must be a table of dtype = TFLOP/s");
    for (const auto& [key, value] : *t) {
      const std::string full = path + "." + std::string(key.str());
      seen_.insert(full);
      auto v = value.value<double>();
      if (!v) fail(value, full, "must be a number");
      out[std::string(key.str())] = *v;
    }
    return out;
  }
  // Every key of the document that no reader asked for.
  void refuse_unknown() const { walk(root_, ""); }

 private:
  const toml::node* node(const std::string& path) {
    seen_.insert(path);
    return root_.at_path(path).node();
  }
  [[noreturn]] void fail(const toml::node& n, const std::string& path, const std::string& what) {
    ALEM_FAIL(source_ + ":" + std::to_string(n.source().begin.line) + ": '" + path + "' " + what);
  }
  void walk(const toml::table& t, const std::string& prefix) const {
    for (const auto& [key, value] : t) {
      const std::string full = prefix + std::string(key.str());
      if (const toml::table* sub = value.as_table(); sub && !seen_.count(full)) {
        walk(*sub, full + ".");
      } else if (!seen_.count(full)) {
        ALEM_FAIL(source_ + ":" + std::to_string(value.source().begin.line) + ": unknown key '" +
                  full + "'");
      }
    }
  }
  const toml::table& root_;
  std::string source_;
  std::set<std::string> seen_;
};

LinkSpec read_link(Keys& k, const std::string& table, bool required) {
  LinkSpec l;
  l.bandwidth_gbs = k.number(table + ".bandwidth_gbs", 0, required);
  l.latency_us = k.number(table + ".latency_us", 0, required);
  return l;
}

}  // namespace

ClusterSpec parse_cluster_spec(std::string_view toml_text, const std::string& source_name) {
  toml::table root;
  try {
    root = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    ALEM_FAIL(source_name + ":" + std::to_string(where.line) + ":" + std::to_string(where.column) +
              ": not valid TOML: " + std::string(e.description()));
  }
  Keys k(root, source_name);
  ClusterSpec c;
  c.source = source_name;
  c.name = k.text("name", source_name);
  c.kind = k.text("kind", "gpu");
  c.nodes = k.integer("nodes", 1);
  c.devices_per_node = k.integer("node.devices", 0, true);
  c.node_memory_gib = k.number("node.memory_gib", 0);
  c.threads_per_rank = k.integer("node.threads_per_rank", 1);
  c.node_bandwidth_gbs = k.number("node.memory_bandwidth_gbs", 0);
  c.nodes_share_cores = k.boolean("node.shared_cores", false);
  // 12 bits a weight and a 16-byte table per row of 2048 or more weights.
  c.bf16_weight_bytes = k.number("node.bf16_weight_bytes", c.kind == "cpu" ? 1.51 : 2);
  {
    const std::string idle = k.text("node.idle_ranks", c.nodes_share_cores ? "yield" : "auto");
    ALEM_CHECK(idle == "yield" || idle == "poll" || idle == "auto",
               source_name + ": 'node.idle_ranks' must be \"yield\", \"poll\" or \"auto\"");
    c.idle_ranks_yield = idle == "yield";
    c.yield_when_oversubscribed = idle != "poll";
  }
  c.device_memory_gib = k.number("device.memory_gib", 0);
  c.device_bandwidth_gbs = k.number("device.memory_bandwidth_gbs", 0, true);
  c.peak_tflops = k.numbers_in("device.peak_tflops");
  c.compute_efficiency = k.number("efficiency.compute", 1);
  c.bandwidth_efficiency = k.number("efficiency.memory_bandwidth", 1);
  c.layer_overhead_us = k.number("efficiency.layer_overhead_us", 0);
  c.step_overhead_us = k.number("efficiency.step_overhead_us", 0);
  c.token_overhead_us = k.number("efficiency.token_overhead_us", 0);
  c.sequence_overhead_us = k.number("efficiency.sequence_overhead_us", 0);
  c.attention_tflops = k.number("device.attention_tflops", 0);
  {
    const std::string roofline = k.text("efficiency.roofline", c.kind == "cpu" ? "sum" : "max");
    ALEM_CHECK(roofline == "max" || roofline == "sum",
               source_name + ": 'efficiency.roofline' must be \"max\" or \"sum\"");
    c.additive_roofline = roofline == "sum";
  }
  c.sync_us = k.number("efficiency.sync_us", 0);
  c.reserved_gib = k.number("efficiency.reserved_gib", 0);
  c.intra_node = read_link(k, "links.intra_node", true);
  c.inter_node = read_link(k, "links.inter_node", false);
  c.encrypt_inter_node = k.boolean("encryption.inter_node", false);
  c.encrypt_intra_node = k.boolean("encryption.intra_node", false);
  c.aes_gcm_gbs = k.number("encryption.aes_gcm_gbs", 0);
  k.refuse_unknown();
  c.validate();
  return c;
}

ClusterSpec load_cluster_spec(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ALEM_CHECK(in, "cannot read cluster description " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return parse_cluster_spec(text.str(), path);
}

namespace {

// A figure that could not be measured (a division by a zero time on a starved core) is written
// as 0, "not measured", rather than as JSON null.
void zero_non_finite(nlohmann::json& j) {
  if (j.is_number_float() && !std::isfinite(j.get<double>())) j = 0.0;
  if (j.is_structured())
    for (auto& item : j) zero_non_finite(item);
}

}  // namespace

std::string calibration_to_json(const Calibration& c) {
  nlohmann::json j;
  j["format"] = "alem-calibration-v1";
  j["host"] = c.host;
  j["created_utc"] = c.created_utc;
  j["git_revision"] = c.git_revision;
  j["threads"] = c.threads;
  j["matmul_gflops"] = c.matmul_gflops;
  j["matmul_weight_gbs"] = c.matmul_gbs;
  j["read_bandwidth_gbs"] = c.read_bandwidth_gbs;
  j["node_read_bandwidth_gbs"] = c.node_read_bandwidth_gbs;
  j["layer_overhead_us"] = c.layer_overhead_us;
  j["token_overhead_us"] = c.token_overhead_us;
  j["step_overhead_us"] = c.step_overhead_us;
  j["sequence_overhead_us"] = c.sequence_overhead_us;
  j["attention_gflops"] = c.attention_gflops;
  nlohmann::json shares = nlohmann::json::object(), syncs = nlohmann::json::object();
  for (const auto& [ranks, share] : c.rank_core_share) shares[std::to_string(ranks)] = share;
  for (const auto& [ranks, us] : c.sync_us_by_ranks) syncs[std::to_string(ranks)] = us;
  j["rank_core_share"] = shares;
  nlohmann::json batched = nlohmann::json::object();
  for (const auto& [ranks, share] : c.rank_core_share_batched)
    batched[std::to_string(ranks)] = share;
  j["rank_core_share_batched"] = batched;
  nlohmann::json curves = nlohmann::json::object();
  for (const auto& [dtype, curve] : c.matmul_curve) {
    for (const auto& [rows, per_byte] : curve)
      curves[dtype].push_back({{"rows", rows}, {"seconds_per_weight_byte", per_byte}});
  }
  j["matmul_curve"] = curves;
  j["load_probe_gbs"] = c.load_probe_gbs;
  j["load_probe_now_gbs"] = c.load_probe_now_gbs;
  j["sync_us_by_ranks"] = syncs;
  j["aes_gcm_gbs"] = c.aes_gcm_gbs;
  j["sync_us"] = c.sync_us;
  nlohmann::json by_bytes = nlohmann::json::array();
  for (const auto& [bytes, us] : c.sync_us_by_bytes)
    by_bytes.push_back({{"bytes", bytes}, {"us", us}});
  j["sync_us_by_bytes"] = by_bytes;
  if (!c.engine_model.empty()) {
    j["engine"] = {{"model", c.engine_model}, {"decode_step_s", c.engine_decode_step_s}};
    for (const auto& p : c.engine_points) {
      j["engine"]["forward"].push_back({{"tokens", p.tokens},
                                        {"sequences", p.sequences},
                                        {"context", p.context},
                                        {"seconds", p.seconds},
                                        {"matmul_seconds", p.matmul_seconds}});
    }
  }
  j["collective_ranks"] = c.collective_ranks;
  nlohmann::json coll = nlohmann::json::object();
  for (const auto& [op, points] : c.collectives) {
    for (const auto& p : points) coll[op].push_back({{"bytes", p.bytes}, {"seconds", p.seconds}});
  }
  j["collectives"] = coll;
  j["link_fit"] = {{"between_nodes", c.link_between_nodes},
                   {"latency_us", c.fitted_link.latency_us},
                   {"bandwidth_gbs", c.fitted_link.bandwidth_gbs}};
  zero_non_finite(j);
  return j.dump(2) + "\n";
}

Calibration calibration_from_json(const std::string& text, const std::string& source_name) {
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    ALEM_CHECK(j.value("format", "") == "alem-calibration-v1",
               source_name + ": not an alem calibration file (format alem-calibration-v1)");
    Calibration c;
    c.host = j.value("host", "");
    c.created_utc = j.value("created_utc", "");
    c.git_revision = j.value("git_revision", "");
    c.threads = j.value("threads", 1);
    c.matmul_gflops = j.at("matmul_gflops").get<std::map<std::string, double>>();
    c.matmul_gbs = j.at("matmul_weight_gbs").get<std::map<std::string, double>>();
    c.read_bandwidth_gbs = j.value("read_bandwidth_gbs", 0.0);
    c.node_read_bandwidth_gbs = j.value("node_read_bandwidth_gbs", 0.0);
    c.layer_overhead_us = j.value("layer_overhead_us", 0.0);
    c.token_overhead_us = j.value("token_overhead_us", 0.0);
    c.step_overhead_us = j.value("step_overhead_us", 0.0);
    c.sequence_overhead_us = j.value("sequence_overhead_us", 0.0);
    c.attention_gflops = j.value("attention_gflops", 0.0);
    c.load_probe_gbs = j.value("load_probe_gbs", 0.0);
    c.load_probe_now_gbs = j.value("load_probe_now_gbs", 0.0);
    // (Each table held in a local: a range-for over items() of a temporary would dangle.)
    const nlohmann::json shares = j.value("rank_core_share", nlohmann::json::object());
    for (const auto& [ranks, share] : shares.items())
      c.rank_core_share[std::stoi(ranks)] = share.get<double>();
    const nlohmann::json batched = j.value("rank_core_share_batched", nlohmann::json::object());
    for (const auto& [ranks, share] : batched.items())
      c.rank_core_share_batched[std::stoi(ranks)] = share.get<double>();
    const nlohmann::json syncs = j.value("sync_us_by_ranks", nlohmann::json::object());
    for (const auto& [ranks, us] : syncs.items())
      c.sync_us_by_ranks[std::stoi(ranks)] = us.get<double>();
    const nlohmann::json curves = j.value("matmul_curve", nlohmann::json::object());
    for (const auto& [dtype, curve] : curves.items()) {
      for (const auto& p : curve)
        c.matmul_curve[dtype].push_back(
            {p.at("rows").get<double>(), p.at("seconds_per_weight_byte").get<double>()});
      std::sort(c.matmul_curve[dtype].begin(), c.matmul_curve[dtype].end());
    }
    c.aes_gcm_gbs = j.value("aes_gcm_gbs", 0.0);
    c.sync_us = j.value("sync_us", 0.0);
    const nlohmann::json by_bytes = j.value("sync_us_by_bytes", nlohmann::json::array());
    for (const auto& p : by_bytes)
      c.sync_us_by_bytes[p.at("bytes").get<double>()] = p.at("us").get<double>();
    if (j.contains("engine")) {
      c.engine_model = j["engine"].value("model", "");
      c.engine_decode_step_s = j["engine"].value("decode_step_s", 0.0);
      const nlohmann::json forward = j["engine"].value("forward", nlohmann::json::array());
      for (const auto& p : forward) {
        c.engine_points.push_back({p.at("tokens").get<int>(), p.at("sequences").get<int>(),
                                   p.at("context").get<int>(), p.at("seconds").get<double>(),
                                   p.at("matmul_seconds").get<double>()});
      }
    }
    c.collective_ranks = j.value("collective_ranks", 0);
    const nlohmann::json collectives = j.value("collectives", nlohmann::json::object());
    for (const auto& [op, points] : collectives.items()) {
      for (const auto& p : points) c.collectives[op].push_back({p.at("bytes"), p.at("seconds")});
    }
    if (j.contains("link_fit")) {
      c.fitted_link.latency_us = j["link_fit"].value("latency_us", 0.0);
      c.fitted_link.bandwidth_gbs = j["link_fit"].value("bandwidth_gbs", 0.0);
      c.link_between_nodes = j["link_fit"].value("between_nodes", false);
    }
    return c;
  } catch (const nlohmann::json::exception& e) {
    ALEM_FAIL(source_name + ": malformed calibration file: " + e.what());
  }
}

Calibration load_calibration(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ALEM_CHECK(in, "cannot read calibration file " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return calibration_from_json(text.str(), path);
}

LinkSpec fit_alpha_beta(const std::vector<Calibration::CollectivePoint>& points) {
  ALEM_CHECK(points.size() >= 2, "an alpha-beta fit needs at least two message sizes");
  // Least squares of t = a + b * bytes with each point weighted by 1/t^2 (relative error), so
  // the latency is set by the small messages and the bandwidth by the large ones.
  double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const auto& p : points) {
    ALEM_CHECK(p.seconds > 0 && p.bytes >= 0, "alpha-beta fit: times must be positive");
    const double w = 1 / (p.seconds * p.seconds);
    sw += w, sx += w * p.bytes, sy += w * p.seconds, sxx += w * p.bytes * p.bytes,
        sxy += w * p.bytes * p.seconds;
  }
  const double det = sw * sxx - sx * sx;
  ALEM_CHECK(det > 0, "alpha-beta fit: the message sizes must differ");
  double beta = (sw * sxy - sx * sy) / det;
  double alpha = (sy - beta * sx) / sw;
  if (beta <= 0) beta = 1e-12;  // flat times: bandwidth beyond measurement
  if (alpha < 0) alpha = 0;
  LinkSpec l;
  l.latency_us = alpha * 1e6;
  l.bandwidth_gbs = 1 / beta / 1e9;
  return l;
}

void apply_calibration(ClusterSpec& cluster, const Calibration& c, const std::string& path) {
  for (const auto& [dtype, gflops] : c.matmul_gflops) {
    if (gflops > 0) cluster.peak_tflops[dtype] = gflops / 1e3 / c.threads;
  }
  // The weight-streaming rate of the matmul is what decode sees, per dtype.
  for (const auto& [dtype, gbs] : c.matmul_gbs) {
    if (gbs > 0) cluster.weight_stream_gbs[dtype] = gbs / c.threads;
  }
  if (c.read_bandwidth_gbs > 0) cluster.device_bandwidth_gbs = c.read_bandwidth_gbs / c.threads;
  if (c.node_read_bandwidth_gbs > 0) cluster.node_bandwidth_gbs = c.node_read_bandwidth_gbs;
  cluster.compute_efficiency = 1;
  cluster.bandwidth_efficiency = 1;
  // Figures of the full calibration, scaled to the load the latest probe saw.
  const double load = c.load_scale();
  for (auto& [dtype, tflops] : cluster.peak_tflops) tflops *= load;
  for (auto& [dtype, gbs] : cluster.weight_stream_gbs) gbs *= load;
  if (!c.engine_model.empty()) {
    // The engine's own residuals: every cost besides the matmuls, per layer, token and step.
    cluster.layer_overhead_us = c.layer_overhead_us;
    cluster.token_overhead_us = c.token_overhead_us;
    cluster.step_overhead_us = c.step_overhead_us;
    cluster.sequence_overhead_us = c.sequence_overhead_us;
    if (c.attention_gflops > 0)
      cluster.attention_tflops = c.attention_gflops / 1e3 / c.threads * load;
    cluster.layer_overhead_us /= load;
    cluster.token_overhead_us /= load;
    cluster.step_overhead_us /= load;
    cluster.sequence_overhead_us /= load;
  }
  for (const auto& [ranks, share] : c.rank_core_share) cluster.rank_core_share[ranks] = share;
  for (const auto& [ranks, share] : c.rank_core_share_batched)
    cluster.rank_core_share_batched[ranks] = share;
  for (const auto& [dtype, curve] : c.matmul_curve) {
    cluster.matmul_curve[dtype] = curve;
    for (auto& point : cluster.matmul_curve[dtype]) point.second *= c.threads / load;
  }
  for (const auto& [ranks, us] : c.sync_us_by_ranks) cluster.sync_us_by_ranks[ranks] = us;
  if (c.fitted_link.bandwidth_gbs > 0) {
    LinkSpec link = c.fitted_link;
    // The measured one-way times per size (kept non-decreasing: a median that dips below a
    // smaller message's is noise), and the largest message's rate as the sustained rate.
    const auto it = c.collectives.find("send_recv");
    if (it != c.collectives.end() && it->second.size() >= 2) {
      for (const auto& p : it->second) link.measured.push_back({p.bytes, p.seconds});
      std::sort(link.measured.begin(), link.measured.end());
      for (size_t i = 1; i < link.measured.size(); ++i)
        link.measured[i].second = std::max(link.measured[i].second, link.measured[i - 1].second);
      const auto& [bytes, seconds] = link.measured.back();
      if (seconds > 0) link.sustained_gbs = bytes / seconds / 1e9;
    }
    (c.link_between_nodes ? cluster.inter_node : cluster.intra_node) = link;
  }
  if (c.collective_ranks > 1) {  // the all-reduce as measured over these ranks, per size
    const auto ar = c.collectives.find("all_reduce");
    if (ar != c.collectives.end() && ar->second.size() >= 2) {
      cluster.all_reduce_measured.clear();
      for (const auto& p : ar->second) cluster.all_reduce_measured.push_back({p.bytes, p.seconds});
      std::sort(cluster.all_reduce_measured.begin(), cluster.all_reduce_measured.end());
      for (size_t i = 1; i < cluster.all_reduce_measured.size(); ++i)
        cluster.all_reduce_measured[i].second = std::max(cluster.all_reduce_measured[i].second,
                                                         cluster.all_reduce_measured[i - 1].second);
      cluster.all_reduce_loaded.clear();
      const auto loaded = c.collectives.find("all_reduce_loaded");
      if (loaded != c.collectives.end()) {
        for (const auto& p : loaded->second)
          cluster.all_reduce_loaded.push_back({p.bytes, p.seconds});
        std::sort(cluster.all_reduce_loaded.begin(), cluster.all_reduce_loaded.end());
      }
      cluster.all_reduce_ranks = c.collective_ranks;
      cluster.all_reduce_between_nodes = c.link_between_nodes;
    }
  }
  if (!c.sync_us_by_bytes.empty() && c.collective_ranks > 1) {
    cluster.sync_us_by_bytes = c.sync_us_by_bytes;
    cluster.sync_ranks = c.collective_ranks;
  }
  if (c.aes_gcm_gbs > 0) cluster.aes_gcm_gbs = c.aes_gcm_gbs;
  if (c.collective_ranks > 1) cluster.sync_us = c.sync_us;
  cluster.calibration = path;
}

}  // namespace alem::plan
