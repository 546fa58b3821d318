// Encoding of SamplingParams for engine messages (see wire_format.h).
#include "engine/wire_format.h"

namespace alem {

void put_params(ByteWriter& w, const SamplingParams& p) {
  w.put_string(p.json_schema);
  w.put_string(p.regex);
  w.put(p.temperature);
  w.put(p.top_k);
  w.put(p.top_p);
  w.put(p.min_p);
  w.put(p.repetition_penalty);
  w.put(p.presence_penalty);
  w.put(p.frequency_penalty);
  w.put<uint8_t>(p.seed.has_value());
  w.put<uint64_t>(p.seed.value_or(0));
  w.put(p.max_tokens);
  w.put_ids(p.stop_token_ids);
  w.put<uint8_t>(p.ignore_eos);
  w.put(p.logprobs);
}

SamplingParams get_params(ByteReader& r) {
  SamplingParams p;
  p.json_schema = r.get_string();
  p.regex = r.get_string();
  p.temperature = r.get<float>();
  p.top_k = r.get<int32_t>();
  p.top_p = r.get<float>();
  p.min_p = r.get<float>();
  p.repetition_penalty = r.get<float>();
  p.presence_penalty = r.get<float>();
  p.frequency_penalty = r.get<float>();
  const bool has_seed = r.get<uint8_t>() != 0;
  const uint64_t seed = r.get<uint64_t>();
  if (has_seed) p.seed = seed;
  p.max_tokens = r.get<int32_t>();
  p.stop_token_ids = r.get_ids();
  p.ignore_eos = r.get<uint8_t>() != 0;
  p.logprobs = r.get<int32_t>();
  return p;
}

}  // namespace alem
