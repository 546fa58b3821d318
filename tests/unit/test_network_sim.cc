// Tests of the network simulator's parts without the network: the lease queue's rules (FIFO,
// credits per provider, deadlines, redelivery after a drop, release, error and resend, attempt
// limit, exactly-once billing), the fault spec and its seeded draws, and the client's answer
// check against answers built here by hand with the real sealing code (so a wrong chunk order,
// a bad usage, a tampered chunk or a wrong greedy text must each be caught).
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "network/netsim_client.h"
#include "network/netsim_faults.h"
#include "network/netsim_queue.h"
#include "network/provider.pb.h"
#include "network/sealing.h"

namespace alem::netsim {
namespace {

using nlohmann::json;

std::string rid(int n) {
  std::string id(32, '\0');
  id[0] = static_cast<char>(n);
  id[31] = 'r';
  return id;
}

FinalReport final_of(uint32_t completion, bool from_journal = false) {
  FinalReport f;
  f.chunk_count = 1;
  f.usage.prompt_tokens = 5;
  f.usage.completion_tokens = completion;
  f.from_journal = from_journal;
  f.finish_reason = "length";
  return f;
}

TEST(LeaseQueue, GrantsInOrderWithinCredits) {
  LeaseQueue q({1000, 5});
  for (int i = 0; i < 5; ++i) q.submit(rid(i), "m", "payload" + std::to_string(i));
  q.attach("s1", "provA", 2);
  auto g = q.grant("s1", 0);
  ASSERT_EQ(g.size(), 2u);
  EXPECT_EQ(g[0].request_id, rid(0));
  EXPECT_EQ(g[1].request_id, rid(1));
  EXPECT_EQ(g[0].attempt, 1u);
  EXPECT_EQ(g[0].deadline_ms, 1000u);
  EXPECT_EQ(g[1].payload, "payload1");
  EXPECT_TRUE(q.grant("s1", 1).empty()) << "no credits left";
  EXPECT_EQ(q.open_leases("provA"), 2u);
  EXPECT_EQ(q.on_final("s1", rid(0), final_of(3)).outcome, FinalOutcome::kCompleted);
  auto g2 = q.grant("s1", 2);
  ASSERT_EQ(g2.size(), 1u);
  EXPECT_EQ(g2[0].request_id, rid(2));
  EXPECT_EQ(q.stats().credit_violations, 0u);
}

TEST(LeaseQueue, CreditsBoundAProviderAcrossItsStreams) {
  LeaseQueue q;
  for (int i = 0; i < 10; ++i) q.submit(rid(i), "m", "p");
  q.attach("s1", "provA", 3);
  q.attach("s2", "provA", 3);  // a second endpoint of the same identity
  q.attach("s3", "provB", 1);
  size_t a = q.grant("s1", 0).size() + q.grant("s2", 0).size();
  EXPECT_EQ(a, 3u);
  EXPECT_EQ(q.grant("s3", 0).size(), 1u);
  EXPECT_EQ(q.open_leases("provA"), 3u);
  EXPECT_EQ(q.open_leases("provB"), 1u);
}

TEST(LeaseQueue, DeadlinePassedLeaseIsRedeliveredFirst) {
  LeaseQueue q({100, 5});
  q.submit(rid(1), "m", "p1");
  q.submit(rid(2), "m", "p2");
  q.attach("s1", "prov", 1);
  ASSERT_EQ(q.grant("s1", 0).size(), 1u);
  EXPECT_TRUE(q.expire(99).empty());
  auto expired = q.expire(100);
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0], rid(1));
  EXPECT_EQ(q.state(rid(1)), RequestState::kPending);
  auto g = q.grant("s1", 150);
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g[0].request_id, rid(1)) << "the returned lease goes to the front";
  EXPECT_EQ(g[0].attempt, 2u);
  EXPECT_EQ(g[0].deadline_ms, 250u);
  EXPECT_EQ(q.stats().expired, 1u);
  EXPECT_EQ(q.stats().redelivered, 1u);
}

TEST(LeaseQueue, DroppedStreamReturnsItsLeasesInOrder) {
  LeaseQueue q;
  for (int i = 0; i < 4; ++i) q.submit(rid(i), "m", "p");
  q.attach("s1", "prov", 2);
  q.grant("s1", 0);
  auto returned = q.detach("s1");
  ASSERT_EQ(returned.size(), 2u);
  EXPECT_EQ(q.open_leases("prov"), 0u);
  q.attach("s2", "prov", 4);
  auto g = q.grant("s2", 10);
  ASSERT_EQ(g.size(), 4u);
  EXPECT_EQ(g[0].request_id, rid(0));
  EXPECT_EQ(g[1].request_id, rid(1));
  EXPECT_EQ(g[0].attempt, 2u);
  EXPECT_EQ(g[2].attempt, 1u);
  EXPECT_EQ(q.stats().redelivered, 2u);
  EXPECT_EQ(q.stats().dropped, 2u);
}

