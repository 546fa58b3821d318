// Prometheus text exposition for the gateway's metrics (see the header).
#include "serve/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "engine/serving_engine.h"

namespace alem::serve {
namespace {

std::string format_number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

std::string label_value(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

void header(std::string& out, const std::string& name, const char* type, const char* help) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void sample(std::string& out, const std::string& name, const std::string& labels, double value) {
  out += name;
  if (!labels.empty()) {
    out += '{';
    out += labels;
    out += '}';
  }
  out += ' ';
  out += format_number(value);
  out += '\n';
}

std::string replica_label(int replica) {
  return "replica=\"" + std::to_string(replica) + "\"";
}

// Latency buckets in seconds, from a fast decode step to a long queue wait.
std::vector<double> latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25, 0.5,
          0.75,  1.0,    2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0};
}

// Sequence lengths in tokens: 1-2-5 steps (as vLLM's) up to beyond any context length.
std::vector<double> length_buckets() {
  std::vector<double> out;
  for (double decade = 1; decade <= 100000; decade *= 10) {
    for (double step : {1.0, 2.0, 5.0}) out.push_back(decade * step);
  }
  return out;
}

}  // namespace

ReplicaGauges replica_gauges(const ReplicaStats& s) {
  ReplicaGauges g;
  g.replica = s.replica;
  g.running_requests = s.running;
  g.waiting_requests = s.waiting;
  g.kv_blocks_used = s.kv_blocks_used;
  g.kv_blocks_cached = s.kv_blocks_cached;
  g.kv_blocks_total = s.kv_blocks_total;
  g.steps = s.steps;
  g.preemptions = s.preemptions;
  g.prefix_cache_queries = s.prefix_cache_queries;
  g.prefix_cache_hits = s.prefix_cache_hits;
  g.moe_tokens_per_expert = s.moe_tokens_per_expert;
  g.moe_ep_size = s.moe_ep_size;
  return g;
}

FinishedRequestFigures finished_request_figures(const RequestEvent& e) {
  FinishedRequestFigures f;
  f.prompt_tokens = e.usage.prompt_tokens;
  f.generation_tokens = e.usage.completion_tokens;
  f.queue_seconds = e.timings.queue_seconds;
  f.prefill_seconds = e.timings.prefill_seconds;
  f.decode_seconds = e.timings.decode_seconds;
  return f;
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {
  ALEM_CHECK(std::is_sorted(bounds_.begin(), bounds_.end()), "histogram bounds must be sorted");
}

void Histogram::observe(double value) {
  std::lock_guard<std::mutex> lock(mutex_);
  const size_t bucket = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  ++counts_[bucket];
  sum_ += value;
  ++count_;
}

uint64_t Histogram::count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return count_;
}

void Histogram::render(const std::string& name, const std::string& labels, std::string& out) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const std::string prefix = labels.empty() ? "" : labels + ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    const std::string le = i < bounds_.size() ? format_number(bounds_[i]) : "+Inf";
    sample(out, name + "_bucket", prefix + "le=\"" + le + "\"", static_cast<double>(cumulative));
  }
  sample(out, name + "_sum", labels, sum_);
  sample(out, name + "_count", labels, static_cast<double>(count_));
}

ServingMetrics::Replica::Replica()
    : ttft(latency_buckets()),
      itl(latency_buckets()),
      latency(latency_buckets()),
      queue_time(latency_buckets()),
      prefill_time(latency_buckets()),
      decode_time(latency_buckets()),
      prompt_length(length_buckets()),
      generation_length(length_buckets()) {
  second_of_slot.fill(-1);
}

ServingMetrics::ServingMetrics(int num_replicas) {
  ALEM_CHECK(num_replicas >= 1, "metrics need at least one replica");
  for (int i = 0; i < num_replicas; ++i) replicas_.push_back(std::make_unique<Replica>());
}

ServingMetrics::Replica& ServingMetrics::replica(int index) {
  ALEM_CHECK(index >= 0 && index < static_cast<int>(replicas_.size()),
             "metrics: no replica " + std::to_string(index));
  return *replicas_[index];
}

