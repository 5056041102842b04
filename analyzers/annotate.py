"""``diagnose --annotated-trace FILE``: the Kineto trace with the findings on its timeline.

The original events are kept; added are a process named "stallscope findings" with one track
per finding (a complete event over the analysed steps, its evidence in ``args``), and instant
events at the first occurrences of the kernels each finding names. Perfetto and
chrome://tracing show them beside the GPU streams. The output is plain Chrome trace JSON
(gzipped when the name ends in ``.gz``), written atomically.

The trace is streamed: read in batches of whole events (:mod:`analyzers.tracefile`, about 1 MB
of JSON at a time), each batch written out (one line of JSON) before the next is read, the
findings' events appended at the end of ``traceEvents``, then the trace's other keys. Memory
does not grow with the trace (a file without Kineto's layout, e.g. a bare event array, is read
whole, as the reader does). ``traceEvents`` comes first in the output; the other keys keep
their order. Every pid and tid written is an integer, as the trace-event format defines them.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from stallscope.analyzers.tracefile import iter_trace_batches
from stallscope.analyzers.vocab import Kind
from stallscope.profiler.common import ToolError, atomic_output

try:  # orjson writes events ~5x faster than json
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - depends on the environment
    import json

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj).encode("utf-8")


if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext

__all__ = ["FINDINGS_PID", "annotation_events", "write_annotated_trace", "stream_annotated_trace"]


class _Sink(Protocol):
    """Where the output goes: the file itself, or the gzip stream around it."""

    def write(self, data: bytes, /) -> object: ...


# The trace-event format's pid is an integer: one above every Linux pid (pid_max is at most
# 2**22) and every GPU index, inside int32 (what viewers store), so it never merges with a
# process of the trace.
FINDINGS_PID = 0x7FFF0000
FINDINGS_NAME = "stallscope findings"
KERNEL_MARKS_PER_FINDING = 20
GZIP_LEVEL = 3  # as the recorder's trace.json.gz: most of level 6's size at a third of its time


def annotation_events(ctx: AnalysisContext, report: dict[str, Any], rank_index: int = 0) -> list[dict[str, Any]]:
    """The events that put ``report``'s findings on rank ``rank_index``'s timeline (trace µs)."""
    rd = ctx.ranks[rank_index]
    ev = rd.events
    if rd.steps:
        start_ns, end_ns = rd.steps[0].start_ns, rd.steps[-1].end_ns
    elif len(ev):
        start_ns, end_ns = int(ev.ts_ns.min()), int((ev.ts_ns + ev.dur_ns).max())
    else:
        start_ns, end_ns = 0, 0
    pid = FINDINGS_PID
    added: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": FINDINGS_NAME}},
        {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": -1}},
    ]
    marks: dict[str, list[int]] = {}
    for track, f in enumerate(report.get("findings", []), start=1):
        label = f"[{f['severity']}] {f['title']}"
        added.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": track, "args": {"name": f["id"]}})
        added.append(
            {
                "ph": "X",
                "cat": "stallscope_finding",
                "name": label,
                "pid": pid,
                "tid": track,
                "ts": start_ns / 1000.0,
                "dur": max(end_ns - start_ns, 1) / 1000.0,
                "args": {
                    "id": f["id"],
                    "impact": f["impact"],
                    "evidence": f.get("evidence", {}),
                    "fixes": f.get("fixes", []),
                },
            }
        )
        for kernel in (f.get("where", {}) or {}).get("kernels", []) or []:
            name = str(kernel)
            if name not in marks:  # the first launches of the kernel, in table order
                rows = ev.rows_named(name.__eq__, Kind.KERNEL)[:KERNEL_MARKS_PER_FINDING]
                marks[name] = [int(t) for t in ev.ts_ns[rows]]
            for ts in marks[name]:
                added.append(
                    {
                        "ph": "i",
                        "s": "t",
                        "cat": "stallscope_finding",
                        "name": f"{f['id']}: {name[:60]}",
                        "pid": pid,
                        "tid": track,
                        "ts": ts / 1000.0,
                    }
                )
    return added


def write_annotated_trace(ctx: AnalysisContext, report: dict[str, Any], path: str | Path) -> Path:
    """Annotate rank 0's trace and write it to ``path`` (``.gz`` compresses), streaming."""
    rd = next((r for r in ctx.ranks if r.trace_path), None)
    if rd is None:
        raise ToolError("--annotated-trace: the target has no trace to annotate (telemetry only)")
    assert rd.trace_path is not None  # chosen above for its trace
    out = Path(path)
    if out.is_dir():
        raise ToolError(f"{out}: is a directory; pass a file name such as {out / 'annotated.json.gz'}")
    added = annotation_events(ctx, report, ctx.ranks.index(rd))
    return stream_annotated_trace(Path(rd.trace_path), added, out)


def stream_annotated_trace(src: Path, added: list[dict[str, Any]], out: Path) -> Path:
    """Copy the trace ``src`` to ``out`` batch by batch with ``added`` appended to its
    ``traceEvents``; atomic (a temporary file renamed at the end), gzipped for ``.gz`` names."""
    with atomic_output(out) as raw:
        if out.name.endswith(".gz"):
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as gz:
                _write_trace(gz, src, added)
        else:
            _write_trace(raw, src, added)
    return out


def _write_trace(fh: _Sink, src: Path, added: list[dict[str, Any]]) -> None:
    fh.write(b'{"traceEvents": [\n')
    first = True
    meta: dict[str, Any] = {}
    for events, batch_meta in iter_trace_batches(src):
        first = _write_events(fh, events, first)
        if batch_meta is not None:
            meta = batch_meta
    _write_events(fh, added, first)
    fh.write(b"\n]")
    for key, value in meta.items():
        if key != "traceEvents":
            fh.write(b",\n" + _dumps(str(key)) + b": " + _dumps(value))
    fh.write(b"}\n")


def _write_events(fh: _Sink, events: list[dict[str, Any]], first: bool) -> bool:
    """Write ``events`` as one line (one serializer call per batch: a call per event costs several
    times more), after a comma unless they are the array's ``first``; returns whether the array
    is still empty."""
    if not events:
        return first
    text = _dumps(events)[1:-1]
    fh.write(text if first else b",\n" + text)
    return False
