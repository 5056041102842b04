"""Hostile values for the CLI's inputs, and the functions that put them into real files: the
generators of bench/robustness.py and tests/test_fuzz.py.

Values go into a seed as text fragments (:data:`HOSTILE_JSON`, :data:`HOSTILE_YAML`), so that a
case can hold what ``json.dumps`` never writes: integers past 2^64, NaN, lone surrogate escapes,
nesting 3,000 levels deep. Every mutator takes a :class:`random.Random`, so hypothesis
(``st.randoms``) can drive them as well as a seeded loop. Cases and seeds: bench/hostile_cases.py;
damaged CSV tables, run directories and the traces the issues name: bench/hostile_files.py.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
from typing import Any

import yaml

__all__ = [
    "ARG_KEYS",
    "EVENT_KEYS",
    "GATE_CONFIG",
    "HOSTILE_JSON",
    "HOSTILE_YAML",
    "YAML_DOCS",
    "fill",
    "mutate_bytes",
    "mutate_tree",
    "put_in_trace",
    "run_cli",
]

# fmt: off
HOSTILE_JSON: tuple[str, ...] = (
    str(2**63 + 7), str(2**64 + 1), str(-(2**63) - 9), "1" + "0" * 40, "-1", "0", "1e308", "1e999", "-1e999",
    "NaN", "Infinity", "-Infinity", "5e-324", "0.5", "[1, 2]", "[]", "{}", '{"a": 1}', '"abc"', '"12.5"', '""',
    "null", "true", "false", '"\\ud800x"', '"\\udfff\\ud800"', '"a\\u0000b\\u001b[31m"', json.dumps("x" * 100_000),
    '"ProfilerStep#' + "9" * 40 + '"', '"ProfilerStep#-3"', '"ProfilerStep#' + str(2**31) + '"',
    "[" * 3000 + "]" * 3000, '{"a":' * 3000 + "1" + "}" * 3000, "[" * 120 + "]" * 120, "[" * 400 + "]" * 400,
    '{"a":' * 400 + "1" + "}" * 400,
)
HOSTILE_YAML: tuple[str, ...] = (
    "null", "-1", "0", str(2**64 + 1), "9" * 400, "1.0e+999", ".nan", ".inf", "-.inf", '"abc"', '""', "[]", "{}",
    "[1, a, null]", "{a: [1]}", "true", "2020-01-01", "!!binary aGVsbG8=", "!!set {a, b}", '"\\ud800"',
    '"\\udfff\\ud800x"', "&r [*r]", "[" * 3000 + "]" * 3000, "[" * 120 + "]" * 120, "[" * 400 + "]" * 400,
    "x" * 100_000, '"ProfilerStep#' + "9" * 40 + '"', "0x7fffffffffffffffffff", "~", "-0.0", '"\\x00\\x1b"',
)
EVENT_KEYS = ("ph", "cat", "name", "pid", "tid", "ts", "dur", "s", "id", "args")
ARG_KEYS = (
    "External id", "correlation", "Input Dims", "Input type", "flops", "bytes", "Bytes", "stream", "device", "grid",
    "block", "registers per thread", "shared memory", "est. achieved occupancy %", "Collective name", "dtype",
    "In msg nelems", "Group size", "Process Group Ranks", "Total Allocated", "Total Reserved", "Device Id",
    "Device Type", "Addr", "name", "Sequence number", "Fwd thread id", "labels", "sort_index",
)
# fmt: on
TOP_KEYS = ("deviceProperties", "distributedInfo", "baseTimeNanoseconds", "schemaVersion", "traceName", "traceEvents")


GATE_CONFIG: dict[str, Any] = {
    "schema_version": 1,
    "alpha": 0.01,
    "min_samples": 5,
    "rules": [
        {"metric": "step_time_median", "max_regression_pct": 3},
        {"metric": "step_time_p90", "max_regression_pct": 10, "test": "bootstrap"},
        {"metric": "summary.breakdown_pct.data_wait_pct", "max_regression_abs": 5, "test": "threshold"},
        {"metric": "gpu_idle_pct", "direction": "lower_is_better", "max_regression_abs": 5, "required": False},
    ],
    "findings": {"fail_on_new": "medium", "allow": ["host-bound-launch-gaps"]},
}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run ``stallscope ARGV`` in this process: (exit code, stdout, stderr). stdout encodes UTF-8
    strictly, as a terminal's does, so that text the tool cannot print shows up as a failure."""
    from stallscope import cli

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    err = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.app(argv, prog_name="stallscope")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.buffer.getvalue().decode("utf-8", "replace"), err.getvalue()  # type: ignore[attr-defined]


