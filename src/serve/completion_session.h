// CompletionSession: the life of one API request on the gateway, between the HTTP handler and
// the engine. It tokenizes the prompt(s), submits one engine request per choice (prompts x n),
// and turns the engine's token events back into text: incremental UTF-8-safe detokenization,
// stop strings, finish reasons, usage, and either one JSON response or a stream of SSE chunks.
//
// Threads: the engine thread only appends events to the session's inbox (EngineEventCallback)
// and, when one is set, calls the event notifier (so an asynchronous HTTP layer can wake up
// instead of blocking a thread); everything else runs on the thread that owns the request. When the
// client goes away (a failed write, or the connection closing before the end) close() cancels every
// unfinished choice so the engine frees their KV blocks at its next step.
//
// Client text (prompts, generated text) lives only in this object and is wiped when it ends.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "engine/serving_engine.h"
#include "model/tokenizer.h"
#include "model/tokenizer_data.h"
#include "serve/logprobs_json.h"
#include "serve/metrics.h"
#include "serve/openai_protocol.h"
#include "serve/reasoning.h"
#include "serve/stop_strings.h"

namespace alem::serve {

// What the gateway serves: the model's name, tokenizer and limits.
struct ServedModel {
  std::string name;
  const Tokenizer* tokenizer = nullptr;
  const TokenizerData* tokenizer_data = nullptr;
  int64_t created = 0;     // unix time the server started (GET /v1/models)
  int32_t im_end_id = -1;  // ChatML end-of-turn token, a stop token for chat requests
  // The model's <think>/</think> ids (ReasoningTokens::find at load). When enabled(), chat
  // answers are split into reasoning_content and content and reasoning tokens are counted.
  ReasoningTokens reasoning;
};

// One chunk of a streamed answer as data: the JSON object an SSE event would carry. For callers
// that frame or seal chunks themselves (the network provider), so wire formats stay at the edges.
struct StreamChunk {
  nlohmann::json value;   // a chat.completion.chunk or text_completion object
  bool has_text = false;  // it carries generated text or reasoning (the first is the first token)
};

class CompletionSession : public std::enable_shared_from_this<CompletionSession> {
 public:
  using Clock = std::chrono::steady_clock;

  CompletionSession(const ServedModel& model, EngineClient& engine, ServingMetrics& metrics,
                    ApiRequest request, Clock::time_point arrival);
  ~CompletionSession();
  CompletionSession(const CompletionSession&) = delete;
  CompletionSession& operator=(const CompletionSession&) = delete;

  // Tokenizes and submits every choice. Throws ApiException: 400 (prompt too long, bad token
  // ids), 429 (queue full), 503 (engine not accepting). Nothing stays submitted on a throw.
  void start();

  // Non-streaming: blocks until every choice has finished, then returns the response body.
  // Throws ApiException 500 when the engine failed.
  std::string wait_for_response();

  // Non-streaming, without blocking: drains the events that have arrived; returns true and sets
  // `body` once every choice has finished (the session is then closed). Throws ApiException 500
  // when the engine failed.
  bool poll_response(std::string& body);

  // Called on the engine thread after each event reaches the inbox; must be quick and
  // thread-safe (e.g. post a wake-up to an event loop). Set it before start().
  void set_event_notifier(std::function<void()> notify) { inbox_->notify = std::move(notify); }

  // Streaming: called repeatedly by the HTTP layer. Appends ready SSE events to `out` (waits up
  // to `max_wait` for some) and returns false once the stream is complete ("[DONE]" written).
  // When the engine failed (a rank died), the last events are an OpenAI-shaped error event,
  // `data: {"error": {...}}`, then "[DONE]" (as vLLM does), so clients see the failure.
  bool next_stream_events(std::string& out, std::chrono::milliseconds max_wait);

