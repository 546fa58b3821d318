// One API request from tokens in to text out (see the header).
#include "serve/completion_session.h"

#include "core/json_input.h"

#include <algorithm>
#include <ctime>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "core/log.h"
#include "model/chat_template.h"

namespace alem::serve {
namespace {

void wipe_string(std::string& s) {
  secure_wipe(s.data(), s.size());
  s.clear();
}

}  // namespace

CompletionSession::CompletionSession(const ServedModel& model, EngineClient& engine,
                                     ServingMetrics& metrics, ApiRequest request,
                                     Clock::time_point arrival)
    : model_(model),
      engine_(engine),
      metrics_(metrics),
      request_(std::move(request)),
      arrival_(arrival),
      id_(make_response_id(request_.endpoint)),
      created_(static_cast<int64_t>(std::time(nullptr))) {}

CompletionSession::~CompletionSession() {
  close(false);
}

std::vector<int32_t> CompletionSession::tokenize(const PromptInput& prompt) const {
  if (prompt.is_tokens) {
    check_token_ids(prompt.token_ids, model_.tokenizer->vocab_size());
    return prompt.token_ids;
  }
  // As `alem generate` does for raw prompts: client text never becomes special tokens; the
  // model's BOS is added when its tokenizer asks for it.
  std::vector<int32_t> ids = model_.tokenizer->encode(prompt.text, /*parse_special=*/false);
  if (model_.tokenizer_data->add_bos_token && model_.tokenizer->bos_id() >= 0) {
    ids.insert(ids.begin(), model_.tokenizer->bos_id());
  }
  return ids;
}

std::vector<int32_t> CompletionSession::tokenize_chat() const {
  try {
    nlohmann::json kwargs;  // null: no template arguments
    if (request_.enable_thinking) kwargs["enable_thinking"] = *request_.enable_thinking;
    return encode_chat(request_.messages, request_.add_generation_prompt, *model_.tokenizer_data,
                       *model_.tokenizer, &kwargs);
  } catch (const Error& e) {  // unsupported template or role; the message names no content
    throw ApiException(ApiError::bad_request(e.message(), "messages"));
  }
}

void CompletionSession::start() {
  // Tokenize and check every prompt before submitting anything.
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> max_tokens;
  if (request_.endpoint == Endpoint::kChatCompletions) {
    prompts.push_back(tokenize_chat());
  } else {
    for (const PromptInput& p : request_.prompts) prompts.push_back(tokenize(p));
  }
  for (const auto& ids : prompts) {
    max_tokens.push_back(
        resolve_max_tokens(request_, static_cast<int64_t>(ids.size()), engine_.max_model_len()));
    prompt_tokens_.push_back(static_cast<int64_t>(ids.size()));
  }

  const int n = request_.n;
  choices_.resize(prompts.size() * n);
  for (size_t p = 0; p < prompts.size(); ++p) {
    for (int j = 0; j < n; ++j) {
      Choice& c = choices_[p * n + j];
      c.index = static_cast<int>(p * n + j);
      c.prompt_index = static_cast<int>(p);
      c.decoder =
          std::make_unique<StreamingDecoder>(*model_.tokenizer, request_.skip_special_tokens);
      c.stop =
          std::make_unique<StopStringFilter>(request_.stop, request_.include_stop_str_in_output);
      if (request_.echo) {  // completions: the prompt's text leads the choice's text
        const PromptInput& input = request_.prompts[p];
        c.text = input.is_tokens ? model_.tokenizer->decode(input.token_ids) : input.text;
      }
      if (request_.endpoint == Endpoint::kChatCompletions && model_.reasoning.enabled()) {
        c.reasoning = std::make_unique<ReasoningParser>(model_.reasoning, prompts[p]);
        c.reasoning_decoder =
            std::make_unique<StreamingDecoder>(*model_.tokenizer, request_.skip_special_tokens);
      }
    }
  }

  // Every choice's sequence, submitted together (EngineClient::submit_all).
  std::vector<EngineRequest> requests;
  for (size_t p = 0; p < prompts.size(); ++p) {
    for (int j = 0; j < n; ++j) {
      EngineRequest er;
      er.prompt = prompts[p];
      er.params = request_.sampling;
      er.params.max_tokens = max_tokens[p];
      // Each choice is its own sequence; seeded ones stay reproducible (vLLM: seed + index).
      if (er.params.seed) er.params.seed = *er.params.seed + static_cast<uint64_t>(j);
      if (request_.endpoint == Endpoint::kChatCompletions && model_.im_end_id >= 0) {
        er.params.stop_token_ids.push_back(model_.im_end_id);
      }
      er.cache_salt = request_.user;
      std::weak_ptr<Inbox> weak_inbox = inbox_;
      er.on_event = [weak_inbox](const RequestEvent& event) {
        std::shared_ptr<Inbox> inbox = weak_inbox.lock();
        if (!inbox) return;  // the session is gone; its choices were cancelled
        {
          std::lock_guard<std::mutex> lock(inbox->mutex);
          inbox->events.emplace_back(event, Clock::now());
        }
        inbox->ready.notify_all();
        if (inbox->notify) inbox->notify();
      };
      requests.push_back(std::move(er));
    }
  }
  const std::vector<SubmitResult> results = engine_.submit_all(std::move(requests));
  for (size_t i = 0; i < results.size(); ++i) {
    if (results[i].status == SubmitStatus::kAccepted) choices_[i].engine_id = results[i].request_id;
  }
  for (const SubmitResult& result : results) {
    if (result.status == SubmitStatus::kAccepted) {
      replica_ = result.replica;  // metrics go to the replica that serves it
      continue;
    }
    for (const Choice& done : choices_) {
      if (done.engine_id >= 0) engine_.cancel(done.engine_id);
    }
    for (Choice& done : choices_) done.finished = true;
    if (result.status == SubmitStatus::kQueueFull) {
      throw ApiException(
          ApiError::overloaded("The server is at its limit of waiting requests; retry later."));
    }
    throw ApiException(ApiError::unavailable("The server is not accepting requests now."));
  }
  for (size_t p = 0; p < prompts.size(); ++p) {
    metrics_.add_prompt_tokens(replica_, prompt_tokens_[p]);
    secure_wipe(prompts[p].data(), prompts[p].size() * sizeof(int32_t));
  }
}

CompletionSession::Choice* CompletionSession::choice_for(int64_t engine_id) {
  for (Choice& c : choices_) {
    if (c.engine_id == engine_id) return &c;
  }
  return nullptr;
}

void CompletionSession::finish_choice(Choice& c, FinishReason reason) {
  if (c.finished) return;
  c.finished = true;
  c.finish = reason;
  if (c.counted) return;
  c.counted = true;
  if (reason == FinishReason::kStop || reason == FinishReason::kLength) {
    metrics_.count_success(replica_, finish_reason_name(reason));
  } else {
    metrics_.count_failure(replica_, engine_failed_ ? "error" : "aborted");
  }
  metrics_.observe_request_latency(replica_,
                                   std::chrono::duration<double>(Clock::now() - arrival_).count());
}

void CompletionSession::apply_event(Choice& c, const RequestEvent& event, Clock::time_point at) {
  // The engine's per-sequence figures, also for a choice a stop string already ended.
  if (event.finished) metrics_.observe_finished_request(replica_, finished_request_figures(event));
  if (c.finished) return;  // tokens in flight after a stop string matched
  c.cached_tokens = event.usage.cached_tokens;
  if (event.has_token) {
    if (!c.last_token_time) {
      metrics_.observe_time_to_first_token(replica_,
                                           std::chrono::duration<double>(at - arrival_).count());
    } else {
      metrics_.observe_inter_token_latency(
          replica_, std::chrono::duration<double>(at - *c.last_token_time).count());
    }
    c.last_token_time = at;
  }
  if (event.has_token) {
    ++c.completion_tokens;
    metrics_.add_generation_tokens(replica_, 1);
    if (event.has_logprobs && request_.sampling.logprobs >= 0) {
      c.logprobs.push_back({event.token_id, event.logprob, event.top_logprobs});
    }
    add_token_text(c, event.token_id);
    if (c.stop->stopped()) {
      if (!event.finished) engine_.cancel(c.engine_id);  // frees its blocks at the next step
      c.stop_reason = request_.stop.at(static_cast<size_t>(c.stop->matched_index()));
      finish_choice(c, FinishReason::kStop);
      return;
    }
  }
  if (!event.finished) return;
  // Ended by one of the request's stop token ids (not the model's end of sequence): vLLM names
  // the token in stop_reason.
  const auto& stop_ids = request_.sampling.stop_token_ids;
  if (event.finish_reason == FinishReason::kStop && event.has_token &&
      !(event.token_id == model_.tokenizer->eos_id() && !request_.sampling.ignore_eos) &&
      std::find(stop_ids.begin(), stop_ids.end(), event.token_id) != stop_ids.end()) {
    c.stop_reason = event.token_id;
  }
  if (event.finish_reason == FinishReason::kError) engine_failed_ = true;
  if (c.reasoning_decoder) {  // cut inside the reasoning (max_tokens): all of it is reasoning
    std::string held = c.reasoning_decoder->flush();
    c.reasoning_text += held;
    wipe_string(held);
  }
  std::string rest = c.decoder->flush();
  c.text += c.stop->push(rest);
  wipe_string(rest);
  if (c.stop->stopped()) {
    c.stop_reason = request_.stop.at(static_cast<size_t>(c.stop->matched_index()));
    finish_choice(c, FinishReason::kStop);
    return;
  }
  c.text += c.stop->finish();
  finish_choice(c, event.finish_reason);
}

void CompletionSession::add_token_text(Choice& c, int32_t token_id) {
  if (c.reasoning) {
    const bool was_reasoning = c.reasoning->in_reasoning();
    switch (c.reasoning->push(token_id)) {
      case TokenRole::kReasoning: {
        std::string piece = c.reasoning_decoder->push(token_id);
        c.reasoning_text += piece;
        wipe_string(piece);
        return;
      }
      case TokenRole::kMarker:
        if (was_reasoning && !c.reasoning->in_reasoning()) {  // </think>: the reasoning is done
          std::string held = c.reasoning_decoder->flush();
          c.reasoning_text += held;
          wipe_string(held);
        }
        return;
      case TokenRole::kContent:
        break;
    }
  }
  // Stop strings apply to the answer only.
  std::string piece = c.decoder->push(token_id);
  c.text += c.stop->push(piece);
  wipe_string(piece);
}

std::vector<int> CompletionSession::drain_events(
    std::deque<std::pair<RequestEvent, Clock::time_point>>& events) {
  std::vector<int> changed;
  for (auto& [event, at] : events) {
    Choice* c = choice_for(event.request_id);
    if (!c) continue;
    apply_event(*c, event, at);
    if (std::find(changed.begin(), changed.end(), c->index) == changed.end()) {
      changed.push_back(c->index);
    }
  }
  events.clear();
  return changed;
}

bool CompletionSession::all_finished() const {
  return std::all_of(choices_.begin(), choices_.end(), [](const Choice& c) { return c.finished; });
}

bool CompletionSession::finished() const {
  return all_finished();
}

Usage CompletionSession::usage() const {
  Usage u;
  for (int64_t p : prompt_tokens_) u.prompt_tokens += p;
  for (const Choice& c : choices_) {
    u.completion_tokens += c.completion_tokens;
    // The prompt is billed once; its cached part is what the first choice found cached.
    if (c.index % request_.n == 0) u.cached_tokens += c.cached_tokens;
    if (c.reasoning) u.reasoning_tokens += c.reasoning->reasoning_tokens();
  }
  return u;
}

std::string CompletionSession::wait_for_response() {
  std::deque<std::pair<RequestEvent, Clock::time_point>> events;
  while (!all_finished()) {
    {
      std::unique_lock<std::mutex> lock(inbox_->mutex);
      inbox_->ready.wait(lock, [&] { return !inbox_->events.empty(); });
      events.swap(inbox_->events);
    }
    drain_events(events);
  }
  return response_body();
}

bool CompletionSession::poll_response(std::string& body) {
  std::deque<std::pair<RequestEvent, Clock::time_point>> events;
  {
    std::lock_guard<std::mutex> lock(inbox_->mutex);
    events.swap(inbox_->events);
  }
  drain_events(events);
  if (!all_finished()) return false;
  body = response_body();
  return true;
}

std::string CompletionSession::response_body() {
  if (engine_failed_) {
    close(true);
    throw ApiException(ApiError::internal("The engine failed while generating; see server logs."));
  }
  std::vector<ChoiceResult> results;
  for (Choice& c : choices_) {
    ChoiceResult r{c.index, c.text, c.finish};
    if (c.reasoning) r.reasoning = c.reasoning_text;
    r.logprobs = take_logprobs(c);
    r.stop_reason = c.stop_reason;
    results.push_back(std::move(r));
  }
  std::string body = dump_json(
      completion_response(request_.endpoint, id_, created_, request_.model, results, usage()));
  for (ChoiceResult& r : results) {
    wipe_string(r.text);
    if (r.reasoning) wipe_string(*r.reasoning);
    wipe_json_strings(r.logprobs);
    wipe_json_strings(r.stop_reason);
  }
  close(true);
  return body;
}

bool CompletionSession::next_stream_chunks(std::vector<StreamChunk>& out,
                                           std::chrono::milliseconds max_wait) {
  if (stream_done_) return false;
  const Endpoint ep = request_.endpoint;
  const bool chat = ep == Endpoint::kChatCompletions;
  if (!stream_started_) {
    stream_started_ = true;
    if (chat) {  // the assistant role first, for every choice (as vLLM does)
      for (const Choice& c : choices_) {
        out.push_back({stream_chunk(ep, id_, created_, request_.model, c.index, "", true,
                                    FinishReason::kNone, request_.include_usage),
                       false});
      }
      return true;
    }
  }
  std::deque<std::pair<RequestEvent, Clock::time_point>> events;
  {
    std::unique_lock<std::mutex> lock(inbox_->mutex);
    inbox_->ready.wait_for(lock, max_wait, [&] { return !inbox_->events.empty(); });
    events.swap(inbox_->events);
  }
  for (int index : drain_events(events)) {
    Choice& c = choices_[index];
    const bool final_now = c.finished && !c.final_chunk_sent;
    const bool new_logprobs = c.logprobs_sent < c.logprobs.size();
    if (c.text.empty() && c.reasoning_text.empty() && !final_now && !new_logprobs) continue;
    out.push_back({stream_chunk(ep, id_, created_, request_.model, c.index, c.text, false,
                                final_now ? c.finish : FinishReason::kNone, request_.include_usage,
                                c.reasoning_text, take_logprobs(c), c.stop_reason),
                   !c.text.empty() || !c.reasoning_text.empty()});
    wipe_string(c.text);
    wipe_string(c.reasoning_text);
    if (final_now) c.final_chunk_sent = true;
  }
  if (!all_finished()) return true;
  for (Choice& c : choices_) {  // choices finished before their first event was drained
    if (c.final_chunk_sent) continue;
    out.push_back(
        {stream_chunk(ep, id_, created_, request_.model, c.index, c.text, false, c.finish,
                      request_.include_usage, c.reasoning_text, take_logprobs(c), c.stop_reason),
         !c.text.empty() || !c.reasoning_text.empty()});
    wipe_string(c.text);
    wipe_string(c.reasoning_text);
    c.final_chunk_sent = true;
  }
  if (request_.include_usage) {
    out.push_back({usage_chunk(ep, id_, created_, request_.model, usage()), false});
  }
  stream_done_ = true;
  return false;
}

nlohmann::json CompletionSession::take_logprobs(Choice& c) {
  if (request_.sampling.logprobs < 0) return nullptr;
  const size_t begin = c.logprobs_sent, end = c.logprobs.size();
  c.logprobs_sent = end;
  if (request_.endpoint == Endpoint::kChatCompletions) {
    return chat_logprobs_json(*model_.tokenizer, c.logprobs, begin, end);
  }
  return completion_logprobs_json(*model_.tokenizer, c.logprobs, begin, end, c.logprob_text_offset);
}

bool CompletionSession::next_stream_events(std::string& out, std::chrono::milliseconds max_wait) {
  if (stream_done_) return false;
  std::vector<StreamChunk> chunks;
  const bool more = next_stream_chunks(chunks, max_wait);
  for (StreamChunk& chunk : chunks) {
    out += sse_event(chunk.value);
    wipe_json_strings(chunk.value);
  }
  if (more) return true;
  if (engine_failed_) {  // the openai client raises APIError on an event with an "error" key
    out += sse_event(
        ApiError::internal("The engine failed while generating; see server logs.").to_json());
  }
  out += kSseDone;
  return false;
}

void CompletionSession::close(bool completed) {
  if (closed_) return;
  closed_ = true;
  if (!choices_.empty()) {  // ids, counts and timings only: never text
    const Usage u = usage();
    std::string finishes;
    for (const Choice& c : choices_) {
      if (!finishes.empty()) finishes += ",";
      finishes += c.finished ? finish_reason_name(c.finish) : (completed ? "abort" : "disconnect");
    }
    log_info(
        "request done",
        {{"id", id_},
         {"choices", std::to_string(choices_.size())},
         {"stream", request_.stream ? "true" : "false"},
         {"prompt_tokens", std::to_string(u.prompt_tokens)},
         {"cached_tokens", std::to_string(u.cached_tokens)},
         {"completion_tokens", std::to_string(u.completion_tokens)},
         {"reasoning_tokens", std::to_string(u.reasoning_tokens)},
         {"finish", finishes},
         {"seconds", log_number(std::chrono::duration<double>(Clock::now() - arrival_).count())}});
  }
  for (Choice& c : choices_) {
    if (c.finished) continue;
    if (c.engine_id >= 0) engine_.cancel(c.engine_id);
    c.finished = true;
    c.finish = FinishReason::kAbort;
    if (!c.counted) {
      c.counted = true;
      metrics_.count_failure(replica_, completed ? "aborted" : "client_disconnect");
    }
  }
  wipe_text();
}

void CompletionSession::wipe_text() {
  for (Choice& c : choices_) {
    wipe_string(c.text);
    wipe_string(c.reasoning_text);
    c.stop.reset();                            // its destructor wipes held-back text
    for (TokenLogprobEntry& e : c.logprobs) {  // token ids say what was generated
      secure_wipe(&e.token_id, sizeof(e.token_id));
      if (!e.top.empty()) secure_wipe(e.top.data(), e.top.size() * sizeof(TokenLogprob));
    }
    c.logprobs.clear();
  }
  request_.wipe();
}

}  // namespace alem::serve
