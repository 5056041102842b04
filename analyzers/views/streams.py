"""Busy and idle time and queue length per GPU stream, over the steps (HTA's idle time and queue
length analyses).

* busy: the union of the stream's kernels, memcpys and memsets, clipped to the steps' span;
* idle: the rest of the steps' span, split by the stream's queue at that moment: ``host wait``
  when nothing was queued on it (the GPU waited for the host to launch work), ``queued`` when
  launched work had not started yet (launch latency, a dependency on another stream or event);
* queue length: the operations launched on the stream and not yet finished, HTA's definition:
  +1 at the runtime call that launched an op (``cudaLaunchKernel``, ``cudaMemcpyAsync``, ...,
  linked by correlation id) and -1 at the op's end; its time-weighted mean and its maximum over
  the steps. Ops without a launch record count as busy but not in the queue.

The span is the steps' as the GPU sees them (:func:`gpu_step_spans`). No torch import.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stallscope.analyzers.breakdown import Intervals, union
from stallscope.analyzers.model import AnalysisContext, EventTable, Step
from stallscope.analyzers.views.common import ViewRows, pick_rank, step_positions

__all__ = ["NO_GPU", "gpu_step_spans", "stream_view"]

NO_GPU = "no GPU events in the trace (CPU-only run, or CUDA activity not recorded): no streams to show"


def _queue(t: EventTable, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The queue's change times and its value from each on, and how many ops lacked a launch."""
    launch = t.launch_of[rows]
    ok = launch >= 0
    ends = t.ts_ns[rows[ok]] + t.dur_ns[rows[ok]]
    times = np.concatenate([t.ts_ns[launch[ok]], ends])
    delta = np.concatenate([np.ones(ok.sum(), dtype=np.int64), -np.ones(ok.sum(), dtype=np.int64)])
    order = np.lexsort((delta, times))  # at equal times ends first: no phantom peak
    return times[order], np.cumsum(delta[order]), int((~ok).sum())


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` of an int64 array by sorting (numpy's hash-based unique is slower here)."""
    v = np.sort(values)
    return v[np.concatenate(([True], v[1:] != v[:-1]))] if v.size else v


def gpu_step_spans(t: EventTable, steps: list[Step]) -> Intervals:
    """The steps as the GPU sees them: each step from its start to its end or to the end of the
    last GPU op it launched, whichever is later (a host that runs ahead of the GPU leaves the
    GPU's share of a step after the step's host range); their union."""
    gpu = t.gpu_rows()
    pos = step_positions(t, steps, gpu)
    ends = np.asarray([s.end_ns for s in steps], dtype=np.int64)
    ok = pos >= 0
    np.maximum.at(ends, pos[ok], t.ts_ns[gpu[ok]] + t.dur_ns[gpu[ok]])
    return union(np.asarray([s.start_ns for s in steps], dtype=np.int64), ends)


def _overlapping(spans: Intervals, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Whether each ``[start, end)`` (at least 1 ns long) meets one of the sorted, disjoint ``spans``."""
    k = np.searchsorted(spans.starts, np.maximum(end, start + 1), side="left") - 1
    return (k >= 0) & (spans.ends[np.maximum(k, 0)] > start)


def _stream_row(t: EventTable, rows: np.ndarray, steps: list[Step], in_steps: Intervals) -> dict[str, Any]:
    """The figures of one stream whose GPU ops are ``rows`` (see :func:`stream_view`)."""
    busy = union(t.ts_ns[rows], t.ts_ns[rows] + t.dur_ns[rows])
    q_times, q_value, unlinked = _queue(t, rows)
    cuts = _sorted_unique(np.concatenate([busy.starts, busy.ends, q_times, in_steps.starts, in_steps.ends]))
    seg = cuts[:-1]
    length = np.diff(cuts)
    inside = in_steps.covers(seg)
    running = busy.covers(seg)
    k = np.searchsorted(q_times, seg, side="right") - 1
    queue = np.where(k >= 0, q_value[np.maximum(k, 0)], 0) if q_times.size else np.zeros(seg.size, dtype=np.int64)
    span = float(in_steps.total_ns)
    idle = inside & ~running

    def pct(mask: np.ndarray) -> float:
        return 100.0 * float(length[mask].sum()) / span

    busy_pct = pct(inside & running)
    return {
        "ops": int(_overlapping(in_steps, t.ts_ns[rows], t.ts_ns[rows] + t.dur_ns[rows]).sum()),
        "busy_ms_per_step": float(length[inside & running].sum()) / 1e6 / len(steps),
        "span_ms_per_step": span / 1e6 / len(steps),
        "busy_pct": busy_pct,
        "idle_pct": 100.0 - busy_pct,
        "idle_host_wait_pct": pct(idle & (queue <= 0)),
        "idle_queued_pct": pct(idle & (queue > 0)),
        "queue_mean": float((queue * length)[inside].sum()) / span,
        "queue_max": int(queue[inside].max()) if inside.any() else 0,
        "unlaunched_ops": unlinked,
    }


def stream_view(ctx: AnalysisContext, rank: int | None = None) -> ViewRows:
    """One row per GPU stream of rank ``rank`` (default: the first full rank) with work in its
    steps, busiest first.

    Row keys: ``device``, ``stream``, ``ops`` (GPU ops on the stream that overlap the steps),
    ``busy_ms_per_step``, ``span_ms_per_step`` (the steps' span on the GPU, per step),
    ``busy_pct`` and ``idle_pct`` (of that span; they sum to 100),
    ``idle_host_wait_pct`` and ``idle_queued_pct`` (the idle split, see module doc),
    ``queue_mean`` (time-weighted), ``queue_max``, ``unlaunched_ops`` (ops without a launch
    record, left out of the queue). Empty with a ``note`` on a CPU-only trace.
    """
    rd = pick_rank(ctx, rank)
    if rd is None:
        return ViewRows(note="no trace to read GPU streams from")
    t = rd.events
    gpu = t.gpu_rows()
    if gpu.size == 0:
        return ViewRows(note=NO_GPU)
    steps = rd.steps
    if not steps:
        return ViewRows(note="no steps in the trace: no span to measure the streams against")
    in_steps = gpu_step_spans(t, steps)
    overlaps = _overlapping(in_steps, t.ts_ns[gpu], t.ts_ns[gpu] + t.dur_ns[gpu])
    out = []
    dev_of, stream_of = t.device[gpu].astype(np.int64), t.stream[gpu].astype(np.int64)
    keys = (dev_of << 32) + (stream_of & 0xFFFFFFFF)
    for key in _sorted_unique(keys).tolist():
        mine = keys == key
        dev, stream = int(dev_of[mine][0]), int(stream_of[mine][0])
        if not overlaps[mine].any():
            continue
        rows = gpu[mine]
        out.append({"device": int(dev), "stream": int(stream), **_stream_row(t, rows, steps, in_steps)})
    out.sort(key=lambda r: -r["busy_pct"])
    return ViewRows(out, note=None if out else "no GPU work inside the steps")
