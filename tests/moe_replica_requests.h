// Shared by the unit (fake groups) and MPI tests of experts across replicas: every replica of an
// ep group runs its OWN request with the Generator, in lockstep, and the tokens are compared with
// Hugging Face transformers' greedy tokens (tests/data/golden, via moe_golden.h) and with
// the same request on a one-rank model. Odd replicas ask for only a few tokens, so they sit idle
// (serving the other replicas' expert rows with empty plans) while the even ones decode on.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/generator.h"
#include "moe_golden.h"

namespace alem::test {

struct ReplicaRequest {
  std::string name;             // the golden prompt's name
  std::vector<int32_t> prompt;  // its token ids
  std::vector<int32_t> golden;  // transformers' greedy tokens, max_tokens of them
};

// Replica d's request: golden prompt d % prompts, 32 tokens on even replicas (all the golden
// data has), 5 on odd ones.
inline ReplicaRequest replica_request(const json& golden, int replica) {
  const json& prompts = golden.at("prompts");
  const json& p = prompts.at(static_cast<size_t>(replica) % prompts.size());
  ReplicaRequest r;
  r.name = p.at("name").get<std::string>();
  r.prompt = p.at("prompt_ids").get<std::vector<int32_t>>();
  r.golden = p.at("generated_ids").get<std::vector<int32_t>>();
  r.golden.resize(replica % 2 == 0 ? r.golden.size() : 5);
  return r;
}

// Greedy tokens for `r` (no end-of-sequence stop: the golden data runs its full length). Every
// replica of the ep group calls this at the same time (the Generator keeps them in lockstep).
inline std::vector<int32_t> greedy_tokens(ShardedTransformer& model, ParallelContext& ctx,
                                          const ReplicaRequest& r) {
  Generator generator(model, ctx, {});
  SamplingParams params;
  params.temperature = 0;
  params.max_tokens = static_cast<int>(r.golden.size());
  params.ignore_eos = true;
  params.seed = 1;
  return generator.generate(r.prompt, params).tokens;
}

// Compares one replica's tokens with transformers' and the one-rank model's; returns failures.
inline int compare_replica_tokens(const std::string& what, const ReplicaRequest& r,
                                  const std::vector<int32_t>& got,
                                  const std::vector<int32_t>& one_rank) {
  int failures = 0;
  EXPECT_EQ(got, r.golden) << what << " prompt " << r.name << ": tokens differ from transformers";
  EXPECT_EQ(got, one_rank) << what << " prompt " << r.name << ": tokens differ from one rank";
  failures += got != r.golden;
  failures += got != one_rank;
  return failures;
}

}  // namespace alem::test