const ServingMetrics::Replica& ServingMetrics::replica(int index) const {
  return const_cast<ServingMetrics*>(this)->replica(index);
}

int64_t ServingMetrics::now_second() const {
  return std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - start_).count();
}

void ServingMetrics::add_prompt_tokens(int r, int64_t tokens) {
  std::lock_guard<std::mutex> lock(mutex_);
  replica(r).prompt_tokens += tokens;
}

void ServingMetrics::add_generation_tokens(int r, int64_t tokens) {
  std::lock_guard<std::mutex> lock(mutex_);
  Replica& rep = replica(r);
  rep.generation_tokens += tokens;
  const int64_t second = now_second();
  const size_t slot = static_cast<size_t>(second % rep.per_second.size());
  if (rep.second_of_slot[slot] != second) {
    rep.second_of_slot[slot] = second;
    rep.per_second[slot] = 0;
  }
  rep.per_second[slot] += tokens;
}

void ServingMetrics::observe_time_to_first_token(int r, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  replica(r).ttft.observe(seconds);
}

void ServingMetrics::observe_inter_token_latency(int r, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  replica(r).itl.observe(seconds);
}

void ServingMetrics::observe_request_latency(int r, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  replica(r).latency.observe(seconds);
}

void ServingMetrics::observe_finished_request(int r, const FinishedRequestFigures& f) {
  std::lock_guard<std::mutex> lock(mutex_);
  Replica& rep = replica(r);
  rep.prompt_length.observe(static_cast<double>(f.prompt_tokens));
  rep.generation_length.observe(static_cast<double>(f.generation_tokens));
  if (f.queue_seconds >= 0) rep.queue_time.observe(f.queue_seconds);
  if (f.prefill_seconds >= 0) rep.prefill_time.observe(f.prefill_seconds);
  if (f.decode_seconds >= 0) rep.decode_time.observe(f.decode_seconds);
}

void ServingMetrics::set_model_name(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  model_name_ = name;
}

void ServingMetrics::count_success(int r, const std::string& finish_reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++replica(r).successes[finish_reason];
}

void ServingMetrics::count_failure(int r, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++replica(r).failures[reason];
}

void ServingMetrics::count_rejected(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++rejected_[reason];
}

double ServingMetrics::generation_tokens_per_second(int r) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const Replica& rep = replica(r);
  // The last kRateWindowSeconds whole seconds (the current, partial second is left out).
  const int64_t now = now_second();
  uint64_t tokens = 0;
  for (size_t slot = 0; slot < rep.per_second.size(); ++slot) {
    const int64_t s = rep.second_of_slot[slot];
    if (s >= 0 && s < now && s >= now - kRateWindowSeconds) tokens += rep.per_second[slot];
  }
  const int64_t window = std::min<int64_t>(kRateWindowSeconds, std::max<int64_t>(now, 1));
  return static_cast<double>(tokens) / static_cast<double>(window);
}

void ServingMetrics::set_job(const std::string& job_id, const std::string& node_list,
                             int restart_count) {
  std::lock_guard<std::mutex> lock(mutex_);
  job_id_ = job_id;
  node_list_ = node_list;
  restart_count_ = restart_count;
}

std::string ServingMetrics::labels(int replica) const {
  std::string out = replica_label(replica);
  if (!model_name_.empty()) out += ",model_name=\"" + label_value(model_name_) + "\"";
  return out;
}

