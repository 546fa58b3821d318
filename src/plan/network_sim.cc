// The network simulation (see network_sim.h). Providers eligible for routing are kept in an
// ordered set keyed by COCOON's score (running x average request time), so each routing
// decision is O(log providers) and 1000 providers x an hour of traffic run in seconds.
#include "plan/network_sim.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <queue>
#include <random>
#include <set>

#include "core/error.h"

namespace alem::plan {
namespace {

struct Provider {
  int cls = 0;
  int running = 0;
  int max_active = 0;
  bool alive = true;
  uint64_t epoch = 0;        // bumps at each failure: finishes of an older epoch are void
  double avg_time = 0;       // moving average of its request times (COCOON's score input)
  double busy_integral = 0;  // integral of running over time
  double last_change = 0;
  double tiebreak = 0;  // redrawn at each change: equal scores are chosen among at random
  double score() const { return running * avg_time; }
};

struct Request {
  double arrival = 0, prompt = 0, output = 0;
  int attempts = 0;
};

enum class EventKind { Arrival, Finish, Fail, Recover, LeaseExpired, BurstToggle };

struct Event {
  double time;
  EventKind kind;
  int provider;
  int64_t request;
  uint64_t epoch;
  bool operator>(const Event& o) const { return time > o.time; }
};

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1)));
  std::nth_element(v.begin(), v.begin() + i, v.end());
  return v[i];
}

}  // namespace

