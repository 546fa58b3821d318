"""End-to-end test of response_format (grammar-constrained decoding) with the real SmolLM2.

For several prompts and schemas, greedy and sampled (temperature 0.8, seeds), streamed and not,
every constrained answer that ends with finish_reason "stop" must parse with json.loads and
validate against its schema with the `jsonschema` package; strict schemas here bound every
string and array, so those answers must all end with "stop". Unsupported schemas are a 400
naming the keyword. Runs on one rank and under `mpirun -np 3 --tp 3` (vocab-sharded logits: the
mask is applied to the merged candidates every TP rank holds). Prints tokens/s of a constrained
and an unconstrained request of the same length (no timing assertion).
"""

import json
import os
import re
import shutil
import sys
import time
import unittest

import jsonschema
import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import Server  # noqa: E402

MODEL_NAME = "SmolLM2-135M-Instruct"

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer"},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16},
                    "maxItems": 3},
    },
    "required": ["name", "age", "hobbies"],
    "additionalProperties": False,
}
COLOR = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "bright": {"type": "boolean"},
        "score": {"type": "number"},
    },
    "required": ["color", "bright", "score"],
    "additionalProperties": False,
}
CITY = {
    "type": "object",
    "properties": {
        "city": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 20},
                           "population": {"type": "integer"},
                           "capital": {"type": ["boolean", "null"]}},
            "required": ["name", "population", "capital"],
            "additionalProperties": False,
        },
        "sights": {"type": "array", "items": {"type": "string", "maxLength": 20},
                   "minItems": 1, "maxItems": 3},
    },
    "required": ["city", "sights"],
    "additionalProperties": False,
}
CASES = [
    ("Describe a person called Anna as JSON.", PERSON),
    ("What colour is the sky? Answer in JSON.", COLOR),
    ("Tell me about Paris in JSON.", CITY),
]


