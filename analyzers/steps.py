"""Find a rank's steps in its linked event table and give every row its step.

Steps are ``ProfilerStep#N`` ranges, else ``stallscope.step#N`` markers, else the whole trace
as one step (with a notice). A last step that torch.profiler cut short when it stopped is left
out.
"""

from __future__ import annotations

from operator import methodcaller

import numpy as np

from stallscope.analyzers.model import EventTable, Kind, Step
from stallscope.analyzers.vocab import PROFILER_STEP, STALLSCOPE_STEP, STEP_NAME

__all__ = ["assign_steps", "find_steps"]

_MARKERS = ((PROFILER_STEP, "ProfilerStep"), (STALLSCOPE_STEP, "stallscope"))


def find_steps(t: EventTable) -> tuple[list[Step], str | None]:
    """Steps: ``ProfilerStep#N`` ranges, else ``stallscope.step#N`` markers, else the whole trace
    (with a notice). Returns ``(steps, notice)``."""
    cpu_like = np.asarray([Kind.CPU_OP, Kind.ANNOTATION], dtype=np.int8)
    for prefix, source in _MARKERS:
        ids = t.name_ids_matching(methodcaller("startswith", prefix))
        if ids.size == 0:
            continue
        rows = np.flatnonzero(np.isin(t.name, ids) & np.isin(t.kind, cpu_like))
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
        return _drop_truncated_last(steps)
    if len(t) == 0:
        return [], None
    start = int(t.ts_ns.min())
    end = int((t.ts_ns + t.dur_ns).max())
    notice = "no ProfilerStep#N or stallscope step markers in the trace: the whole trace is treated as one step"
    return [Step(index=0, start_ns=start, end_ns=max(end, start + 1), source="whole-trace")], notice


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
