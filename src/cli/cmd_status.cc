// `alem status`: asks a running job's gateway (GET /v1/status) what it is doing: replicas, ranks
// and hosts, load state, queue depth, tokens/s, restart count. The gateway is found by --url,
// or, for a Slurm job, by the gateway file the job wrote in its working folder (--job ID).
// Exit codes: 0 ready, 3 loading or draining, 4 failed, 1 unreachable or not an alem gateway.
// A gateway that requires an API key gets the one from ALEM_API_KEY_FILE or ALEM_API_KEY, the
// same variables `alem serve` reads.
#include <httplib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <regex>

#include "cli/commands.h"
#include "core/error.h"
#include "core/json_input.h"
#include "serve/api_key.h"
#include "serve/job_status.h"

namespace alem::cli {
namespace {

struct StatusOptions {
  std::string url;
  std::string job_id;
  std::string gateway_file;
  bool json = false;
  int timeout_s = 5;
};

// The API key the job was started with, from the environment `alem serve` also reads; empty
// when none is set (the gateway then needs none, or answers 401 with a clear message below).
std::string api_key_from_environment() {
  if (const char* file = std::getenv("ALEM_API_KEY_FILE"); file && *file) {
    return serve::read_api_key_file(file);
  }
  if (const char* key = std::getenv("ALEM_API_KEY"); key && *key) return key;
  return "";
}

int run_status(const StatusOptions& o) {
  std::string url = o.url;
  if (url.empty()) {
    std::string file = o.gateway_file;
    if (file.empty() && !o.job_id.empty()) file = serve::default_gateway_file(o.job_id);
    if (file.empty()) {
      const char* job = std::getenv("SLURM_JOB_ID");
      ALEM_CHECK(job != nullptr,
                 "say which job: --job ID (in the folder the job runs in), --gateway-file FILE "
                 "or --url http://HOST:PORT");
      file = serve::default_gateway_file(job);
    }
    url = serve::read_gateway_url(file);
  }
  static const std::regex kUrl(R"(^(https?://[^/]+)/*$)");
  std::smatch m;
  ALEM_CHECK(std::regex_match(url, m, kUrl),
             "'" + url + "' is not a gateway URL like http://host:8000");
  httplib::Client client(m[1].str());
  client.set_connection_timeout(o.timeout_s, 0);
  client.set_read_timeout(o.timeout_s, 0);
  httplib::Headers headers;
  if (std::string key = api_key_from_environment(); !key.empty()) {
    headers.emplace("Authorization", "Bearer " + key);
    std::fill(key.begin(), key.end(), '\0');
  }
  const httplib::Result res = client.Get("/v1/status", headers);
  ALEM_CHECK(res, "the gateway at " + url + " does not answer (" + httplib::to_string(res.error()) +
                      "): the job may have ended, be requeued, or not have started yet");
  ALEM_CHECK(res->status != 401, "the gateway at " + url +
                                     " requires an API key: set ALEM_API_KEY_FILE or ALEM_API_KEY");
  ALEM_CHECK(res->status == 200, "the gateway at " + url + " answered HTTP " +
                                     std::to_string(res->status) + " to /v1/status");
  nlohmann::json doc;
  try {
    doc = parse_json_bounded(res->body);  // bounded depth; errors never quote the body
  } catch (const JsonInputError& e) {
    ALEM_FAIL("the gateway at " + url + " sent a status that is not JSON: " + e.what());
  }
  if (o.json) {
    std::printf("%s\n", doc.dump(2).c_str());
  } else {
    std::printf("gateway     %s\n%s", url.c_str(), serve::format_status(doc).c_str());
  }
  const std::string state = doc.value("state", "");
  if (state == "ready") return 0;
  if (state == "failed") return 4;
  return 3;
}

}  // namespace

void add_status_command(CLI::App& app) {
  auto o = std::make_shared<StatusOptions>();
  CLI::App* cmd = app.add_subcommand(
      "status", "Show a running job: replicas, ranks and hosts, state, queue, tokens/s, restarts");
  cmd->add_option("--url", o->url, "The gateway, e.g. http://node17:8000");
  cmd->add_option("--job", o->job_id,
                  "Slurm job id: read alem-gateway-<ID>.json in the current folder");
  cmd->add_option("--gateway-file", o->gateway_file, "Gateway file the job wrote");
  cmd->add_flag("--json", o->json, "Print the raw status document");
  cmd->add_option("--timeout", o->timeout_s, "Seconds to wait for the gateway")
      ->capture_default_str();
  cmd->callback([o] {
    const int code = run_status(*o);
    if (code != 0) std::exit(code);
  });
}

}  // namespace alem::cli
