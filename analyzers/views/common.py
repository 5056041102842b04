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
        self.parent = _parents(self.start, self.end, self.order, first)
        inner = np.flatnonzero(self.parent >= 0)
        up = self.parent[inner]
        # a child covers its parent from its start to the earlier of the two ends
        self.child_ns = np.zeros(n, dtype=np.int64)
        np.add.at(self.child_ns, up, np.maximum(np.minimum(self.end[inner], self.end[up]) - self.start[inner], 0))
        self.marked = _inherit(np.zeros(n, dtype=bool) if mark is None else np.asarray(mark, dtype=bool), self.parent)

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


# Threads with fewer rows than this are walked in Python (numpy's per-call cost is more there).
_VECTOR_MIN_ROWS = 64
_NEVER = 1 << 64  # an end no start reaches: the bottom of every stack


def _parents(start: np.ndarray, end: np.ndarray, order: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The parent of each row (a position, or -1): ``order`` lists the rows thread by thread (the
    first of each thread marked in ``first``), each thread's rows in table order. The rule is a
    stack walk: before a row is pushed, rows on top of the stack that end at or before its start
    are popped; what is left on top is its parent. A thread whose rows start in order and nest
    (no row ends after its parent) is done with arrays (:func:`_nested_parents`), any other
    thread by the walk itself."""
    n = order.size
    parent = np.full(n, -1, dtype=np.int64)
    bounds = [*np.flatnonzero(first).tolist(), n]
    walk: list[tuple[int, int]] = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b - a >= _VECTOR_MIN_ROWS:
            seg = order[a:b]
            found = _nested_parents(start[seg], end[seg])
            if found is not None:
                inner = found >= 0
                parent[seg[inner]] = seg[found[inner]]
                continue
        walk.append((a, b))
    if walk:
        starts, ends, order_l, out = start.tolist(), end.tolist(), order.tolist(), parent.tolist()
        for a, b in walk:
            stack_i, stack_e = [-1], [_NEVER]
            for i in order_l[a:b]:
                ts = starts[i]
                while stack_e[-1] <= ts:
                    stack_e.pop()
                    stack_i.pop()
                out[i] = stack_i[-1]
                stack_i.append(i)
                stack_e.append(ends[i])
        parent = np.asarray(out, dtype=np.int64)
    return parent


def _nested_parents(s: np.ndarray, e: np.ndarray) -> np.ndarray | None:
    """The stack walk of :func:`_parents` on one thread's rows (starts ``s``, ends ``e``) with
    arrays: each row's parent position, or None when the rows do not start in order or do not
    nest (then only the walk itself gives its answer).

    With starts in order, row ``j`` is popped before the first later row that starts at or after
    its end (``first_after``), provided every row above it on the stack ends no later than it
    does. Then the stack after row ``i`` holds ``depth[i]`` rows, and the row below ``i`` is the
    last earlier row pushed at ``depth[i] - 1``. That proviso is checked on the result, row by
    row in order: each row ends no later than the parent found for it; by induction the parents
    found are then the walk's."""
    m = s.size
    if m > 1 and bool((s[1:] < s[:-1]).any()):
        return None
    idx = np.arange(m, dtype=np.int64)
    first_after = np.maximum(np.searchsorted(s, e, side="left"), idx + 1)
    depth = idx + 1 - np.cumsum(np.bincount(first_after, minlength=m + 1)[:m])
    width = m + 1
    keys = depth * width + idx  # by depth, then row
    by_depth = np.sort(keys)
    pos = np.searchsorted(by_depth, keys - width, side="left") - 1  # the last earlier row one level down
    below = by_depth[np.maximum(pos, 0)]
    found = np.where(depth > 1, below % width, -1)
    inner = depth > 1
    nested = (pos >= 0) & (below // width == depth - 1) & (e <= e[np.maximum(found, 0)])
    return found if bool(nested[inner].all()) else None


def _inherit(mark: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """``mark`` or'ed with every ancestor's (``parent``: positions, -1 at the roots), by pointer
    jumping: after round k each row has looked 2**k levels up."""
    marked = mark.copy()
    if not marked.any():
        return marked
    up = parent.copy()
    live = np.flatnonzero(up >= 0)
    while live.size:
        marked[live] |= marked[up[live]]
        up[live] = up[up[live]]
        live = live[up[live] >= 0]
    return marked


def nest(t: EventTable, rows: np.ndarray, mark: np.ndarray | None = None) -> Nesting:
    """The :class:`Nesting` of ``rows``; ``mark`` (bool per row) is inherited by descendants."""
    return Nesting(t, rows, mark)