// A lease that expires while its answer streams goes back to the SAME stream as attempt 2; the
// rest of attempt 1's answer (chunk 9 and its final) must be checked against attempt 1's own
// chunks, and a late error or release of attempt 1 must not close attempt 2.
TEST(LeaseQueue, AttemptsOfOneRequestOnOneStreamAreKeptApart) {
  LeaseQueue q({50, 5});
  q.submit(rid(3), "m", "p");
  q.attach("s1", "prov", 2);
  ASSERT_EQ(q.grant("s1", 0).size(), 1u);
  for (uint32_t seq = 0; seq < 9; ++seq)
    q.on_chunk("s1", rid(3), seq, "a1-" + std::to_string(seq), 1);
  q.expire(60);
  auto again = q.grant("s1", 61);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].attempt, 2u);
  // A stale error and a stale release of attempt 1 leave attempt 2's lease alone.
  EXPECT_FALSE(q.on_error("s1", rid(3), 1));
  EXPECT_FALSE(q.on_release("s1", rid(3), 1));
  EXPECT_EQ(q.state(rid(3)), RequestState::kLeased);
  q.on_chunk("s1", rid(3), 0, "a2-0", 2);  // attempt 2 starts answering from its journal
  q.on_chunk("s1", rid(3), 9, "a1-9", 1);
  FinalReport f = final_of(9);
  f.chunk_count = 10;
  f.attempt = 1;
  FinalResult r = q.on_final("s1", rid(3), f);
  ASSERT_EQ(r.outcome, FinalOutcome::kCompleted);
  ASSERT_EQ(r.chunks.size(), 10u) << "attempt 1's chunks, not attempt 2's";
  EXPECT_EQ(r.chunks.at(0), "a1-0");
  EXPECT_EQ(r.chunks.at(9), "a1-9");
  EXPECT_EQ(q.open_leases("prov"), 0u);
  EXPECT_EQ(q.stats().duplicate_chunks, 0u);
  f.attempt = 2;
  f.from_journal = true;
  EXPECT_EQ(q.on_final("s1", rid(3), f).outcome, FinalOutcome::kJournalDuplicate);
  EXPECT_EQ(q.stats().billed_twice, 0u);
}

TEST(LeaseQueue, BillsOnceAndCountsARecomputation) {
  LeaseQueue q({50, 5});
  q.submit(rid(7), "m", "p");
  q.attach("old", "prov", 1);
  q.grant("old", 0);
  q.on_chunk("old", rid(7), 0, "chunk-from-old");
  q.expire(60);  // the answer was slow: the lease goes to another stream
  q.attach("new", "prov2", 1);
  ASSERT_EQ(q.grant("new", 61).size(), 1u);
  // The old stream's answer arrives first: billed, with the old delivery's chunks.
  FinalResult first = q.on_final("old", rid(7), final_of(4));
  ASSERT_EQ(first.outcome, FinalOutcome::kCompleted);
  ASSERT_EQ(first.chunks.size(), 1u);
  EXPECT_EQ(first.chunks.at(0), "chunk-from-old");
  EXPECT_EQ(q.billed_usage(rid(7))->completion_tokens, 4u);
  EXPECT_EQ(q.open_leases("prov2"), 0u) << "the request is done: the new lease closes";
  // The new stream answers from its journal: not billed again.
  EXPECT_EQ(q.on_final("new", rid(7), final_of(4, true)).outcome, FinalOutcome::kJournalDuplicate);
  EXPECT_EQ(q.stats().billed_twice, 0u);
  // Computed again: that is a second billing.
  EXPECT_EQ(q.on_final("new", rid(7), final_of(4, false)).outcome, FinalOutcome::kBilledTwice);
  EXPECT_EQ(q.stats().billed_twice, 1u);
  EXPECT_EQ(q.stats().completed, 1u);
  EXPECT_EQ(q.stats().journal_duplicates, 1u);
}

