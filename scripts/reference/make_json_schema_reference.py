#!/usr/bin/env python3
# Writes tests/data/json_schema_reference.json: JSON Schemas that use anyOf/oneOf, $ref (with
# recursion), one-schema allOf and pattern (the keywords Pydantic models produce), each with
# JSON documents and whether the `jsonschema` package (Draft 2020-12) finds them valid. alem's
# constrained-decoding recognizer (src/engine/constrained/json_*.cc) must accept a document as
# complete exactly when jsonschema says it is valid (tests/unit/test_json_schema_reference.cc).
#
# Documents are compact (no whitespace), ASCII-escaped only where JSON requires it, with
# numbers of at most 16 digits: the forms the recognizer offers a model. They are hand-written
# values plus random mutations of them (values swapped between fields, strings edited), from a
# fixed seed.
#
# Usage: python3 scripts/reference/make_json_schema_reference.py   (with `jsonschema` installed)
import copy
import importlib.metadata
import json
import os
import random

import jsonschema

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "json_schema_reference.json")

# As Pydantic v2 writes `class Item(BaseModel): name: str; price: Optional[float] = None;
# tags: list[str]; sku: constr(pattern=...)` and a nested model through $defs.
PYDANTIC = {
    "$defs": {
        "Maker": {"properties": {"name": {"title": "Name", "type": "string"},
                                 "country": {"anyOf": [{"type": "string", "maxLength": 2,
                                                        "minLength": 2, "pattern": "^[A-Z]+$"},
                                                       {"type": "null"}],
                                             "default": None}},
                  "required": ["name"], "title": "Maker", "type": "object"}},
    "properties": {
        "name": {"title": "Name", "type": "string"},
        "price": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None},
        "tags": {"items": {"type": "string"}, "title": "Tags", "type": "array"},
        "sku": {"pattern": "^[A-Z]{3}-\\d{4}$", "title": "Sku", "type": "string"},
        "maker": {"$ref": "#/$defs/Maker"},
        "origin": {"allOf": [{"$ref": "#/$defs/Maker"}], "description": "where it is made"},
    },
    "required": ["name", "tags", "sku", "maker"],
    "title": "Item", "type": "object", "additionalProperties": False,
}
TREE = {
    "$defs": {"node": {"type": "object",
                       "properties": {"value": {"type": "integer"},
                                      "children": {"type": "array",
                                                   "items": {"$ref": "#/$defs/node"}}},
                       "required": ["value"], "additionalProperties": False}},
    "$ref": "#/$defs/node",
}
LIST = {  # recursion through the root
    "type": "object",
    "properties": {"head": {"type": "string", "pattern": "a+"},
                   "tail": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
    "required": ["head", "tail"], "additionalProperties": False,
}
MIXED = {
    "oneOf": [{"type": "string", "pattern": "^(?:yes|no)$"},
              {"type": "integer"},
              {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 2},
              {"const": True}],
}
CODES = {
    "type": "array",
    # [A-Za-z0-9_] rather than \w: jsonschema uses Python's `re`, whose \w also takes letters
    # such as é, where ECMA-262 (which JSON Schema names) and alem take ASCII only.
    "items": {"type": "string", "pattern": "^[A-Za-z0-9_]{2,4}(?:-\\d+)?$", "maxLength": 6},
}

CASES = [
    (PYDANTIC, [
        {"name": "Lamp", "price": 12.5, "tags": ["home"], "sku": "LMP-0001",
         "maker": {"name": "Acme", "country": "SE"}},
        {"name": "Lamp", "price": None, "tags": [], "sku": "ABC-1234",
         "maker": {"name": "Acme", "country": None}, "origin": {"name": "X"}},
        {"name": "", "tags": ["a", "b"], "sku": "XYZ-9999", "maker": {"name": "B"}},
        {"name": "Lamp", "tags": [], "sku": "abc-1234", "maker": {"name": "Acme"}},
        {"name": "Lamp", "tags": [], "sku": "ABC-123", "maker": {"name": "Acme"}},
        {"name": "Lamp", "tags": [], "sku": "ABC-1234", "maker": {"name": "Acme",
                                                                  "country": "Sweden"}},
        {"name": "Lamp", "tags": [], "sku": "ABC-1234", "maker": {"name": "Acme",
                                                                  "country": "se"}},
        {"name": "Lamp", "price": "12", "tags": [], "sku": "ABC-1234", "maker": {"name": "A"}},
        {"name": "Lamp", "tags": [], "sku": "ABC-1234"},
    ]),
    (TREE, [
        {"value": 1},
        {"value": 1, "children": [{"value": 2}, {"value": 3, "children": [{"value": 4}]}]},
        {"value": 1, "children": [{"value": "2"}]},
        {"value": 1, "children": [{"children": []}]},
        {"value": 1, "children": [{"value": 2, "extra": 1}]},
    ]),
    (LIST, [
        {"head": "a", "tail": None},
        {"head": "banana", "tail": {"head": "xax", "tail": None}},
        {"head": "b", "tail": None},
        {"head": "a", "tail": {"head": "c", "tail": None}},
        {"head": "a", "tail": {"head": "a"}},
    ]),
    (MIXED, ["yes", "no", "maybe", 42, -7, 4.5, ["x"], ["x", "y"], ["x", "y", "x"], ["z"],
             True, False, None, "yesno"]),
    (CODES, [["ab", "abcd-12", "x_1"], ["a"], ["abcde"], ["ab-"], ["ab-1234"], [], ["éé"]]),
]


def compact(doc):
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def mutate(rng, doc):
    """A random edit of a document: a string changed, a value replaced or removed."""
    doc = copy.deepcopy(doc)
    containers = []

    def walk(v):
        if isinstance(v, dict):
            containers.extend((v, k) for k in v)
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            containers.extend((v, i) for i in range(len(v)))
            for x in v:
                walk(x)

    walk(doc)
    if not containers:
        return doc
    parent, key = rng.choice(containers)
    value = parent[key]
    op = rng.randrange(4)
    if op == 0 and isinstance(value, str):
        chars = list(value)
        pos = rng.randint(0, len(chars))
        chars.insert(pos, rng.choice("aZ9-_ é"))
        parent[key] = "".join(chars)
    elif op == 1 and isinstance(value, str) and value:
        parent[key] = value[:-1]
    elif op == 2:
        parent[key] = rng.choice([None, 0, 3.5, "s", [], {}, True, "ABC-0000", "SE"])
    elif isinstance(parent, dict):
        del parent[key]
    else:
        parent.pop(key)
    return doc


def main():
    rng = random.Random(20261202)
    out = []
    for schema, docs in CASES:
        validator = jsonschema.Draft202012Validator(schema)
        texts = {compact(d) for d in docs}
        for d in docs:
            for _ in range(8):
                texts.add(compact(mutate(rng, d)))
        entries = [[t, validator.is_valid(json.loads(t))] for t in sorted(texts)]
        out.append({"schema": schema, "documents": entries})
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"generator": "jsonschema " + importlib.metadata.version("jsonschema"), "cases": out}, f,
                  ensure_ascii=False, indent=1)
        f.write("\n")
    total = sum(len(c["documents"]) for c in out)
    valid = sum(v for c in out for _, v in c["documents"])
    print(f"wrote {OUT}: {len(out)} schemas, {total} documents, {valid} valid")


if __name__ == "__main__":
    main()
