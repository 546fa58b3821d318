#!/usr/bin/env python3
# Writes tests/data/regex_reference.json: for each pattern, strings and whether Python's `re`
# matches them (re.fullmatch for guided_regex, re.search for JSON Schema's `pattern`), with
# re.ASCII so the shorthand classes \d \w \s mean what they mean in alem (as in RE2). alem's
# constrained-decoding regex engine (src/engine/constrained/regex*.cc) must give the same
# verdict for every string (tests/unit/test_regex_constraint.cc).
#
# Strings are a few hand-written matches per pattern plus random mutations of them (bytes
# inserted, deleted, replaced, prefixes and suffixes), from a fixed seed, so both verdicts
# occur often and the file is reproducible.
#
# Usage: python3 scripts/reference/make_regex_reference.py
import json
import os
import random
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "regex_reference.json")

# (pattern, mode, examples that are meant to match)
CASES = [
    (r"\d{3}-\d{4}", "full", ["555-1234", "000-0000"]),
    (r"[A-Z][a-z]+( [A-Z][a-z]+)*", "full", ["Paris", "New York", "Rio De Janeiro"]),
    (r"(yes|no|maybe)", "full", ["yes", "no", "maybe"]),
    (r"(?:ab|a)(?:bc|c)?d", "full", ["abd", "abcd", "acd", "ad", "abbcd"]),
    (r"[^,\n]{1,8}(,[^,\n]{1,8}){0,3}", "full", ["a,b,c", "héllo,wörld", "x"]),
    (r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?", "full", ["0", "-12.5e+3", "42", "3.14"]),
    (r"\w+@\w+\.(com|org|net)", "full", ["ann@example.com", "b_1@x.org"]),
    (r"(a|b)*abb", "full", ["abb", "aabb", "babb", "ababb"]),
    (r"\s*\[\s*\d+(\s*,\s*\d+)*\s*\]\s*", "full", ["[1,2,3]", " [ 4 ] ", "[10, 20]"]),
    (r"colou?r", "full", ["color", "colour"]),
    (r"x{2,}y{,2}z{3}", "full", ["xxzzz", "xxxxyyzzz", "xxyzzz"]),
    (r"[\u00e0-\u00ff]+\.", "full", ["àéî.", "ÿ."]),
    (r"(?P<year>\d{4})-(?P<month>0[1-9]|1[0-2])-(?P<day>\d{2})", "full",
     ["2024-01-31", "1999-12-01"]),
    (r"\$\d+\.\d{2} \(approx\)", "full", ["$10.99 (approx)", "$0.00 (approx)"]),
    (r"^(true|false)$", "full", ["true", "false"]),
    (r"[a-c]+?[\d\-]*", "full", ["abc-1", "a", "c--9"]),
    (r"😀|😃+|[😄-😆]", "full", ["😀", "😃😃", "😅"]),
    (r"a{a}", "full", ["a{a}"]),
    (r".{0,5}", "full", ["", "abc", "tab\tx"]),
    (r"[\S]{2}\D\W", "full", ["ab!?", "xyz "]),
    # JSON Schema's `pattern`: a search unless anchored.
    (r"\d+", "search", ["abc123def", "7", "no digits"]),
    (r"^[a-z]+$", "search", ["hello", "Hello", "abc1"]),
    (r"^ID-", "search", ["ID-7", "xID-7"]),
    (r"end$", "search", ["the end", "endless"]),
    (r"ab|cd", "search", ["xxabyy", "cd", "ac"]),
]


def mutations(rng, s, count):
    alphabet = list("aAbz09-_.,;:!?()[]{}$^ \t\néü€😃") + ([c for c in s] if s else [])
    out = set()
    for _ in range(count * 4):
        if len(out) >= count:
            break
        t = list(s)
        for _ in range(rng.randint(1, 2)):
            op = rng.randrange(5)
            if op == 0 or not t:
                t.insert(rng.randint(0, len(t)), rng.choice(alphabet))
            elif op == 1:
                del t[rng.randrange(len(t))]
            elif op == 2:
                t[rng.randrange(len(t))] = rng.choice(alphabet)
            elif op == 3:
                t = t[: rng.randint(0, len(t))]
            else:
                t = t + [rng.choice(alphabet)]
        out.add("".join(t))
    return sorted(out)


def main():
    rng = random.Random(20261202)
    cases = []
    for pattern, mode, examples in CASES:
        # `$` is the end of the text, as in JSON Schema (ECMA-262) and RE2; Python's `$` would
        # also match before a final newline, so it is spelled \Z for Python.
        py = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") \
            else pattern
        compiled = re.compile(py, re.ASCII)
        strings = set(examples)
        for e in examples:
            strings.update(mutations(rng, e, 12))
            strings.update(e[:i] for i in range(len(e)))
        checks = []
        for s in sorted(strings):
            hit = compiled.fullmatch(s) if mode == "full" else compiled.search(s)
            checks.append([s, bool(hit)])
        cases.append({"pattern": pattern, "mode": mode, "strings": checks})
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"generator": "python re " + re.__version__ if hasattr(re, "__version__")
                   else "python re", "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    total = sum(len(c["strings"]) for c in cases)
    matches = sum(v for c in cases for _, v in c["strings"])
    print(f"wrote {OUT}: {len(cases)} patterns, {total} strings, {matches} matches")


if __name__ == "__main__":
    main()