def json_schema_format(schema, name="answer"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


class Structured:
    """Shared tests; subclasses start the server (one rank, or three with --tp 3)."""

    SERVER = None
    SAMPLED_SEEDS = (1, 2)
    JSON_OBJECT_PROMPTS = ["Give me a JSON object about a cat.",
                           "List three fruits as a JSON object.", "Hi!"]

    def client(self):
        return openai.OpenAI(base_url=self.SERVER.base + "/v1", api_key="unused", max_retries=0,
                             timeout=600)

    def chat(self, prompt, response_format, **kw):
        return self.client().chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": prompt}],
            response_format=response_format, **kw)

    def check_schema_answer(self, r, schema):
        choice = r.choices[0]
        text = choice.message.content
        self.assertEqual(choice.finish_reason, "stop", text)
        value = json.loads(text)
        jsonschema.validate(value, schema)
        return value

    def test_1_schemas_greedy(self):
        for prompt, schema in CASES:
            r = self.chat(prompt, json_schema_format(schema), temperature=0, max_tokens=300)
            value = self.check_schema_answer(r, schema)
            print(f"  greedy {list(schema['properties'])}: {json.dumps(value)}", flush=True)

    def test_2_schemas_sampled(self):
        for seed in self.SAMPLED_SEEDS:
            for prompt, schema in CASES:
                r = self.chat(prompt, json_schema_format(schema), temperature=0.8, seed=seed,
                              max_tokens=300)
                self.check_schema_answer(r, schema)
            # The same seed gives the same answer.
        prompt, schema = CASES[0]
        a = self.chat(prompt, json_schema_format(schema), temperature=0.8, seed=7, max_tokens=300)
        b = self.chat(prompt, json_schema_format(schema), temperature=0.8, seed=7, max_tokens=300)
        self.assertEqual(a.choices[0].message.content, b.choices[0].message.content)

    def test_3_json_object(self):
        stopped = 0
        for i, prompt in enumerate(self.JSON_OBJECT_PROMPTS):
            kw = {"temperature": 0} if i == 0 else {"temperature": 0.8, "seed": i}
            r = self.chat(prompt, {"type": "json_object"}, max_tokens=150, **kw)
            choice = r.choices[0]
            self.assertIn(choice.finish_reason, ("stop", "length"))
            if choice.finish_reason == "stop":
                stopped += 1
                self.assertIsInstance(json.loads(choice.message.content), dict)
            else:  # cut by max_tokens: incomplete, but a prefix of an object
                self.assertTrue(choice.message.content.lstrip().startswith("{"))
                self.assertEqual(r.usage.completion_tokens, 150)
        print(f"  json_object: {stopped}/{len(self.JSON_OBJECT_PROMPTS)} complete within 150 "
              "tokens", flush=True)

    def test_4_streamed_and_completions(self):
        prompt, schema = CASES[1]
        text, finish = "", None
        for chunk in self.client().chat.completions.create(
                model=MODEL_NAME, messages=[{"role": "user", "content": prompt}],
                response_format=json_schema_format(schema), temperature=0.8, seed=5,
                max_tokens=300, stream=True):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        self.assertEqual(finish, "stop")
        jsonschema.validate(json.loads(text), schema)
        # /v1/completions takes response_format too (as vLLM).
        r = self.client().completions.create(
            model=MODEL_NAME, prompt="A person as JSON:", max_tokens=300, temperature=0,
            extra_body={"response_format": json_schema_format(PERSON)})
        self.assertEqual(r.choices[0].finish_reason, "stop")
        jsonschema.validate(json.loads(r.choices[0].text), PERSON)

    def test_5_length_cut_is_length(self):
        prompt, schema = CASES[0]
        r = self.chat(prompt, json_schema_format(schema), temperature=0, max_tokens=5)
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 5)

    def test_6_unsupported_is_400(self):
        for keyword, schema in [
                ("format", {"type": "object", "properties": {"a": {"type": "string",
                                                                   "format": "email"}}}),
                ("not", {"type": "object", "properties": {"a": {"not": {"type": "null"}}}}),
                ("minimum", {"type": "integer", "minimum": 3})]:
            with self.assertRaises(openai.BadRequestError) as caught:
                self.chat("Hi", json_schema_format(schema), max_tokens=5)
            self.assertIn(f"'{keyword}'", str(caught.exception))
        with self.assertRaises(openai.BadRequestError) as caught:
            self.chat("Hi", json_schema_format({"anyOf": [{"type": "integer"},
                                                          {"type": "number"}]}), max_tokens=5)
        self.assertIn("share a JSON type", str(caught.exception))
        with self.assertRaises(openai.BadRequestError):
            self.chat("Hi", {"type": "yaml"}, max_tokens=5)
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client().chat.completions.create(
                model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                extra_body={"guided_regex": "(a"})
        self.assertEqual(caught.exception.param, "guided_regex")
        self.assertIn("unterminated group", str(caught.exception))

    def test_7_speed(self):
        """tokens/s of a constrained and an unconstrained request of the same length."""
        # minLength keeps the string open, so both requests generate exactly n tokens.
        story = {"type": "object", "properties": {"story": {"type": "string", "minLength": 1000}},
                 "required": ["story"], "additionalProperties": False}
        prompt = "Write a long story about a dragon, as JSON with a 'story' field."
        n = 64
        for sampling in ({"temperature": 0}, {"temperature": 0.8, "seed": 3}):
            figures = {}
            for label, kw in [("unconstrained", {"extra_body": {"ignore_eos": True}}),
                              ("constrained", {"response_format": json_schema_format(story)})] * 2:
                start = time.time()
                r = self.client().chat.completions.create(
                    model=MODEL_NAME, messages=[{"role": "user", "content": prompt}],
                    max_tokens=n, **sampling, **kw)
                elapsed = time.time() - start
                tokens = r.usage.completion_tokens
                figures[label] = (tokens, tokens / elapsed)  # the second (warm) run is kept
            mode = "greedy" if sampling["temperature"] == 0 else "temperature 0.8"
            for label, (tokens, rate) in figures.items():
                print(f"  SPEED {self.LAYOUT} {mode} {label}: {tokens} tokens, {rate:.1f} tokens/s",
                      flush=True)
            self.assertEqual(figures["unconstrained"][0], n)
            self.assertEqual(figures["constrained"][0], n)


    def guided(self, prompt, extra, **kw):
        return self.client().chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": prompt}], extra_body=extra,
            **kw)

    def test_8_guided_regex_and_choice(self):
        """vLLM's guided_regex / guided_choice / structured_outputs, checked with Python's re."""
        cases = [
            ("What is a phone number in the format 555-0123?", r"\d{3}-\d{4}"),
            ("Name a city.", r"[A-Z][a-z]{1,15}( [A-Z][a-z]{1,15})?"),
            ("Give a date.", r"(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"),
            ("Is water wet? Answer yes or no and why.", r"(Yes|No), because [a-z ,]{5,60}\."),
        ]
        for seed in (None, 3):
            kw = {"temperature": 0} if seed is None else {"temperature": 0.8, "seed": seed}
            for prompt, pattern in cases:
                r = self.guided(prompt, {"guided_regex": pattern}, max_tokens=80, **kw)
                text = r.choices[0].message.content
                self.assertEqual(r.choices[0].finish_reason, "stop", text)
                self.assertIsNotNone(re.fullmatch(pattern, text, re.ASCII), (pattern, text))
            choices = ["positive", "negative", "neutral"]
            r = self.guided("I loved this film! Sentiment?", {"guided_choice": choices},
                            max_tokens=10, **kw)
            self.assertIn(r.choices[0].message.content, choices)
            r = self.guided("Pick a colour.",
                            {"structured_outputs": {"choice": ["red", "green", "blue"]}},
                            max_tokens=10, **kw)
            self.assertIn(r.choices[0].message.content, ["red", "green", "blue"])
        # Streamed, and on /v1/completions.
        text = ""
        for chunk in self.client().chat.completions.create(
                model=MODEL_NAME, messages=[{"role": "user", "content": "A number?"}],
                extra_body={"structured_outputs": {"regex": r"[1-9]\d{0,3}"}}, max_tokens=10,
                temperature=0.8, seed=4, stream=True):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        self.assertIsNotNone(re.fullmatch(r"[1-9]\d{0,3}", text), text)
        r = self.client().completions.create(
            model=MODEL_NAME, prompt="The answer is", max_tokens=10, temperature=0,
            extra_body={"guided_choice": ["yes", "no"]})
        self.assertIn(r.choices[0].text, ["yes", "no"])

    def test_9_guided_json_with_refs_optionals_and_patterns(self):
        """Schemas as Pydantic writes them ($defs/$ref, anyOf [X, null], pattern), checked with
        the jsonschema package; through guided_json and response_format."""
        schema = {
            "$defs": {"Address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20},
                               "zip": {"type": "string", "pattern": "^\\d{5}$"}},
                "required": ["city", "zip"], "additionalProperties": False}},
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 20},
                "nickname": {"anyOf": [{"type": "string", "maxLength": 12}, {"type": "null"}]},
                "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"},
                "home": {"$ref": "#/$defs/Address"},
            },
            "required": ["name", "nickname", "code", "home"],
            "additionalProperties": False,
        }
        for seed in (None, 5):
            kw = {"temperature": 0} if seed is None else {"temperature": 0.8, "seed": seed}
            r = self.guided("Describe a person as JSON.", {"guided_json": schema},
                            max_tokens=200, **kw)
            self.check_schema_answer(r, schema)
            r = self.chat("Describe a person as JSON.", json_schema_format(schema),
                          max_tokens=200, **kw)
            self.check_schema_answer(r, schema)


class OneRank(Structured, unittest.TestCase):
    LAYOUT = "1 rank"

    @classmethod
    def setUpClass(cls):
        cls.SERVER = Server(["--served-model-name", MODEL_NAME, "--max-model-len", "1024",
                             "--kv-cache-mb", "128"])

    @classmethod
    def tearDownClass(cls):
        cls.SERVER.stop()


class TensorParallel3(Structured, unittest.TestCase):
    LAYOUT = "tp 3"
    SAMPLED_SEEDS = (1,)
    JSON_OBJECT_PROMPTS = ["Give me a JSON object about a cat."]

    @classmethod
    def setUpClass(cls):
        if not shutil.which("mpirun"):
            raise unittest.SkipTest("mpirun not installed")
        cls.SERVER = Server(["--served-model-name", MODEL_NAME, "--tp", "3", "--max-model-len",
                             "1024", "--kv-cache-mb", "128"], ranks=3)

    @classmethod
    def tearDownClass(cls):
        cls.SERVER.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