SimulationResult simulate_network(const SimulationConfig& c) {
  ALEM_CHECK(!c.classes.empty(), "simulate: no providers");
  ALEM_CHECK(c.arrival_rate > 0 && c.duration_s > 0, "simulate: rate and duration must be > 0");
  ALEM_CHECK(c.burst_factor >= 1 && c.burst_fraction > 0 && c.burst_fraction < 1 &&
                 c.burst_factor * c.burst_fraction < 1 + c.burst_fraction,
             "simulate: burst factor x burst fraction must stay below 1 + fraction (the rate "
             "between bursts would be negative)");
  const auto wall_start = std::chrono::steady_clock::now();
  std::mt19937_64 rng(c.seed);
  std::vector<Provider> providers;
  for (size_t k = 0; k < c.classes.size(); ++k) {
    const ProviderClass& pc = c.classes[k];
    ALEM_CHECK(pc.max_active >= 1 && pc.replicas >= 1 && pc.count >= 0,
               "simulate: provider class " + pc.name + " needs max_active and replicas >= 1");
    ALEM_CHECK(pc.ttft_s.size() >= size_t((pc.max_active + pc.replicas - 1) / pc.replicas) &&
                   pc.itl_s.size() == pc.ttft_s.size(),
               "simulate: provider class " + pc.name + " lacks step times up to its batch");
    for (int i = 0; i < pc.count; ++i) {
      Provider p;
      p.cls = static_cast<int>(k);
      p.max_active = pc.max_active;
      p.avg_time = pc.ttft_s[0] + (c.output_mean - 1) * pc.itl_s[0];
      providers.push_back(p);
    }
  }
  ALEM_CHECK(!providers.empty(), "simulate: no providers");
  auto cmp = [&](int a, int b) {
    const double sa = providers[a].score(), sb = providers[b].score();
    if (sa != sb) return sa < sb;
    if (providers[a].tiebreak != providers[b].tiebreak)
      return providers[a].tiebreak < providers[b].tiebreak;
    return a < b;
  };
  std::set<int, decltype(cmp)> eligible(cmp);
  {
    std::uniform_real_distribution<double> draw(0, 1);
    for (size_t i = 0; i < providers.size(); ++i) {
      providers[i].tiebreak = draw(rng);
      eligible.insert(static_cast<int>(i));
    }
  }

  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> events;
  std::vector<Request> requests;
  std::deque<int64_t> waiting;  // at the proxy: no provider eligible
  std::vector<double> latencies, waits;
  SimulationResult r;
  std::vector<double> class_requests(c.classes.size(), 0), class_time(c.classes.size(), 0);

  const double mu_p = std::log(c.prompt_mean) - c.length_sigma * c.length_sigma / 2;
  const double mu_o = std::log(c.output_mean) - c.length_sigma * c.length_sigma / 2;
  std::lognormal_distribution<double> prompt_len(mu_p, c.length_sigma),
      output_len(mu_o, c.length_sigma);
  std::uniform_real_distribution<double> unit(0, 1);
  auto exp_draw = [&](double mean) { return -mean * std::log(1 - unit(rng)); };

  // Bursty arrivals: rate x factor for `burst_fraction` of the time, the rest lower, same mean.
  bool in_burst = false;
  const double burst_rate = c.arrival_rate * c.burst_factor;
  const double calm_rate =
      (c.arrival_rate - c.burst_fraction * burst_rate) / (1 - c.burst_fraction);
  auto rate_now = [&] {
    return c.burst_factor > 1 ? (in_burst ? burst_rate : calm_rate) : c.arrival_rate;
  };
  events.push({exp_draw(1 / c.arrival_rate), EventKind::Arrival, -1, -1, 0});
  if (c.burst_factor > 1)
    events.push({exp_draw(c.burst_mean_s * (1 - c.burst_fraction) / c.burst_fraction),
                 EventKind::BurstToggle, -1, -1, 0});
  if (c.mtbf_s > 0) {
    for (size_t i = 0; i < providers.size(); ++i)
      events.push({exp_draw(c.mtbf_s), EventKind::Fail, static_cast<int>(i), -1, 0});
  }

  auto account = [&](Provider& p, double now) {
    p.busy_integral += p.running * (now - p.last_change);
    p.last_change = now;
  };
  auto reinsert = [&](int id, auto&& change) {
    Provider& p = providers[id];
    eligible.erase(id);
    change(p);
    p.tiebreak = unit(rng);
    if (p.alive && p.running < p.max_active) eligible.insert(id);
  };
  auto dispatch = [&](int64_t rid, double now) -> bool {
    if (eligible.empty()) return false;
    const int id = *eligible.begin();
    const ProviderClass& pc = c.classes[providers[id].cls];
    double service = 0;
    reinsert(id, [&](Provider& p) {
      account(p, now);
      ++p.running;
      const int batch = (p.running + pc.replicas - 1) / pc.replicas;
      const Request& q = requests[rid];
      service = pc.ttft_s[batch - 1] * q.prompt / c.prompt_mean +
                std::max(0.0, q.output - 1) * pc.itl_s[batch - 1];
    });
    ++requests[rid].attempts;
    class_requests[providers[id].cls] += 1;
    events.push({now + service, EventKind::Finish, id, rid, providers[id].epoch});
    return true;
  };
  auto submit = [&](int64_t rid, double now) {
    if (!dispatch(rid, now)) waiting.push_back(rid);
  };
  auto drain_waiting = [&](double now) {
    while (!waiting.empty() && !eligible.empty()) {
      const int64_t rid = waiting.front();
      waiting.pop_front();
      waits.push_back(now - requests[rid].arrival);
      dispatch(rid, now);
    }
  };

  double now = 0;
  while (!events.empty()) {
    const Event e = events.top();
    if (e.time > c.duration_s) break;
    events.pop();
    now = e.time;
    switch (e.kind) {
      case EventKind::Arrival: {
        Request q;
        q.arrival = now;
        q.prompt = std::max(1.0, prompt_len(rng));
        q.output = std::max(1.0, output_len(rng));
        requests.push_back(q);
        r.submitted += 1;
        submit(static_cast<int64_t>(requests.size()) - 1, now);
        events.push({now + exp_draw(1 / rate_now()), EventKind::Arrival, -1, -1, 0});
        break;
      }
      case EventKind::BurstToggle:
        in_burst = !in_burst;
        events.push(
            {now + exp_draw(in_burst ? c.burst_mean_s
                                     : c.burst_mean_s * (1 - c.burst_fraction) / c.burst_fraction),
             EventKind::BurstToggle, -1, -1, 0});
        break;
      case EventKind::Finish: {
        Provider& p = providers[e.provider];
        if (e.epoch != p.epoch) break;  // the provider failed meanwhile: its lease decides
        const Request& q = requests[e.request];
        const double took = now - q.arrival;
        latencies.push_back(took);
        r.completed += 1;
        class_time[p.cls] += took;
        reinsert(e.provider, [&](Provider& pp) {
          account(pp, now);
          --pp.running;
          pp.avg_time = 0.98 * pp.avg_time + 0.02 * took;
        });
        drain_waiting(now);
        break;
      }
      case EventKind::Fail: {
        r.failures += 1;
        // The requests it held come back when their leases expire: its pending finishes
        // become lease expiries (rare events, so a pass over the queue is cheap enough).
        Provider& p = providers[e.provider];
        std::vector<Event> all;
        all.reserve(events.size());
        while (!events.empty()) {
          Event x = events.top();
          events.pop();
          if (x.kind == EventKind::Finish && x.provider == e.provider && x.epoch == p.epoch)
            x = {now + c.lease_s, EventKind::LeaseExpired, -1, x.request, 0};
          all.push_back(x);
        }
        for (const Event& x : all) events.push(x);
        reinsert(e.provider, [&](Provider& pp) {
          account(pp, now);
          pp.alive = false;
          pp.running = 0;
          ++pp.epoch;
        });
        events.push({now + c.repair_s, EventKind::Recover, e.provider, -1, 0});
        break;
      }
      case EventKind::Recover:
        reinsert(e.provider, [&](Provider& p) {
          account(p, now);
          p.alive = true;
        });
        events.push({now + exp_draw(c.mtbf_s), EventKind::Fail, e.provider, -1, 0});
        drain_waiting(now);
        break;
      case EventKind::LeaseExpired: {
        Request& q = requests[e.request];
        if (q.attempts >= c.max_attempts) {
          r.lost += 1;
          break;
        }
        r.redelivered += 1;
        submit(e.request, now);
        break;
      }
    }
  }
  r.unfinished = r.submitted - r.completed - r.lost;
  r.latency_p50 = percentile(latencies, 0.5);
  r.latency_p95 = percentile(latencies, 0.95);
  r.latency_p99 = percentile(latencies, 0.99);
  r.queue_wait_p95 = percentile(waits, 0.95);
  const double span = std::min(now, c.duration_s);
  for (size_t k = 0; k < c.classes.size(); ++k) {
    ClassResult cr;
    cr.name = c.classes[k].name;
    cr.providers = c.classes[k].count;
    cr.gpus = c.classes[k].count * c.classes[k].gpus;
    cr.requests = class_requests[k];
    double busy = 0;
    for (Provider& p : providers) {
      if (p.cls != static_cast<int>(k)) continue;
      account(p, span);
      busy += p.busy_integral;
    }
    if (cr.providers > 0 && span > 0) {
      cr.requests_per_provider_s = cr.requests / cr.providers / span;
      cr.requests_per_gpu_s = cr.requests / std::max(1, cr.gpus) / span;
      cr.mean_running = busy / cr.providers / span;
      cr.slot_utilisation = cr.mean_running / c.classes[k].max_active;
    }
    cr.mean_request_s = cr.requests > 0 ? class_time[k] / cr.requests : 0;
    r.classes.push_back(cr);
  }
  r.wall_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  return r;
}

}  // namespace alem::plan
