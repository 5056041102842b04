"""`diagnose --annotated-trace` streams: every input event comes out, findings are added with
integer pids, and the writer's memory does not grow with the trace."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path
from typing import Any

from stallscope.analyzers.annotate import FINDINGS_PID, stream_annotated_trace, write_annotated_trace
from stallscope.analyzers.inputs import open_report

SGEMM = "ampere_sgemm_128x64_tn"


def _events(steps: int, ops: int) -> list[dict[str, Any]]:
    """A Kineto-like window: per op a CPU op, its launch, an fp32 GEMM kernel, the flow pair."""
    out: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": 4242, "tid": 0, "args": {"name": "python"}},
        {"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": "GPU 0"}},
    ]
    t, corr = 1000.0, 1
    for s in range(steps):
        out.append(
            {
                "ph": "X",
                "cat": "user_annotation",
                "name": f"ProfilerStep#{s}",
                "pid": 4242,
                "tid": 4242,
                "ts": t,
                "dur": ops * 25.0,
                "args": {"External id": corr},
            }
        )
        for _ in range(ops):
            out += [
                {
                    "ph": "X",
                    "cat": "cpu_op",
                    "name": "aten::mm",
                    "pid": 4242,
                    "tid": 4242,
                    "ts": t,
                    "dur": 20.0,
                    "args": {"External id": corr, "note": "a string with }, { inside"},
                },
                {
                    "ph": "X",
                    "cat": "cuda_runtime",
                    "name": "cudaLaunchKernel",
                    "pid": 4242,
                    "tid": 4242,
                    "ts": t + 5,
                    "dur": 4.0,
                    "args": {"External id": corr, "cbid": 211, "correlation": corr},
                },
                {
                    "ph": "X",
                    "cat": "kernel",
                    "name": SGEMM,
                    "pid": 0,
                    "tid": 7,
                    "ts": t + 12,
                    "dur": 15.0,
                    "args": {"External id": corr, "device": 0, "stream": 7, "correlation": corr, "grid": [128, 1, 1]},
                },
                {"ph": "s", "id": corr, "pid": 4242, "tid": 4242, "ts": t + 5, "cat": "ac2g", "name": "ac2g"},
                {"ph": "f", "id": corr, "pid": 0, "tid": 7, "ts": t + 12, "cat": "ac2g", "name": "ac2g", "bp": "e"},
            ]
            t, corr = t + 25.0, corr + 1
        t += 100.0
    return out


def _write(path: Path, events: list[dict[str, Any]]) -> dict[str, Any]:
    doc = {
        "schemaVersion": 1,
        "deviceProperties": [{"id": 0, "name": "NVIDIA H200"}],
        "traceEvents": events,
        "traceName": "synthetic",
        "baseTimeNanoseconds": 1700000000000000000,
    }
    with gzip.open(path, "wt") as fh:  # Kineto's layout: indented, one key per line
        json.dump(doc, fh, indent=1)
    return doc


def _read(path: Path) -> dict[str, Any]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def test_annotated_trace_keeps_every_event_and_adds_findings_with_int_pids(tmp_path: Path) -> None:
    src = tmp_path / "trace.json.gz"
    doc = _write(src, _events(steps=12, ops=200))  # ~12k events: read in several batches
    report, ctx = open_report(src)
    assert any(SGEMM in ((f.get("where") or {}).get("kernels") or []) for f in report["findings"])
    out = write_annotated_trace(ctx, report, tmp_path / "annotated.json.gz")
    got = _read(out)
    n = len(doc["traceEvents"])
    assert got["traceEvents"][:n] == doc["traceEvents"]
    added = got["traceEvents"][n:]
    assert {k: v for k, v in got.items() if k != "traceEvents"} == {k: v for k, v in doc.items() if k != "traceEvents"}
    assert added and all(type(e["pid"]) is int and type(e["tid"]) is int for e in added)
    assert all(e["pid"] == FINDINGS_PID for e in added)
    assert FINDINGS_PID not in {e["pid"] for e in doc["traceEvents"]}
    names = {e["args"]["name"] for e in added if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {"stallscope findings"}
    finding_ids = {f["id"] for f in report["findings"]}
    assert {e["args"]["id"] for e in added if e["ph"] == "X"} == finding_ids
    marks = [e for e in added if e["ph"] == "i" and SGEMM in e["name"]]
    first_kernels = [e["ts"] for e in doc["traceEvents"] if e.get("cat") == "kernel"][:20]
    assert sorted(m["ts"] for m in marks) == first_kernels  # the kernel's first launches


def test_plain_output_and_an_empty_event_array(tmp_path: Path) -> None:
    src = tmp_path / "empty.json"
    src.write_text(json.dumps({"traceEvents": [], "displayTimeUnit": "ms"}))
    extra = [{"ph": "M", "name": "process_name", "pid": FINDINGS_PID, "tid": 0, "args": {"name": "x"}}]
    out = stream_annotated_trace(src, extra, tmp_path / "out.json")
    assert json.loads(out.read_text()) == {"traceEvents": extra, "displayTimeUnit": "ms"}
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file was left behind"


def test_writer_memory_does_not_hold_the_trace(tmp_path: Path) -> None:
    src = tmp_path / "big.json.gz"
    doc = _write(src, _events(steps=40, ops=1000))  # 200k events
    n = len(doc["traceEvents"])
    compact_mb = len(json.dumps(doc)) / 2**20
    del doc
    # Holding the events as Python objects (the whole-trace json.load the writer used to do) takes
    # about 6x the compact JSON text: 183 MB under tracemalloc for this trace; streaming, 18 MB.
    assert n > 200_000 and compact_mb > 25
    bound_mb = 40
    extra = [{"ph": "M", "name": "process_name", "pid": FINDINGS_PID, "tid": 0, "args": {"name": "x"}}]
    tracemalloc.start()
    try:
        out = stream_annotated_trace(src, extra, tmp_path / "out.json.gz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak / 2**20 < bound_mb, f"peak {peak / 2**20:.1f} MB while writing"
    with gzip.open(out, "rt") as fh:
        got = json.load(fh)["traceEvents"]
    assert len(got) == n + 1 and got[-1] == extra[0]
