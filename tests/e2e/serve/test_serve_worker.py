"""alem serve behind COCOON's worker: a client that plays the network's worker runner.

The worker (see docs/serving.md, "Behind COCOON's worker") forwards only POST /v1/chat/completions
and /v1/completions, with a fixed set of fields, the served model's base name, and
stream_options.include_usage forced on; it polls GET /v1/models; billing reads four numbers from
every JSON object of the answer: usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens,
usage.completion_tokens and usage.completion_tokens_details.reasoning_tokens (or
usage.reasoning_tokens). Checked here:
- a request shaped exactly as the worker sends it is served, and the four numbers add up
  (streamed usage equals the non-streamed usage of the same greedy request, cached tokens grow
  when the same prompt comes again);
- every field the worker lets through is either honoured (200) or refused with a 400 whose
  message names that field: none is silently ignored in a way that changes billing or output;
- fields the worker refuses on chat (tools, tool_choice, logit_bias) are refused here too.
"""

import json
import os
import sys
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import Server  # noqa: E402

MODEL_NAME = "SmolLM2-135M-Instruct"
SERVER = None

# The fields the worker lets through (docs/serving.md), each with a value a real client sends.
CHAT_FIELDS = {
    "frequency_penalty": 0.5,
    "max_completion_tokens": 6,
    "max_tokens": 6,
    "n": 2,
    "parallel_tool_calls": False,
    "prediction": {"type": "content", "content": "Paris"},
    "presence_penalty": 0.5,
    "reasoning_effort": "low",
    "response_format": {"type": "json_object"},
    "stop": ["\n\n"],
    "stream": True,
    "stream_options": {"include_usage": True},
    "temperature": 0.7,
    "top_logprobs": 2,
    "top_p": 0.9,
    "verbosity": "low",
    "chat_template_kwargs": {"enable_thinking": False},
}
COMPLETION_FIELDS = {
    "best_of": 2,
    "echo": True,
    "seed": 7,
    "suffix": " That is all.",
    "skip_special_tokens": False,
    "frequency_penalty": 0.5,
    "max_tokens": 6,
    "n": 2,
    "presence_penalty": 0.5,
    "stop": ["\n\n"],
    "stream": True,
    "stream_options": {"include_usage": True},
    "temperature": 0.7,
    "top_p": 0.9,
}


def setUpModule():
    global SERVER
    SERVER = Server(["--served-model-name", MODEL_NAME, "--max-model-len", "1024",
                     "--max-num-seqs", "16", "--kv-cache-mb", "128"])


def tearDownModule():
    if SERVER:
        SERVER.stop()


def post(path, body, timeout=120):
    req = urllib.request.Request(SERVER.base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def json_objects(status, text):
    """Every JSON object of an answer: the body, or each SSE data payload."""
    if text.lstrip().startswith("{"):
        return [json.loads(text)]
    objects = []
    for block in text.split("\n\n"):
        block = block.strip()
        if block.startswith("data: ") and block != "data: [DONE]":
            objects.append(json.loads(block[len("data: "):]))
    return objects


def billed(objects):
    """The four numbers as the worker's billing reads them: from every object that has usage,
    the last one seen wins."""
    numbers = None
    for o in objects:
        u = o.get("usage")
        if not u:
            continue
        reasoning = (u.get("completion_tokens_details") or {}).get("reasoning_tokens",
                                                                   u.get("reasoning_tokens", 0))
        numbers = {"prompt": u["prompt_tokens"],
                   "cached": (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
                   "completion": u["completion_tokens"], "reasoning": reasoning or 0}
    return numbers


def worker_chat(content, **extra):
    """A chat request as the worker forwards it: streams carry include_usage (forced by the
    worker); a non-streaming request carries no stream_options (vLLM refuses them there too)."""
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}],
            "max_completion_tokens": 8, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    body.update(extra)
    if not body["stream"]:
        body.pop("stream_options", None)
    return body