  // Streaming, structured: appends the ready chunks as JSON values (waits up to `max_wait` for
  // some) and returns false once the stream is complete. No SSE framing, no "[DONE]" and no
  // error event: check engine_failed() once it returns false. next_stream_events is this plus
  // the SSE framing. The values hold answer text: wipe them (wipe_json_strings) when done.
  bool next_stream_chunks(std::vector<StreamChunk>& out, std::chrono::milliseconds max_wait);

  // Ends the session: cancels unfinished choices (the client went away when `completed` is
  // false) and wipes the text buffers. Safe to call more than once.
  void close(bool completed);

  bool finished() const;
  bool streaming() const { return request_.stream; }
  int total_choices() const { return static_cast<int>(choices_.size()); }
  // For the network provider, which bills from these once finished() (network/provider_client):
  // token counts over every choice (reasoning_tokens included), choice 0's finish reason, and
  // whether the engine failed.
  Usage usage() const;
  FinishReason finish_reason() const {
    return choices_.empty() ? FinishReason::kNone : choices_.front().finish;
  }
  bool engine_failed() const { return engine_failed_; }

 private:
  struct Inbox {
    std::mutex mutex;
    std::condition_variable ready;
    std::deque<std::pair<RequestEvent, Clock::time_point>> events;
    std::function<void()> notify;  // set before start(), read by the engine thread
  };
  struct Choice {
    int index = 0;         // the choice's index in the response
    int prompt_index = 0;  // which prompt it continues
    int64_t engine_id = -1;
    std::unique_ptr<StreamingDecoder> decoder;
    std::unique_ptr<StopStringFilter> stop;
    std::string text;  // non-streaming: all text so far; streaming: not yet sent
    // Reasoning models, chat only: the split, its own decoder, and reasoning text held as `text`.
    std::unique_ptr<ReasoningParser> reasoning;
    std::unique_ptr<StreamingDecoder> reasoning_decoder;
    std::string reasoning_text;
    int64_t completion_tokens = 0;
    int64_t cached_tokens = 0;
    bool finished = false;
    bool counted = false;  // metrics recorded
    FinishReason finish = FinishReason::kNone;
    bool final_chunk_sent = false;
    std::optional<Clock::time_point> last_token_time;
    // Requests with logprobs: one entry per generated token; streaming sends them from
    // `logprobs_sent` on, completions' text_offset continuing at `logprob_text_offset`.
    std::vector<TokenLogprobEntry> logprobs;
    size_t logprobs_sent = 0;
    int64_t logprob_text_offset = 0;
    nlohmann::json stop_reason = nullptr;  // vLLM's stop_reason: stop string or stop token id
  };

  std::vector<int32_t> tokenize(const PromptInput& prompt) const;
  std::vector<int32_t> tokenize_chat() const;
  // A generated token's text, into reasoning_text or (through the stop strings) text.
  void add_token_text(Choice& choice, int32_t token_id);
  // Moves queued engine events into the choices. Returns the indexes of choices that changed.
  std::vector<int> drain_events(std::deque<std::pair<RequestEvent, Clock::time_point>>& events);
  void apply_event(Choice& choice, const RequestEvent& event, Clock::time_point at);
  void finish_choice(Choice& choice, FinishReason reason);
  Choice* choice_for(int64_t engine_id);
  bool all_finished() const;
  std::string response_body();  // every choice finished: the JSON response; closes
  // The logprobs object for the choice's entries not yet sent (all of them when not streaming),
  // or null when the request did not ask for logprobs. Marks them sent.
  nlohmann::json take_logprobs(Choice& choice);
  void wipe_text();

  const ServedModel& model_;
  EngineClient& engine_;
  ServingMetrics& metrics_;
  ApiRequest request_;
  Clock::time_point arrival_;
  std::string id_;
  int64_t created_ = 0;
  std::shared_ptr<Inbox> inbox_ = std::make_shared<Inbox>();
  std::vector<Choice> choices_;
  std::vector<int64_t> prompt_tokens_;  // per prompt
  bool engine_failed_ = false;
  bool stream_started_ = false;
  bool stream_done_ = false;
  bool closed_ = false;
  int replica_ = 0;
};

}  // namespace alem::serve