def fill(text: str, fragments: list[str], quoted: bool) -> str:
    """Put each fragment where its marker ``zzH<i>zz`` stands (``quoted``: the marker is a JSON string)."""
    for i in reversed(range(len(fragments))):
        marker = f"zzH{i}zz"
        text = text.replace(f'"{marker}"' if quoted else marker, fragments[i])
    return text


def put_in_trace(doc: dict[str, Any], rng: random.Random) -> str:
    """The trace ``doc`` as JSON text with 1-5 hostile values (or one value in every event)."""
    doc = copy.deepcopy(doc)
    events = [e for e in doc.get("traceEvents", []) if isinstance(e, dict)]
    frags: list[str] = []

    def marker(fragment: str) -> str:
        frags.append(fragment)
        return f"zzH{len(frags) - 1}zz"

    scope = rng.random()
    if scope < 0.12 or not events:
        doc[rng.choice(TOP_KEYS)] = marker(rng.choice(HOSTILE_JSON))
    elif scope < 0.35:  # one key of every event: the same small fragment
        key, value = rng.choice(EVENT_KEYS + ARG_KEYS), marker(rng.choice([f for f in HOSTILE_JSON if len(f) < 300]))
        for e in events:
            target = e.setdefault("args", {}) if key in ARG_KEYS and isinstance(e.get("args", {}), dict) else e
            target[key] = value
    else:
        for _ in range(rng.randint(1, 5)):
            e = rng.choice(events)
            if rng.random() < 0.15:
                e.pop(rng.choice(EVENT_KEYS), None)
            elif rng.random() < 0.5 and isinstance(e.get("args", {}), dict):
                e.setdefault("args", {})[rng.choice(ARG_KEYS)] = marker(rng.choice(HOSTILE_JSON))
            else:
                e[rng.choice(EVENT_KEYS)] = marker(rng.choice(HOSTILE_JSON))
    return fill(json.dumps(doc), frags, quoted=True)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Byte-level damage: a cut, flipped bytes, a spliced fragment, invalid UTF-8, a BOM, NULs."""
    n = len(data)
    op = rng.choice(("truncate", "flip", "splice", "delete", "utf8", "bom", "nul"))
    at = rng.randrange(n + 1)
    if op == "truncate":
        return data[:at]
    if op == "flip":
        arr = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            if arr:
                arr[rng.randrange(len(arr))] = rng.randrange(256)
        return bytes(arr)
    if op == "splice":
        return data[:at] + rng.choice(HOSTILE_JSON).encode()[:5000] + data[at:]
    if op == "delete":
        return data[:at] + data[at + rng.randint(1, 200) :]
    if op == "utf8":  # inside a string where one is near: bytes no UTF-8 decoder accepts
        q = data.find(b'"', at)
        at = q + 1 if q >= 0 else at
        return data[:at] + rng.choice((b"\xff\xfe", b"\xed\xa0\x80", b"\xc3", b"\x80")) + data[at:]
    if op == "bom":
        return b"\xef\xbb\xbf" + data
    return data[:at] + b"\x00" * rng.randint(1, 8) + data[at:]


def mutate_tree(doc: Any, rng: random.Random, as_json: bool) -> str:
    """``doc`` (a report or a config) as YAML or JSON text with 1-3 nodes replaced or deleted."""
    doc = copy.deepcopy(doc)
    paths: list[tuple[Any, Any]] = []
    stack: list[Any] = [doc]
    while stack and len(paths) < 5000:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            paths.append((node, k))
            stack.append(v)
    frags: list[str] = []
    for _ in range(rng.randint(1, 3)):
        if not paths:
            break
        parent, key = rng.choice(paths)
        if isinstance(parent, dict) and rng.random() < 0.2:
            parent.pop(key, None)
            continue
        frags.append(rng.choice(HOSTILE_JSON if as_json else HOSTILE_YAML))
        try:
            parent[key] = f"zzH{len(frags) - 1}zz"
        except IndexError:  # a list shortened by an earlier deletion
            frags.pop()
    text = json.dumps(doc) if as_json else yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1 << 30)
    return fill(text, frags, quoted=as_json)


YAML_DOCS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)),
    "a: &x [*x]\n",
    "x: &y {k: *y}\n",
    "{unclosed: [1, 2\n",
    "",
    "null\n",
    "[1, 2]\n",
    "just text\n",
    "\t- tab: indent\n",
    "!!python/object/apply:os.system ['true']\n",
    "a: 1\na: 2\n",
    "[" * 5000 + "]" * 5000,
    '{"\\ud800": "\\udfff"}\n',
    "? [1, 2]\n: unhashable key\n",
    "--- 1\n--- 2\n",
    "%YAML 9.9\n--- a\n",
)
