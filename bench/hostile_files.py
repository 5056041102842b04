"""Hostile files for bench/hostile.py: damaged CSV tables, damaged run directories, and the traces
the issues name (ids above 2^63, lists where ids belong, ``ProfilerStep#<huge>``, deep nesting,
lone surrogates, invalid UTF-8, cut gzip, empty files, JSON lists, empty ``traceEvents``)."""

from __future__ import annotations

import copy
import gzip
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CSV_CELLS", "mutate_csv", "mutate_run_dir", "named_trace_blobs"]

CSV_CELLS = (
    b"",
    b"nan",
    b"inf",
    b"-inf",
    b"abc",
    b"1e999",
    b"9" * 30,
    b"-1",
    b"0",
    b'"',
    b"\xff\xfe",
    b"\x00",
    b"1,2",
    b"0x10",
    b"True",
    b"1e308",
    b"-0",
    b"\xed\xa0\x80",
)
NVML_CSV = (
    b"t_ns,gpu_util_pct,mem_util_pct,sm_clock_mhz,mem_clock_mhz,sm_clock_max_mhz,power_w,power_limit_w,temp_c,"
    b"mem_used_mb,mem_total_mb,clock_event_reasons,pcie_tx_kbps,pcie_rx_kbps\n"
    b"1795878507933104517,0,0,1980,3201,1980,118.8,700.0,37,1275.9,143771.0,0x0,59590,5674\n"
    b"1795878507989753238,50,10,1980,3201,1980,300.8,700.0,40,1323.9,143771.0,0x4,,\n"
)


def mutate_csv(data: bytes, rng: random.Random) -> bytes:
    """A CSV table with hostile cells, a missing or doubled header, ragged rows or garbage."""
    lines = data.rstrip(b"\n").split(b"\n")
    op = rng.choice(
        (
            "cells",
            "cells",
            "cells",
            "header-only",
            "no-header",
            "extra",
            "short",
            "garbage",
            "empty",
            "dup-header",
            "crlf",
            "many",
            "truncate",
        )
    )
    if op == "cells" and len(lines) > 1:
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(1, len(lines))
            cells = lines[i].split(b",")
            cells[rng.randrange(len(cells))] = rng.choice(CSV_CELLS)
            lines[i] = b",".join(cells)
    elif op == "header-only":
        lines = lines[:1]
    elif op == "no-header":
        lines = lines[1:]
    elif op == "extra":
        lines = [ln + b",extra" for ln in lines]
    elif op == "short":
        lines = [ln.rsplit(b",", rng.randint(1, 3))[0] for ln in lines]
    elif op == "garbage":
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 400)))
    elif op == "empty":
        return b""
    elif op == "dup-header":
        lines = lines[:1] + lines
    elif op == "crlf":
        return b"\r\n".join(lines) + b"\r\n"
    elif op == "many" and len(lines) > 1:
        lines = lines[:1] + lines[1:] * 400
    elif op == "truncate":
        text = b"\n".join(lines)
        return text[: rng.randrange(len(text) + 1)]
    return b"\n".join(lines) + b"\n"