// Mixture-of-experts load balance: assignments per expert and per expert-parallel slice.
void ServingMetrics::render_moe_load(const std::vector<ReplicaGauges>& gauges,
                                     std::string& out) const {
  bool any = false;
  for (const ReplicaGauges& r : gauges) any = any || !r.moe_tokens_per_expert.empty();
  if (!any) return;
  header(out, "alem_moe_expert_tokens_total", "counter",
         "Token-to-expert assignments per expert (sparse layers of the first pipeline stage).");
  for (const ReplicaGauges& r : gauges) {
    for (size_t e = 0; e < r.moe_tokens_per_expert.size(); ++e) {
      sample(out, "alem_moe_expert_tokens_total",
             labels(r.replica) + ",expert=\"" + std::to_string(e) + "\"",
             static_cast<double>(r.moe_tokens_per_expert[e]));
    }
  }
  header(out, "alem_moe_ep_rank_tokens_total", "counter",
         "Token-to-expert assignments per expert-parallel slice (its experts summed).");
  for (const ReplicaGauges& r : gauges) {
    const size_t experts = r.moe_tokens_per_expert.size();
    const int ep = std::max(1, r.moe_ep_size);
    if (experts == 0 || experts % static_cast<size_t>(ep) != 0) continue;
    const size_t per_slice = experts / static_cast<size_t>(ep);
    for (int slice = 0; slice < ep; ++slice) {
      int64_t total = 0;
      for (size_t e = slice * per_slice; e < (slice + 1) * per_slice; ++e) {
        total += r.moe_tokens_per_expert[e];
      }
      sample(out, "alem_moe_ep_rank_tokens_total",
             labels(r.replica) + ",ep_rank=\"" + std::to_string(slice) + "\"",
             static_cast<double>(total));
    }
  }
}