class Worker(unittest.TestCase):
    def test_models_poll(self):
        with urllib.request.urlopen(SERVER.base + "/v1/models", timeout=10) as r:
            self.assertEqual(r.status, 200)
            self.assertEqual([m["id"] for m in json.loads(r.read())["data"]], [MODEL_NAME])

    def test_streamed_usage_is_billed_like_the_plain_answer(self):
        status, text = post("/v1/chat/completions", worker_chat("Name three colours."))
        self.assertEqual(status, 200, text)
        streamed = billed(json_objects(status, text))
        self.assertIsNotNone(streamed, "no usage in the stream")
        status, text = post("/v1/chat/completions",
                            worker_chat("Name three colours.", stream=False))
        self.assertEqual(status, 200, text)
        plain = billed(json_objects(status, text))
        self.assertEqual(streamed["prompt"], plain["prompt"])
        self.assertEqual(streamed["completion"], plain["completion"])
        self.assertGreater(streamed["completion"], 0)
        self.assertLessEqual(streamed["completion"], 8)
        self.assertEqual(plain["reasoning"], 0)  # SmolLM2 does not think
        # The second time, the prompt's full KV blocks come from the prefix cache and are billed
        # as cached; never more than the prompt.
        self.assertGreater(plain["cached"], 0)
        self.assertLessEqual(plain["cached"], plain["prompt"])

    def test_completions_as_the_worker_sends_them(self):
        body = {"model": MODEL_NAME, "prompt": "The capital of France is", "max_tokens": 5,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        status, text = post("/v1/completions", body)
        self.assertEqual(status, 200, text)
        numbers = billed(json_objects(status, text))
        self.assertEqual(numbers["completion"], 5)
        self.assertGreater(numbers["prompt"], 0)

    def check_field(self, path, base, field, value):
        body = dict(base)
        body[field] = value
        if field == "stream" or field == "stream_options":
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        status, text = post(path, body)
        if status == 200:
            objects = json_objects(status, text)
            self.assertTrue(objects, f"{field}: empty answer")
            self.assertIsNotNone(billed(objects), f"{field}: no usage to bill")
            return "honoured"
        self.assertEqual(status, 400, f"{field}: {status} {text[:300]}")
        message = json.loads(text)["error"]["message"]
        self.assertIn(field, message, f"{field}: the 400 does not name the field: {message}")
        return "refused"

    def test_every_forwarded_field_is_honoured_or_refused_by_name(self):
        outcomes = {}
        base = worker_chat("Say hello.")
        for field, value in CHAT_FIELDS.items():
            outcomes["chat." + field] = self.check_field("/v1/chat/completions", base, field,
                                                         value)
        base = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 4, "stream": True,
                "stream_options": {"include_usage": True}}
        for field, value in COMPLETION_FIELDS.items():
            outcomes["completions." + field] = self.check_field("/v1/completions", base, field,
                                                                value)
        print(json.dumps(outcomes, indent=1))
        # What the worker needs from every engine must be honoured.
        for field in ("max_completion_tokens", "max_tokens", "stream", "stream_options",
                      "temperature", "top_p", "stop", "n", "frequency_penalty",
                      "presence_penalty"):
            self.assertEqual(outcomes["chat." + field], "honoured", field)
        self.assertEqual(outcomes["completions.seed"], "honoured")

    def test_fields_the_worker_refuses_on_chat_are_refused(self):
        for field, value in (("tools", [{"type": "function", "function": {"name": "f"}}]),
                             ("tool_choice", "required"), ("logit_bias", {"1": 5})):
            status, text = post("/v1/chat/completions", worker_chat("Hi", **{field: value}))
            self.assertEqual(status, 400, field)
            self.assertIn(field, json.loads(text)["error"]["message"])

    def test_full_model_name_with_hash_is_not_the_base_name(self):
        # The worker strips "@..." before forwarding; a name that still carries it is an error
        # the client can read (404 model_not_found), not a silent fallback.
        status, text = post("/v1/chat/completions",
                            worker_chat("Hi", model=MODEL_NAME + "@0123abcd"))
        self.assertEqual(status, 404, text)
        self.assertIn("model", json.loads(text)["error"]["message"].lower())


if __name__ == "__main__":
    unittest.main(verbosity=2)
