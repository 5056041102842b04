"""``diagnose --annotated-trace FILE``: the Kineto trace with the findings on its timeline.

The original events are kept; added are a process named "stallscope findings" with one track
per finding (a complete event over the analysed steps, its evidence in ``args``), and instant
events at the first occurrences of the kernels each finding names. Perfetto and
chrome://tracing show them beside the GPU streams. The output is plain Chrome trace JSON
(gzipped when the name ends in ``.gz``), written atomically.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stallscope.profiler.common import ToolError, atomic_write_bytes

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext

__all__ = ["FINDINGS_PID", "annotate_trace", "write_annotated_trace"]

FINDINGS_PID = "stallscope findings"
KERNEL_MARKS_PER_FINDING = 20


def _read(path: Path) -> dict[str, Any]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        data = json.load(fh)
    return data if isinstance(data, dict) else {"traceEvents": data}


def annotate_trace(
    trace: dict[str, Any], ctx: AnalysisContext, report: dict[str, Any], rank_index: int = 0
) -> dict[str, Any]:
    """A copy of ``trace`` with the report's findings added as events (timestamps in trace µs)."""
    rd = ctx.ranks[rank_index]
    ev = rd.events
    if rd.steps:
        start_ns, end_ns = rd.steps[0].start_ns, rd.steps[-1].end_ns
    elif len(ev):
        start_ns, end_ns = int(ev.ts_ns.min()), int((ev.ts_ns + ev.dur_ns).max())
    else:
        start_ns, end_ns = 0, 0
    added: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": FINDINGS_PID, "tid": 0, "args": {"name": FINDINGS_PID}},
        {"ph": "M", "name": "process_sort_index", "pid": FINDINGS_PID, "tid": 0, "args": {"sort_index": -1}},
    ]
    first_of: dict[str, list[int]] = {}
    for row in range(len(ev)):
        if int(ev.kind[row]) == 2:  # Kind.KERNEL
            first_of.setdefault(ev.names[int(ev.name[row])], [])
            lst = first_of[ev.names[int(ev.name[row])]]
            if len(lst) < KERNEL_MARKS_PER_FINDING:
                lst.append(int(ev.ts_ns[row]))
    for track, f in enumerate(report.get("findings", []), start=1):
        label = f"[{f['severity']}] {f['title']}"
        added.append({"ph": "M", "name": "thread_name", "pid": FINDINGS_PID, "tid": track, "args": {"name": f["id"]}})
        added.append(
            {
                "ph": "X",
                "cat": "stallscope_finding",
                "name": label,
                "pid": FINDINGS_PID,
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
            for ts in first_of.get(str(kernel), []):
                added.append(
                    {
                        "ph": "i",
                        "s": "t",
                        "cat": "stallscope_finding",
                        "name": f"{f['id']}: {str(kernel)[:60]}",
                        "pid": FINDINGS_PID,
                        "tid": track,
                        "ts": ts / 1000.0,
                    }
                )
    out = dict(trace)
    out["traceEvents"] = list(trace.get("traceEvents", [])) + added
    return out


def write_annotated_trace(ctx: AnalysisContext, report: dict[str, Any], path: str | Path) -> Path:
    """Annotate rank 0's trace and write it to ``path`` (``.gz`` compresses)."""
    rd = next((r for r in ctx.ranks if r.trace_path), None)
    if rd is None:
        raise ToolError("--annotated-trace: the target has no trace to annotate (telemetry only)")
    assert rd.trace_path is not None  # chosen above for its trace
    out = Path(path)
    if out.is_dir():
        raise ToolError(f"{out}: is a directory; pass a file name such as {out / 'annotated.json.gz'}")
    data = annotate_trace(_read(Path(rd.trace_path)), ctx, report, ctx.ranks.index(rd))
    raw = json.dumps(data).encode("utf-8")
    return atomic_write_bytes(out, gzip.compress(raw, compresslevel=6) if out.name.endswith(".gz") else raw)
