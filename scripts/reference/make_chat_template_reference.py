#!/usr/bin/env python3
# Writes tests/data/chat_template_reference.json: real Hugging Face chat templates
# (tests/data/chat_templates/*.jinja) rendered by Python's jinja2 exactly as transformers'
# apply_chat_template renders them, over several conversations each. alem's own Jinja
# interpreter (src/model/jinja/) is tested against this file byte for byte
# (tests/unit/test_jinja_templates.cc), so it must come from the implementation HF itself uses.
#
# transformers' settings, reproduced here without importing transformers:
#   ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
#                                 extensions=[jinja2.ext.loopcontrols])
#   filters["tojson"] = json.dumps(x, ensure_ascii=False, indent=..., separators=..., sort_keys=...)
#   globals raise_exception (raises TemplateError) and strftime_now (datetime.now().strftime);
#   render(messages=..., tools=None or the tools, documents=None, add_generation_prompt=...,
#          bos_token=..., eos_token=..., **chat_template_kwargs)
# strftime_now is pinned to 2025-02-03 so the output does not depend on the day it is run.
#
# Usage: python3 -m venv .venv-reference && .venv-reference/bin/pip install jinja2
#        .venv-reference/bin/python scripts/reference/make_chat_template_reference.py
import json
import os
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATES = os.path.join(ROOT, "tests", "data", "chat_templates")
OUT = os.path.join(ROOT, "tests", "data", "chat_template_reference.json")
NOW = datetime(2025, 2, 3, 14, 5, 6)


def raise_exception(message):
    raise TemplateError(message)


def strftime_now(fmt):
    return NOW.strftime(fmt)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


# Per template: the special tokens transformers passes (None: the tokenizer has none) and which
# conversation shapes the template supports.
MODELS = {
    "HuggingFaceTB-SmolLM2-135M-Instruct.jinja": dict(bos="<|im_start|>", eos="<|im_end|>",
                                                      tools=False, system=True),
    "Qwen-Qwen2.5-7B-Instruct.jinja": dict(bos=None, eos="<|im_end|>", tools="qwen", system=True),
    "Qwen-Qwen3-0.6B.jinja": dict(bos=None, eos="<|im_end|>", tools="qwen", system=True,
                                  thinking=True),
    "meta-llama-Llama-3.1-8B-Instruct.jinja": dict(bos="<|begin_of_text|>", eos="<|eot_id|>",
                                                   tools="llama", system=True),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": dict(bos="<|begin_of_text|>", eos="<|eot_id|>",
                                                   tools="llama", system=True),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": dict(bos="<s>", eos="</s>", tools="mistral",
                                                       system=True),
    "google-gemma-2-2b-it.jinja": dict(bos="<bos>", eos="<eos>", tools=False, system=False),
    "google-gemma-3-4b-it.jinja": dict(bos="<bos>", eos="<eos>", tools=False, system=True),
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. \"Paris\""},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}

UNICODE = ("Grüße aus Köln — 日本語テキスト, emoji 🚀👍🏽, quotes 'single' \"double\", "
           "a backslash \\ and {{ not_a_variable }} {% not_a_tag %}\n  indented line\ttab")


def conversations(spec):
    system = {"role": "system", "content": "You are a terse assistant.\nAnswer in one line."}
    user = {"role": "user", "content": "What is the capital of France?"}
    answer = {"role": "assistant", "content": "Paris."}
    follow = {"role": "user", "content": "  And of Italy?  "}
    out = []
    if spec["system"]:
        out.append(("system_user", [system, user], True, {}))
    out.append(("user_only", [user], True, {}))
    out.append(("user_only_no_generation_prompt", [user], False, {}))
    if spec["system"]:
        out.append(("multi_turn", [system, user, answer, follow], True, {}))
    out.append(("multi_turn_no_system", [user, answer, follow], True, {}))
    out.append(("unicode_and_quotes", [{"role": "user", "content": UNICODE}], True, {}))
    out.append(("empty_content", [{"role": "user", "content": ""}], True, {}))
    if not spec["system"]:
        out.append(("system_refused", [system, user], True, {}))
    if spec.get("thinking"):
        thought = {"role": "assistant",
                   "content": "<think>\nThe user asks about France.\n</think>\n\nParis."}
        out.append(("thinking_disabled", [user], True, {"enable_thinking": False}))
        out.append(("thinking_enabled", [user], True, {"enable_thinking": True}))
        out.append(("thinking_history", [system, user, thought, follow], True,
                    {"enable_thinking": True}))
    kind = spec["tools"]
    if kind:
        call_id = "call12345" if kind == "mistral" else "call_1"
        call = {"role": "assistant", "content": "" if kind != "llama" else None,
                "tool_calls": [{"id": call_id, "type": "function",
                                "function": {"name": "get_weather",
                                             "arguments": {"city": "Paris", "unit": "celsius"}}}]}
        if kind == "qwen":
            call["content"] = ""
        result = {"role": "tool", "tool_call_id": call_id, "name": "get_weather",
                  "content": "{\"temperature\": 18, \"sky\": \"clear\"}"}
        final = {"role": "assistant", "content": "It is 18 °C and clear in Paris."}
        weather = {"role": "user", "content": "What's the weather in Paris?"}
        msgs = [weather, call, result, final]
        if kind != "mistral":
            msgs = [system] + msgs
        out.append(("tool_history", msgs, True, {"tools": [WEATHER_TOOL]}))
        out.append(("tools_offered", [weather], True, {"tools": [WEATHER_TOOL]}))
        if kind == "qwen":
            two = dict(call)
            two["tool_calls"] = call["tool_calls"] + [{"type": "function", "function": {
                "name": "get_weather", "arguments": {"city": "Rome"}}}]
            res2 = dict(result, content="{\"temperature\": 21}")
            out.append(("parallel_tool_calls", [system, weather, two, result, res2], True,
                        {"tools": [WEATHER_TOOL]}))
    return out


def main():
    env = environment()
    cases = []
    for name in sorted(MODELS):
        spec = MODELS[name]
        with open(os.path.join(TEMPLATES, name), encoding="utf-8") as f:
            template = env.from_string(f.read())
        for conv_name, messages, generation, extra in conversations(spec):
            kwargs = dict(extra)
            tools = kwargs.pop("tools", None)
            variables = {"messages": messages, "tools": tools, "documents": None,
                         "add_generation_prompt": generation, **kwargs}
            if spec["bos"] is not None:
                variables["bos_token"] = spec["bos"]
            variables["eos_token"] = spec["eos"]
            case = {"template": name, "name": conv_name, "messages": messages, "tools": tools,
                    "add_generation_prompt": generation, "kwargs": kwargs,
                    "bos_token": spec["bos"], "eos_token": spec["eos"]}
            try:
                case["text"] = template.render(**variables)
            except TemplateError as e:
                case["error"] = str(e)
            cases.append(case)
    doc = {
        "about": "Generated by scripts/reference/make_chat_template_reference.py; do not edit.",
        "generator": {"jinja2": jinja2.__version__, "now": NOW.isoformat()},
        "cases": cases,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