TEST(LeaseQueue, ResultsFromAStreamThatNeverHadTheRequestAreStale) {
  LeaseQueue q;
  q.submit(rid(1), "m", "p");
  q.attach("s1", "prov", 1);
  q.attach("s2", "prov2", 1);
  q.grant("s1", 0);
  EXPECT_EQ(q.on_final("s2", rid(1), final_of(1)).outcome, FinalOutcome::kUnknown);
  EXPECT_EQ(q.on_final("s1", rid(9), final_of(1)).outcome, FinalOutcome::kUnknown);
  q.on_chunk("s2", rid(1), 0, "x");
  EXPECT_FALSE(q.on_error("s2", rid(1)));
  EXPECT_EQ(q.stats().stale_messages, 4u);
  EXPECT_EQ(q.state(rid(1)), RequestState::kLeased);
}

TEST(LeaseQueue, ErrorWaitsForTheClientThenResendGoesFirst) {
  LeaseQueue q;
  q.submit(rid(1), "m", "sealed-v1");
  q.submit(rid(2), "m", "p2");
  q.attach("s1", "prov", 1);
  q.grant("s1", 0);
  EXPECT_TRUE(q.on_error("s1", rid(1)));
  EXPECT_EQ(q.state(rid(1)), RequestState::kAwaitingClient);
  EXPECT_EQ(q.open_leases("prov"), 0u);
  q.resend(rid(1), "sealed-v2");
  auto g = q.grant("s1", 1);
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g[0].request_id, rid(1));
  EXPECT_EQ(g[0].payload, "sealed-v2");
  EXPECT_EQ(g[0].attempt, 2u);
  EXPECT_EQ(q.stats().resent, 1u);
  EXPECT_EQ(q.stats().redelivered, 0u) << "a resend is not a lost lease";
  EXPECT_THROW(q.resend(rid(2), "x"), Error) << "only after an error answer";
}

TEST(LeaseQueue, ReleaseReturnsTheLease) {
  LeaseQueue q;
  q.submit(rid(1), "m", "p");
  q.attach("s1", "prov", 1);
  q.grant("s1", 0);
  EXPECT_TRUE(q.on_release("s1", rid(1)));
  EXPECT_EQ(q.state(rid(1)), RequestState::kPending);
  EXPECT_EQ(q.stats().released, 1u);
  EXPECT_FALSE(q.on_release("s1", rid(1)));
}

TEST(LeaseQueue, TooManyAttemptsFailsWithAReason) {
  LeaseQueue q({10, 2});
  q.submit(rid(1), "m", "p");
  q.attach("s1", "prov", 1);
  for (uint64_t t = 0; t < 100; t += 10) {
    q.grant("s1", t);
    q.expire(t + 10);
  }
  EXPECT_EQ(q.state(rid(1)), RequestState::kFailed);
  EXPECT_EQ(q.attempts(rid(1)), 2u);
  ASSERT_EQ(q.failures().size(), 1u);
  EXPECT_NE(q.failures().begin()->second.find("2 deliveries"), std::string::npos);
  EXPECT_EQ(q.unfinished(), 0u);
}

TEST(LeaseQueue, InvalidAnswerFailsButStaysBilledOnce) {
  LeaseQueue q;
  q.submit(rid(1), "m", "p");
  q.attach("s1", "prov", 1);
  q.grant("s1", 0);
  ASSERT_EQ(q.on_final("s1", rid(1), final_of(2)).outcome, FinalOutcome::kCompleted);
  q.mark_answer_invalid(rid(1), "bad");
  EXPECT_EQ(q.stats().completed, 0u);
  EXPECT_EQ(q.stats().failed, 1u);
  EXPECT_TRUE(q.billed_usage(rid(1)).has_value());
}

TEST(LeaseQueue, RefusesBadInput) {
  LeaseQueue q;
  EXPECT_THROW(q.submit("short", "m", "p"), Error);
  q.submit(rid(1), "m", "p");
  EXPECT_THROW(q.submit(rid(1), "m", "p"), Error);
  EXPECT_THROW(q.state(rid(2)), Error);
  EXPECT_THROW(LeaseQueue({0, 1}), Error);
}

TEST(FaultSpec, ParsesProbabilitiesCountsAndNumbers) {
  FaultSpec s = parse_fault_spec("drop=0.05,dup=3,corrupt=1.0,delay_ms=50,oversize_bytes=2048");
  EXPECT_DOUBLE_EQ(s.rates.at(Fault::kDrop).probability, 0.05);
  EXPECT_EQ(s.rates.at(Fault::kDup).count, 3u);
  EXPECT_DOUBLE_EQ(s.rates.at(Fault::kCorrupt).probability, 1.0);
  EXPECT_EQ(s.delay_ms, 50u);
  EXPECT_EQ(s.oversize_bytes, 2048u);
  EXPECT_TRUE(parse_fault_spec("").empty());
  EXPECT_THROW(parse_fault_spec("explode=0.1"), Error);
  EXPECT_THROW(parse_fault_spec("drop"), Error);
  EXPECT_THROW(parse_fault_spec("drop=abc"), Error);
  EXPECT_THROW(parse_fault_spec("drop=1.5"), Error);
  EXPECT_THROW(parse_fault_spec("drop=-0.1"), Error);
}