def _clear(path: Path) -> None:
    """Remove whatever is at ``path`` (a file, a link, a folder) so that it can be written anew."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _tree_or_text(path: Path, rng: random.Random, tree: Callable[[Any], str], docs: tuple[str, ...]) -> str:
    if not path.parent.is_dir() or path.is_dir():
        return f"{path.name} (skipped)"
    try:
        doc = yaml.safe_load(path.read_text()) if rng.random() > 0.25 else None
    except (OSError, yaml.YAMLError, RecursionError):  # damaged by an earlier step of this case
        doc = None
    if doc is None:
        path.write_text(rng.choice(docs))
        return f"{path.name} text"
    try:
        text = tree(doc)
    except RecursionError:  # nested too deeply for yaml.safe_dump by an earlier step
        text = rng.choice(docs)
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return f"{path.name} values"


def mutate_run_dir(
    run: Path, rng: random.Random, trace_text: Callable[[], bytes], tree: Callable[[Any], str], docs: tuple[str, ...]
) -> list[str]:
    """Damage 1-3 parts of the run directory ``run`` (a copy); the labels of what was done."""
    rank0 = run / "rank0"
    labels = []
    for _ in range(rng.randint(1, 3)):
        what = rng.choice(("meta", "meta", "rank", "steps", "steps", "host", "nvml", "trace", "fs", "fs"))
        if what == "meta":
            labels.append(_tree_or_text(run / "meta.yaml", rng, tree, docs))
        elif what == "rank":
            labels.append(_tree_or_text(rank0 / "rank.yaml", rng, tree, docs))
        elif what in ("steps", "host", "nvml"):
            p = rank0 / f"{what}.csv"
            if (p.is_file() and not p.is_symlink()) or (what == "nvml" and rank0.is_dir() and not p.exists()):
                p.write_bytes(mutate_csv(p.read_bytes() if p.is_file() else NVML_CSV, rng))
                labels.append(f"{p.name} damaged")
        elif what == "trace" and rank0.is_dir():
            for name in ("trace.json.gz", "trace.json"):
                _clear(rank0 / name)
            blob = trace_text()
            if rng.random() < 0.5:
                (rank0 / "trace.json.gz").write_bytes(gzip.compress(blob, compresslevel=1))
            else:
                (rank0 / "trace.json").write_bytes(blob)
            labels.append("trace values")
        elif what == "fs":
            labels.append(_layout(run, rng, docs))
    return labels


def _layout(run: Path, rng: random.Random, docs: tuple[str, ...]) -> str:
    """One change to the run directory's layout; its label."""
    rank0 = run / "rank0"
    op = rng.choice(
        (
            "rm-meta",
            "rm-trace",
            "trace-dir",
            "steps-dir",
            "meta-dir",
            "huge-rank",
            "empty-rank",
            "patches",
            "status",
            "trace-loop",
            "rank-file",
            "rm-steps",
        )
    )
    if not rank0.is_dir() and op not in ("rm-meta", "meta-dir", "empty-rank", "patches", "huge-rank"):
        return f"{op} (skipped)"
    for name in ("trace.json.gz", "trace.json"):
        if op in ("rm-trace", "trace-dir", "trace-loop"):
            _clear(rank0 / name)
    if op == "rm-meta" and (run / "meta.yaml").is_file():
        (run / "meta.yaml").unlink()
    elif op == "trace-dir":
        (rank0 / "trace.json.gz").mkdir()
    elif op == "steps-dir":
        _clear(rank0 / "steps.csv")
        (rank0 / "steps.csv").mkdir()
    elif op == "meta-dir":
        _clear(run / "meta.yaml")
        (run / "meta.yaml").mkdir()
    elif op == "huge-rank" and rank0.is_dir() and not (run / ("rank" + "9" * 30)).exists():
        shutil.copytree(rank0, run / ("rank" + "9" * 30), symlinks=True)
    elif op == "empty-rank":
        (run / "rank1").mkdir(exist_ok=True)
    elif op == "patches":
        _clear(run / "patches.yaml")
        (run / "patches.yaml").write_text(rng.choice(docs))
    elif op == "status":
        _clear(rank0 / ".status.json")
        (rank0 / ".status.json").write_bytes(rng.choice((b"{", b"[1]", b'{"step": 1e999}', b"\xff")))
    elif op == "trace-loop":
        os.symlink("trace.json.gz", rank0 / "trace.json.gz")
    elif op == "rank-file":
        shutil.rmtree(rank0)
        rank0.write_text("not a folder")
    elif op == "rm-steps":
        _clear(rank0 / "steps.csv")
    return op


def _set_all(doc: dict[str, Any], fn: Callable[[dict[str, Any]], None]) -> bytes:
    doc = copy.deepcopy(doc)
    for e in doc["traceEvents"]:
        if isinstance(e, dict):
            fn(e)
    return json.dumps(doc).encode()


