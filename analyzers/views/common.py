"""What the views share: the rows they return, the rank they read, steps, and op nesting.

Nesting: on one thread, CPU ops and annotations form a tree by time containment (the table is
sorted by start, enclosing ranges first). :func:`nest` walks each thread once with a stack and
gives every row its parent and the time its children cover, from which self time follows. No
torch import.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from stallscope.analyzers.model import AnalysisContext, EventTable, RankData, Step
from stallscope.analyzers.vocab import PROFILER_STEP, STALLSCOPE_STEP

__all__ = ["MB", "Nesting", "ViewRows", "is_step_marker", "nest", "pick_rank", "step_positions"]

MB = float(2**20)  # the report's megabyte (memory_capacity uses the same)


class ViewRows(list[dict[str, Any]]):
    """The rows of a view (plain dicts); ``note`` says why there are none, or what they leave out."""

    def __init__(self, rows: Iterable[dict[str, Any]] = (), note: str | None = None) -> None:
        super().__init__(rows)
        self.note = note

    def to_dict(self) -> dict[str, Any]:
        """``{"rows": [...], "note": ...}`` in plain types (YAML's safe dumper takes no list subclass)."""
        return {"rows": [dict(r) for r in self], "note": self.note}


def pick_rank(ctx: AnalysisContext, rank: int | None = None) -> RankData | None:
    """Rank ``rank`` (by number), else the first rank whose event table is full (not compacted)
    and not empty; None when there is no such rank."""
    if rank is not None:
        return next((r for r in ctx.ranks if r.rank == rank), None)
    full = [r for r in ctx.ranks if len(r.events) and not r.meta.get("compacted")]
    return full[0] if full else None


def is_step_marker(name: str) -> bool:
    """Step ranges (``ProfilerStep#N``, ``stallscope.step#N``): containers, never ops of their own."""
    return name.startswith((PROFILER_STEP, STALLSCOPE_STEP))


def step_positions(t: EventTable, steps: list[Step], rows: np.ndarray) -> np.ndarray:
    """For each row, the position of its step in ``steps`` (-1 outside every step)."""
    index = np.asarray([s.index for s in steps], dtype=np.int64)
    order = np.argsort(index, kind="stable")
    sidx = index[order]
    step = t.step[rows].astype(np.int64)
    if sidx.size == 0:
        return np.full(rows.size, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sidx, step), sidx.size - 1)
    return np.where((step >= 0) & (sidx[pos] == step), order[pos], -1).astype(np.int64)


class Nesting:
    """The forest of ``rows`` (table rows in table order, i.e. ascending) by time containment per
    thread.

    ``parent[i]`` is the position in ``rows`` of row ``i``'s innermost enclosing row on the same
    (pid, tid), or -1; ``child_ns[i]`` the time its direct children cover, clipped to its end;
    ``marked[i]`` whether row ``i`` or an ancestor is in ``mark`` (e.g. inside autograd's
    backward); ``thread[i]`` a small integer per (pid, tid).
    """

    def __init__(self, t: EventTable, rows: np.ndarray, mark: np.ndarray | None = None) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        n = self.rows.size
        self.start = t.ts_ns[self.rows]
        self.end = self.start + t.dur_ns[self.rows]
        pid, tid = t.pid[self.rows], t.tid[self.rows]
        # thread by thread (a stable sort keeps table order: start, then longer first), so that
        # parents precede their children
        self.order = np.lexsort((tid, pid))
        sp, st = pid[self.order], tid[self.order]
        first = np.ones(n, dtype=bool)
        first[1:] = (sp[1:] != sp[:-1]) | (st[1:] != st[:-1])
        self.thread = np.empty(n, dtype=np.int64)
        self.thread[self.order] = np.cumsum(first) - 1
        self.threads: list[tuple[int, int]] = [(int(a), int(b)) for a, b in zip(sp[first], st[first], strict=True)]
        parent = [-1] * n
        child = [0] * n
        marked = [False] * n
        mk = mark.tolist() if mark is not None else [False] * n
        start, end, thread = self.start.tolist(), self.end.tolist(), self.thread.tolist()
        stack: list[int] = []
        current = -1
        for i in self.order.tolist():
            if thread[i] != current:
                stack, current = [], thread[i]
            ts = start[i]
            while stack and end[stack[-1]] <= ts:
                stack.pop()
            if stack:
                p = stack[-1]
                parent[i] = p
                e = end[i] if end[i] < end[p] else end[p]
                child[p] += e - ts if e > ts else 0
                marked[i] = mk[i] or marked[p]
            else:
                marked[i] = mk[i]
            stack.append(i)
        self.parent = np.asarray(parent, dtype=np.int64)
        self.child_ns = np.asarray(child, dtype=np.int64)
        self.marked = np.asarray(marked, dtype=bool)

    @property
    def self_ns(self) -> np.ndarray:
        """Each row's duration minus the time its direct children cover."""
        return np.maximum(self.end - self.start - self.child_ns, 0)

    def innermost(self, t: EventTable, query: np.ndarray) -> np.ndarray:
        """For each table row in ``query``, the position (in ``rows``) of the innermost row on the
        same thread whose span contains the query's start, or -1."""
        out = np.full(query.size, -1, dtype=np.int64)
        if self.rows.size == 0 or query.size == 0:
            return out
        lookup = {key: k for k, key in enumerate(self.threads)}
        per_thread: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # thread -> (positions, their starts)
        for th in range(len(self.threads)):
            pos = np.flatnonzero(self.thread == th)
            pos = pos[np.argsort(self.start[pos], kind="stable")]
            per_thread[th] = (pos, self.start[pos])
        parent, end = self.parent.tolist(), self.end.tolist()
        for qi, r in enumerate(query.tolist()):
            found = lookup.get((int(t.pid[r]), int(t.tid[r])))
            if found is None:
                continue
            pos, starts = per_thread[found]
            ts = int(t.ts_ns[r])
            j = int(np.searchsorted(starts, ts, side="right")) - 1
            p = int(pos[j]) if j >= 0 else -1
            while p >= 0 and end[p] <= ts:
                p = parent[p]
            out[qi] = p
        return out


def nest(t: EventTable, rows: np.ndarray, mark: np.ndarray | None = None) -> Nesting:
    """The :class:`Nesting` of ``rows``; ``mark`` (bool per row) is inherited by descendants."""
    return Nesting(t, rows, mark)