TEST(FaultInjector, CountsAreSpentExactlyAndDrawsRepeatWithTheSeed) {
  FaultInjector a(parse_fault_spec("dup=3,corrupt=0.5"), 42);
  FaultInjector b(parse_fault_spec("dup=3,corrupt=0.5"), 42);
  std::vector<bool> da, db;
  int dups = 0;
  for (int i = 0; i < 200; ++i) {
    dups += a.strike(Fault::kDup);
    b.strike(Fault::kDup);
    da.push_back(a.strike(Fault::kCorrupt));
    db.push_back(b.strike(Fault::kCorrupt));
  }
  EXPECT_EQ(dups, 3);
  EXPECT_EQ(a.injected(Fault::kDup), 3u);
  EXPECT_EQ(da, db);
  EXPECT_GT(a.injected(Fault::kCorrupt), 60u);  // about 100 of 200
  EXPECT_LT(a.injected(Fault::kCorrupt), 140u);
  EXPECT_FALSE(a.strike(Fault::kDrop)) << "not in the spec";
}

// Builds a provider's answer by hand: what `alem serve` streams for a completions request.
struct HandAnswer {
  std::map<uint32_t, std::string> chunks;
  FinalReport final_report;
};

HandAnswer make_answer(const network::X25519PublicKey& client, const std::string& id,
                       const std::vector<std::string>& texts, const std::string& finish,
                       uint32_t completion_tokens, bool chat = false) {
  HandAnswer a;
  std::vector<json> chunks;
  const char* object = chat ? "chat.completion.chunk" : "text_completion";
  for (size_t i = 0; i < texts.size(); ++i) {
    json choice = {{"index", 0}, {"finish_reason", nullptr}};
    if (chat) {
      choice["delta"] = {{"content", texts[i]}};
    } else {
      choice["text"] = texts[i];
    }
    if (i + 1 == texts.size()) choice["finish_reason"] = finish;
    chunks.push_back({{"id", "cmpl-1"},
                      {"object", object},
                      {"choices", json::array({choice})},
                      {"usage", nullptr}});
  }
  chunks.push_back({{"id", "cmpl-1"},
                    {"object", object},
                    {"choices", json::array()},
                    {"usage", {{"prompt_tokens", 6}, {"completion_tokens", completion_tokens}}}});
  for (uint32_t s = 0; s < chunks.size(); ++s) {
    a.chunks[s] =
        network::seal(client, id, network::chunk_purpose(s), "data: " + chunks[s].dump() + "\n\n");
  }
  a.final_report.chunk_count = static_cast<uint32_t>(chunks.size());
  a.final_report.usage.prompt_tokens = 6;
  a.final_report.usage.completion_tokens = completion_tokens;
  a.final_report.finish_reason = finish;
  return a;
}

class AnswerCheck : public ::testing::Test {
 protected:
  void SetUp() override {
    provider_ = std::make_unique<network::X25519KeyPair>(network::X25519KeyPair::generate());
    LoadConfig c;
    c.requests = 2;
    c.model = "SmolLM2-135M-Instruct";
    c.max_tokens = 3;
    load_ = std::make_unique<LoadGenerator>(c, provider_->public_key());
    // Open request 0 as the provider would, to learn the client's answer key.
    id_ = load_->request_id(0);
    auto opened = network::open_envelope(*provider_, id_, network::kPurposeRequest, load_->seal(0));
    ASSERT_TRUE(opened.ok()) << opened.message;
    network::v1::RequestPayload payload;
    ASSERT_TRUE(payload.ParseFromArray(opened.payload.view().data(),
                                       static_cast<int>(opened.payload.size())));
    EXPECT_EQ(payload.endpoint(), "/v1/completions");
    json body = json::parse(payload.body());
    EXPECT_EQ(body["model"], "SmolLM2-135M-Instruct");
    EXPECT_EQ(body["stream"], true);
    EXPECT_EQ(body["stream_options"]["include_usage"], true);
    EXPECT_EQ(body["max_tokens"], 3);
    std::copy(payload.client_public_key().begin(), payload.client_public_key().end(),
              client_.begin());
  }
  std::unique_ptr<network::X25519KeyPair> provider_;
  std::unique_ptr<LoadGenerator> load_;
  std::string id_;
  network::X25519PublicKey client_{};
};