def _args(e: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(e.get("args"), dict):
        e["args"] = {}
    return e["args"]


def _text(doc: dict[str, Any], old: str, new: str, count: int = -1) -> bytes:
    return json.dumps(doc).replace(old, new, count).encode("utf-8", "surrogatepass")


def named_trace_blobs(doc: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    """(label, file name, content) of every trace case the issues name, made from the trace ``doc``."""
    events = doc["traceEvents"]
    step = next(e["name"] for e in events if str(e.get("name", "")).startswith("ProfilerStep#"))
    plain = json.dumps(doc).encode()
    z = gzip.compress(plain)
    deep = "[" * 300_000 + "]" * 300_000
    out: list[tuple[str, str, bytes]] = [
        (
            "ids above 2^63",
            "t.json",
            _set_all(
                doc,
                lambda e: (
                    _args(e).update({"External id": 2**64 + 1, "correlation": 2**63 + 5}),
                    e.update(pid=2**63 + 7, tid=2**64 + 3),
                ),
            ),
        ),
        ("ids below -2^63", "t.json", _set_all(doc, lambda e: e.update(pid=-(2**63) - 9, tid=-(2**70)))),
        (
            "lists where ids belong",
            "t.json",
            _set_all(doc, lambda e: (e.update(pid=[1, 2], tid={"a": 1}), _args(e).update({"External id": [1]}))),
        ),
        ("ProfilerStep#<huge>", "t.json", _text(doc, '"ProfilerStep#', '"ProfilerStep#' + "9" * 40)),
        ("ProfilerStep#2^31", "t.json", _text(doc, f'"{step}"', f'"ProfilerStep#{2**31}"')),
        ("ProfilerStep# without a number", "t.json", _text(doc, '"ProfilerStep#', '"ProfilerStep#x')),
        (
            "deep nesting in args (3,000)",
            "t.json",
            _text(doc, '"args": {', '"args": {"Input Dims": ' + "[" * 3000 + "]" * 3000 + ", ", 1),
        ),
        ("deep nesting in args (300,000)", "t.json", _text(doc, '"args": {', f'"args": {{"x": {deep}, ', 1)),
        ("deep nesting at the top (300,000)", "t.json", _text(doc, '"traceEvents"', f'"x": {deep}, "traceEvents"')),
        ("lone surrogate in a name", "t.json", _text(doc, '"name": "', '"name": "\\ud800', 3)),
        ("lone surrogate in a key", "t.json", _text(doc, '"traceEvents"', '"\\udfff": 1, "traceEvents"')),
        ("invalid UTF-8 in a name", "t.json", plain.replace(b'"name": "', b'"name": "\xff\xfe', 3)),
        ("truncated gzip", "t.json.gz", z[: len(z) // 2]),
        ("gzip of nothing", "t.json.gz", gzip.compress(b"")),
        ("empty file", "t.json", b""),
        ("whitespace only", "t.json", b" \n\t\n"),
        ("JSON list of the events", "t.json", json.dumps(events).encode()),
        ("JSON list of numbers", "t.json", b"[1, 2, 3]"),
        ("empty JSON list", "t.json", b"[]"),
        ("empty traceEvents", "t.json", b'{"traceEvents": []}'),
        ("traceEvents a mapping", "t.json", b'{"traceEvents": {"a": 1}}'),
        ("traceEvents of numbers", "t.json", b'{"traceEvents": [1, 2, null, "x"]}'),
        ("null document", "t.json", b"null"),
        ("number document", "t.json", b"42"),
        ("all events without ts", "t.json", _set_all(doc, lambda e: e.pop("ts", None))),
        ("all events of an unknown ph", "t.json", _set_all(doc, lambda e: e.update(ph="Z"))),
        ("all ts NaN", "t.json", _set_all(doc, lambda e: e.update(ts="zzNaNzz")).replace(b'"zzNaNzz"', b"NaN")),
        ("all ts strings", "t.json", _set_all(doc, lambda e: e.update(ts=str(e.get("ts"))))),
        ("all ts not numbers", "t.json", _set_all(doc, lambda e: e.update(ts="soon"))),
        ("all ts 1e300", "t.json", _set_all(doc, lambda e: e.update(ts=1e300))),
        ("dur negative", "t.json", _set_all(doc, lambda e: e.update(dur=-5))),
        ("dur 10^30", "t.json", _set_all(doc, lambda e: e.update(dur=10**30))),
        (
            "only metadata events",
            "t.json",
            json.dumps({"traceEvents": [e for e in events if e.get("ph") == "M"]}).encode(),
        ),
        ("BOM before the document", "t.json", b"\xef\xbb\xbf" + plain),
    ]
    return out
