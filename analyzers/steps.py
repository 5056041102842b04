"""Find a rank's steps in its linked event table and give every row its step.

Steps are ``ProfilerStep#N`` ranges, else ``stallscope.step#N`` markers, else the whole trace
as one step (with a notice), begun after the trace's start-up when the caller found one
(:mod:`analyzers.clock`). A last step that torch.profiler cut short when it stopped is left
out.
"""

from __future__ import annotations

from operator import methodcaller

import numpy as np

from stallscope.analyzers.arrays import isin
from stallscope.analyzers.model import EventTable, Kind, Step
from stallscope.analyzers.vocab import PROFILER_STEP, STALLSCOPE_STEP, STEP_NAME

__all__ = ["assign_steps", "find_steps"]

_MARKERS = ((PROFILER_STEP, "ProfilerStep"), (STALLSCOPE_STEP, "stallscope"))


def find_steps(t: EventTable, not_before_ns: int | None = None) -> tuple[list[Step], str | None]:
    """Steps: ``ProfilerStep#N`` ranges, else ``stallscope.step#N`` markers, else the whole trace
    (with a notice), starting no earlier than ``not_before_ns`` (the end of start-up) when that
    leaves a non-empty span. Returns ``(steps, notice)``."""
    cpu_like = np.asarray([Kind.CPU_OP, Kind.ANNOTATION], dtype=np.int8)
    for prefix, source in _MARKERS:
        ids = t.name_ids_matching(methodcaller("startswith", prefix))
        if ids.size == 0:
            continue
        rows = np.flatnonzero(isin(t.name, ids) & isin(t.kind, cpu_like))
        if rows.size == 0:
            continue
        steps: list[Step] = []
        seen: set[int] = set()
        for r in rows[np.argsort(t.ts_ns[rows], kind="stable")]:
            m = STEP_NAME.match(t.name_of(int(r)))
            # a number past int32 is no step number (steps are int32 columns): counted on instead
            idx = int(m.group(1)) if m and len(m.group(1)) <= 9 else max(seen, default=-1) + 1
            if idx in seen:
                continue
            seen.add(idx)
            start = int(t.ts_ns[r])
            steps.append(Step(index=idx, start_ns=start, end_ns=start + max(int(t.dur_ns[r]), 1), source=source))
        steps, cut = _within_recorded_span(t, rows, steps)
        steps, notice = _drop_truncated_last(steps)
        return steps, "; ".join(n for n in (cut, notice) if n) or None
    if len(t) == 0:
        return [], None
    start = int(t.ts_ns.min())
    end = int((t.ts_ns + t.dur_ns).max())
    if not_before_ns is not None and start < not_before_ns < end:
        start = int(not_before_ns)
    notice = "no ProfilerStep#N or stallscope step markers in the trace: the whole trace is treated as one step"
    return [Step(index=0, start_ns=start, end_ns=max(end, start + 1), source="whole-trace")], notice


def _within_recorded_span(t: EventTable, markers: np.ndarray, steps: list[Step]) -> tuple[list[Step], str | None]:
    """Steps cut to the span of the trace's other events. A step cannot be longer than what the
    profiler recorded: a marker reaching beyond that span by more than 10 % of it (at least 1 ms;
    the profiler closes its last step a little after the last event) holds time the trace did
    not see, such as a 13 s ProfilerStep of another process in a 355 ms window."""
    others = np.ones(len(t), dtype=bool)
    others[markers] = False
    if not others.any() or not steps:
        return steps, None
    lo = int(t.ts_ns[others].min())
    hi = int((t.ts_ns[others] + t.dur_ns[others]).max())
    margin = max(1_000_000, (hi - lo) // 10)
    out: list[Step] = []
    cut = []
    for st in steps:
        if st.start_ns < lo - margin or st.end_ns > hi + margin:
            a, b = max(st.start_ns, lo), min(st.end_ns, hi)
            cut.append(f"{st.source}#{st.index} ({st.wall_ms:.4g} ms)")
            if b <= a:
                continue
            st = Step(index=st.index, start_ns=a, end_ns=b, source=st.source)
        out.append(st)
    if not cut:
        return steps, None
    return out, (
        f"step markers reaching beyond the {(hi - lo) / 1e6:.4g} ms the trace recorded ({', '.join(cut[:3])}"
        f"{' ...' if len(cut) > 3 else ''}) were cut to it: a step cannot outlast the trace"
    )


def _drop_truncated_last(steps: list[Step]) -> tuple[list[Step], str | None]:
    """torch.profiler closes the step that is open when it stops: a last step far shorter than
    the others (under a tenth of their median: it holds little more than its own start) is that
    stub, not a real step."""
    if len(steps) < 2:
        return steps, None
    others = sorted(s.wall_ms for s in steps[:-1])
    median = others[len(others) // 2]
    last = steps[-1]
    if last.wall_ms < 0.1 * median:
        return steps[:-1], (
            f"the last step ({last.source}#{last.index}, {last.wall_ms:.3g} ms against a median of "
            f"{median:.3g} ms) was cut short when the profiler stopped: left out"
        )
    return steps, None


def assign_steps(t: EventTable, steps: list[Step]) -> None:
    """Fill ``t.step``: CPU rows by time containment; GPU rows take the step of their launch."""
    if not steps or len(t) == 0:
        return
    order = sorted(range(len(steps)), key=lambda i: steps[i].start_ns)
    starts = np.asarray([steps[i].start_ns for i in order], dtype=np.int64)
    ends = np.asarray([steps[i].end_ns for i in order], dtype=np.int64)
    idx = np.asarray([steps[i].index for i in order], dtype=np.int32)
    pos = np.searchsorted(starts, t.ts_ns, side="right") - 1
    posc = np.maximum(pos, 0)
    inside = (pos >= 0) & (t.ts_ns < ends[posc])
    t.step[:] = np.where(inside, idx[posc], -1)
    gpu = np.flatnonzero(t.launch_of >= 0)
    if gpu.size:
        t.step[gpu] = t.step[t.launch_of[gpu]]