std::string ServingMetrics::render(const std::vector<ReplicaGauges>& gauges) const {
  const size_t n = replicas_.size();
  std::vector<double> rates(n);
  for (size_t i = 0; i < n; ++i) rates[i] = generation_tokens_per_second(static_cast<int>(i));

  std::string out;
  std::lock_guard<std::mutex> lock(mutex_);
  if (!job_id_.empty()) {
    header(out, "alem_job_info", "gauge", "The Slurm job this server runs in (always 1).");
    sample(out, "alem_job_info",
           "job_id=\"" + label_value(job_id_) + "\",node_list=\"" + label_value(node_list_) + "\"",
           1);
    header(out, "alem_job_restarts", "gauge",
           "Times Slurm requeued this job (SLURM_RESTART_COUNT).");
    sample(out, "alem_job_restarts", "", restart_count_);
  }
  // Read from the engine's snapshot. Prometheus wants counters (and only counters) to end in
  // _total, so the pool's size is alem_kv_blocks_capacity.
  struct EngineSeries {
    const char* name;
    const char* type;
    const char* help;
    int64_t ReplicaGauges::*field;
  };
  static const EngineSeries kEngineSeries[] = {
      {"alem_requests_running", "gauge", "Sequences the engine is computing.",
       &ReplicaGauges::running_requests},
      {"alem_requests_waiting", "gauge", "Sequences queued for the engine.",
       &ReplicaGauges::waiting_requests},
      {"alem_kv_blocks_used", "gauge", "KV cache blocks referenced by running sequences.",
       &ReplicaGauges::kv_blocks_used},
      {"alem_kv_blocks_cached", "gauge", "KV cache blocks holding reusable prefixes.",
       &ReplicaGauges::kv_blocks_cached},
      {"alem_kv_blocks_capacity", "gauge", "KV cache blocks in the pool.",
       &ReplicaGauges::kv_blocks_total},
      {"alem_engine_steps_total", "counter", "Engine steps run.", &ReplicaGauges::steps},
      {"alem_num_preemptions_total", "counter",
       "Sequences preempted (KV blocks taken back; recomputed later).",
       &ReplicaGauges::preemptions},
      {"alem_prefix_cache_queries_total", "counter",
       "Tokens looked up in the prefix cache, at every admission.",
       &ReplicaGauges::prefix_cache_queries},
      {"alem_prefix_cache_hits_total", "counter",
       "Tokens found in the prefix cache, at every admission.", &ReplicaGauges::prefix_cache_hits},
  };
  for (const EngineSeries& g : kEngineSeries) {
    header(out, g.name, g.type, g.help);
    for (const ReplicaGauges& r : gauges) {
      sample(out, g.name, labels(r.replica), static_cast<double>(r.*(g.field)));
    }
  }
  bool header_written = false;
  for (const ReplicaGauges& r : gauges) {
    if (r.kv_blocks_total <= 0) continue;
    if (!header_written) {
      header(out, "alem_kv_cache_usage_ratio", "gauge", "Fraction of KV blocks in use.");
      header_written = true;
    }
    sample(out, "alem_kv_cache_usage_ratio", labels(r.replica),
           static_cast<double>(r.kv_blocks_used) / static_cast<double>(r.kv_blocks_total));
  }

  render_moe_load(gauges, out);

  header(out, "alem_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.");
  for (size_t i = 0; i < n; ++i) {
    sample(out, "alem_prompt_tokens_total", labels(i), replicas_[i]->prompt_tokens);
  }
  header(out, "alem_generation_tokens_total", "counter", "Completion tokens generated.");
  for (size_t i = 0; i < n; ++i) {
    sample(out, "alem_generation_tokens_total", labels(i), replicas_[i]->generation_tokens);
  }
  header(out, "alem_generation_tokens_per_second", "gauge",
         "Completion tokens per second over the last 10 s.");
  for (size_t i = 0; i < n; ++i)
    sample(out, "alem_generation_tokens_per_second", labels(i), rates[i]);

  struct HistogramSeries {
    const char* name;
    const char* help;
    Histogram Replica::*histogram;
  };
  static const HistogramSeries kHistograms[] = {
      {"alem_time_to_first_token_seconds", "From request arrival to its first completion token.",
       &Replica::ttft},
      {"alem_inter_token_latency_seconds", "Between consecutive completion tokens of one sequence.",
       &Replica::itl},
      {"alem_request_latency_seconds", "From arrival to the last token.", &Replica::latency},
      {"alem_request_queue_time_seconds",
       "Per sequence: waiting in the engine's queue until first admitted.", &Replica::queue_time},
      {"alem_request_prefill_time_seconds",
       "Per sequence: from first admission to its first token.", &Replica::prefill_time},
      {"alem_request_decode_time_seconds", "Per sequence: from its first token to its end.",
       &Replica::decode_time},
      {"alem_request_prompt_tokens", "Per finished sequence: prompt length in tokens.",
       &Replica::prompt_length},
      {"alem_request_generation_tokens", "Per finished sequence: generated tokens.",
       &Replica::generation_length},
  };
  for (const HistogramSeries& h : kHistograms) {
    header(out, h.name, "histogram", h.help);
    for (size_t i = 0; i < n; ++i) ((*replicas_[i]).*(h.histogram)).render(h.name, labels(i), out);
  }

  header(out, "alem_request_success_total", "counter", "Requests that ran to an end.");
  for (size_t i = 0; i < n; ++i) {
    for (const char* reason : {"stop", "length"}) {  // always present, so rates work from zero
      auto it = replicas_[i]->successes.find(reason);
      const uint64_t v = it == replicas_[i]->successes.end() ? 0 : it->second;
      sample(out, "alem_request_success_total", labels(i) + ",finish_reason=\"" + reason + "\"", v);
    }
  }
  header(out, "alem_request_failure_total", "counter",
         "Requests that ended without finishing (client gone, aborted, engine error).");
  for (size_t i = 0; i < n; ++i) {
    for (const char* reason : {"client_disconnect", "aborted", "error"}) {
      auto it = replicas_[i]->failures.find(reason);
      const uint64_t v = it == replicas_[i]->failures.end() ? 0 : it->second;
      sample(out, "alem_request_failure_total", labels(i) + ",reason=\"" + reason + "\"", v);
    }
  }
  header(out, "alem_requests_rejected_total", "counter",
         "Requests answered with an error before reaching the engine.");
  const std::string model =
      model_name_.empty() ? "" : ",model_name=\"" + label_value(model_name_) + "\"";
  for (const char* reason : {"invalid", "overloaded", "unavailable", "too_large"}) {
    auto it = rejected_.find(reason);
    sample(out, "alem_requests_rejected_total",
           std::string("reason=\"") + label_value(reason) + "\"" + model,
           it == rejected_.end() ? 0 : it->second);
  }
  std::lock_guard<std::mutex> sources_lock(sources_mutex_);
  for (const auto& source : sources_) out += source();
  return out;
}

void ServingMetrics::add_source(std::function<std::string()> source) {
  std::lock_guard<std::mutex> lock(sources_mutex_);
  sources_.push_back(std::move(source));
}

}  // namespace alem::serve