TEST_F(AnswerCheck, AcceptsAWellFormedAnswer) {
  HandAnswer a = make_answer(client_, id_, {" Paris", ".", " It"}, "length", 3);
  Verdict v = load_->verify(id_, a.chunks, a.final_report);
  EXPECT_TRUE(v.ok) << v.reason;
  EXPECT_EQ(v.completion_tokens, 3u);
}

TEST_F(AnswerCheck, EachDefectIsCaught) {
  auto expect_bad = [&](HandAnswer a, const std::string& why_part) {
    Verdict v = load_->verify(id_, a.chunks, a.final_report);
    EXPECT_FALSE(v.ok);
    EXPECT_NE(v.reason.find(why_part), std::string::npos) << v.reason;
  };
  HandAnswer good = make_answer(client_, id_, {" Paris", ".", " It"}, "length", 3);
  {  // a chunk missing
    HandAnswer a = good;
    a.chunks.erase(1);
    expect_bad(a, "chunks");
  }
  {  // two chunks swapped: each was sealed to its own position
    HandAnswer a = good;
    std::swap(a.chunks[0], a.chunks[1]);
    expect_bad(a, "does not open");
  }
  {  // a flipped byte
    HandAnswer a = good;
    a.chunks[2][a.chunks[2].size() - 3] ^= 1;
    expect_bad(a, "does not open");
  }
  {  // usage in the final differs from the usage chunk
    HandAnswer a = good;
    a.final_report.usage.completion_tokens = 2;
    expect_bad(a, "usage");
  }
  {  // more tokens than max_tokens
    expect_bad(make_answer(client_, id_, {"a", "b", "c", "d"}, "length", 4), "max_tokens");
  }
  {  // finish_reason length before max_tokens
    expect_bad(make_answer(client_, id_, {"a", "b"}, "length", 2), "length");
  }
  {  // finish reason of the final differs
    HandAnswer a = good;
    a.final_report.finish_reason = "stop";
    expect_bad(a, "finish_reason");
  }
  {  // sealed to another client key
    auto other = network::X25519KeyPair::generate();
    expect_bad(make_answer(other.public_key(), id_, {"a", "b", "c"}, "length", 3), "does not open");
  }
  {  // the chat shape for a completions request
    expect_bad(make_answer(client_, id_, {"a", "b", "c"}, "length", 3, true), "object");
  }
  EXPECT_FALSE(load_->verify(std::string(32, 'x'), good.chunks, good.final_report).ok);
}

TEST(AnswerCheckExpected, GreedyTextMustMatchTheExpectation) {
  std::string path_text =
      (std::filesystem::temp_directory_path() / "netsim-requests-XXXXXX").string();
  std::vector<char> path_buf(path_text.begin(), path_text.end());
  path_buf.push_back('\0');
  char* path = path_buf.data();
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  std::string line =
      R"({"endpoint":"/v1/completions","body":{"prompt":"Hi","max_tokens":2,"temperature":0},"expect_text":" there."})"
      "\n";
  ASSERT_EQ(write(fd, line.data(), line.size()), static_cast<ssize_t>(line.size()));
  close(fd);
  auto provider = network::X25519KeyPair::generate();
  LoadConfig c;
  c.requests = 1;
  c.model = "m";
  c.requests_file = path;
  LoadGenerator load(c, provider.public_key());
  std::string id = load.request_id(0);
  auto opened = network::open_envelope(provider, id, network::kPurposeRequest, load.seal(0));
  ASSERT_TRUE(opened.ok());
  network::v1::RequestPayload payload;
  ASSERT_TRUE(payload.ParseFromArray(opened.payload.view().data(),
                                     static_cast<int>(opened.payload.size())));
  network::X25519PublicKey client{};
  std::copy(payload.client_public_key().begin(), payload.client_public_key().end(), client.begin());
  HandAnswer right = make_answer(client, id, {" there", "."}, "length", 2);
  EXPECT_TRUE(load.verify(id, right.chunks, right.final_report).ok);
  HandAnswer wrong = make_answer(client, id, {" there", "!"}, "length", 2);
  Verdict v = load.verify(id, wrong.chunks, wrong.final_report);
  EXPECT_FALSE(v.ok);
  EXPECT_NE(v.reason.find("expected text"), std::string::npos);
  unlink(path);
  EXPECT_THROW(read_request_file(path), Error);
}

}  // namespace
}  // namespace alem::netsim
