"""Helpers shared by the built-in analyzers (not an analyzer: the leading underscore keeps it
out of discovery). Everything works on :class:`~analyzers.model.EventTable` columns.

Grading used by every time-based analyzer unless its docstring says otherwise: a problem
that costs >= 5 % of step time is **medium** and >= 20 % is **high** (the graded cut points of
TensorFlow's input-pipeline analyzer and the TensorBoard profiler's 5 % DataLoader rule: below
5 % a stall is inside run-to-run noise of a training step and rarely worth a code change;
a fifth of every step is the point where fixing it is the first thing to do). Anything above
1 % is **low**; less is **info**.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from stallscope.analyzers.arrays import isin, union1d, unique
from stallscope.analyzers.base import Analyzer, Finding, Severity, severity_from_share
from stallscope.analyzers.model import GPU_KINDS, Kind
from stallscope.analyzers.peaks import GpuPeaks, peaks_for
from stallscope.analyzers.vocab import is_data_wait, is_device_to_host, is_sync_call

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext, EventTable, RankData

MEDIUM_PCT = 5.0
HIGH_PCT = 20.0
# Untraced steps needed before their median stands for the loop without the profiler (three: a
# median that one outlier step cannot move).
MIN_UNTRACED_STEPS = 3
LOW_PCT = 1.0


# torch.compile's own work as the trace records it (dynamo_timed record_function ranges): a
# frame's compile, and the AOT/inductor stages under it. Names seen on torch 2.11-2.13.
COMPILE_EVENT = re.compile(
    r"^(entire_frame_compile|_compile\.compile_inner|compile_fx_inner|inductor_compile|backend_compile|"
    r"create_aot_dispatcher_function|OutputGraph\.call_user_compiler|compile_attempt_\d+|CompiledFunction\.backward_compile)"
    r"( \(dynamo_timed\))?$"
)


def grade(share_pct: float, medium: float = MEDIUM_PCT, high: float = HIGH_PCT) -> Severity:
    """Severity of a share of step time with the common cut points."""
    return severity_from_share(share_pct, medium, high, LOW_PCT)


def window_ns(rank: RankData) -> tuple[int, int]:
    """(total nanoseconds of the analysed steps, number of steps); the trace span if no steps.

    The steps' span ends at the later of the last step marker and the end of the GPU work the
    steps launched: a loop that never synchronizes runs its CPU side ahead of the GPU, so CPU
    step markers alone would undercount the time (and shares would exceed 100 %)."""
    if rank.steps:
        ev = rank.events
        start, end = rank.steps[0].start_ns, rank.steps[-1].end_ns
        cpu_ns = int(sum(s.end_ns - s.start_ns for s in rank.steps))
        gpu: np.ndarray | list[int] = (
            np.flatnonzero(isin(ev.kind, np.asarray(GPU_KINDS, dtype=ev.kind.dtype)) & (ev.step >= 0))
            if len(ev)
            else []
        )
        if len(gpu):
            end = max(end, int((ev.ts_ns[gpu] + ev.dur_ns[gpu]).max()))
        return max(cpu_ns, int(end - start)), len(rank.steps)
    ev = rank.events
    if not len(ev):
        return 0, 0
    return int((ev.ts_ns + ev.dur_ns).max() - ev.ts_ns.min()), 1


def in_window(ev: EventTable, rows: np.ndarray) -> np.ndarray:
    """Rows inside a step (all rows when the trace has no steps)."""
    if not len(rows):
        return rows
    if (ev.step >= 0).any():
        return rows[ev.step[rows] >= 0]
    return rows


def merge(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of intervals, sorted and non-overlapping."""
    if not len(starts):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(starts, kind="stable")
    s, e = starts[order].astype(np.int64), ends[order].astype(np.int64)
    run_end = np.maximum.accumulate(e)
    new = np.ones(len(s), bool)
    new[1:] = s[1:] > run_end[:-1]
    idx = np.flatnonzero(new)
    out_s = s[idx]
    out_e = np.append(run_end[idx[1:] - 1], run_end[-1]) if len(idx) else run_end[idx]
    return out_s, out_e


def covered_ns(starts: np.ndarray, ends: np.ndarray) -> int:
    s, e = merge(starts, ends)
    return int((e - s).sum())


def overlap_ns(a_s: np.ndarray, a_e: np.ndarray, b_s: np.ndarray, b_e: np.ndarray) -> int:
    """Length of the intersection of two interval unions."""
    a_s, a_e = merge(a_s, a_e)
    b_s, b_e = merge(b_s, b_e)
    if not len(a_s) or not len(b_s):
        return 0
    # Merged, each side's starts rise and its ends never fall, so the intervals of b that may
    # overlap a's i-th are one run, [first[i], stop[i]); every pair of the runs is summed.
    first = np.searchsorted(b_e, a_s, side="right")
    stop = np.searchsorted(b_s, a_e, side="left")
    count = np.maximum(stop - first, 0)
    ai = np.repeat(np.arange(len(a_s)), count)
    bj = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count - first, count)
    inter = np.minimum(a_e[ai], b_e[bj]) - np.maximum(a_s[ai], b_s[bj])
    return int(inter[inter > 0].sum())


def gpu_rows(ev: EventTable, kinds: Iterable[Kind] = GPU_KINDS) -> np.ndarray:
    return in_window(ev, ev.rows_of_kind(*kinds))


def has_gpu(ev: EventTable) -> bool:
    return bool(len(ev.rows_of_kind(*GPU_KINDS)))


def rows_within(ev: EventTable, anchors: np.ndarray, candidates: np.ndarray, same_thread: bool = True) -> np.ndarray:
    """Candidate rows whose start lies inside any anchor row's interval (on the anchor's thread)."""
    if not len(anchors) or not len(candidates):
        return np.empty(0, np.int64)
    keep = np.zeros(len(candidates), bool)
    cts = ev.ts_ns[candidates]
    ctid = ev.tid[candidates]
    for tid in unique(ev.tid[anchors]) if same_thread else [None]:
        a = anchors if tid is None else anchors[ev.tid[anchors] == tid]
        s, e = merge(ev.ts_ns[a], ev.ts_ns[a] + ev.dur_ns[a])
        pos = np.searchsorted(s, cts, side="right") - 1
        inside = (pos >= 0) & (cts < e[np.clip(pos, 0, None)])
        if tid is not None:
            inside &= ctid == tid
        keep |= inside
    return candidates[keep]


def gpu_rows_launched_within(ev: EventTable, anchors: np.ndarray) -> np.ndarray:
    """GPU rows whose launch (runtime call, else owning op) started inside an anchor CPU range."""
    g = ev.gpu_rows()
    if not len(g) or not len(anchors):
        return np.empty(0, np.int64)
    launch = ev.launch_of[g] if len(ev.launch_of) else np.full(len(g), -1)
    owner = np.where(launch >= 0, launch, ev.op_of[g] if len(ev.op_of) else -1)
    ok = owner >= 0
    g, owner = g[ok], owner[ok]
    hit = set(rows_within(ev, anchors, unique(owner)).tolist())
    return g[np.fromiter((o in hit for o in owner), bool, len(owner))] if hit else np.empty(0, np.int64)


def device_time_ns(ev: EventTable, anchors: np.ndarray) -> int:
    """Time attributable to CPU ranges: GPU time of what they launched, or (CPU-only trace) their
    own wall time."""
    if has_gpu(ev):
        g = gpu_rows_launched_within(ev, anchors)
        return covered_ns(ev.ts_ns[g], ev.ts_ns[g] + ev.dur_ns[g])
    if not len(anchors):
        return 0
    return covered_ns(ev.ts_ns[anchors], ev.ts_ns[anchors] + ev.dur_ns[anchors])


_LIBRARY_FRAME = re.compile(
    r"(^|/)(torch|site-packages|dist-packages|threading|runpy|importlib|profiler|analyzers|sitecustomize|contextlib|"
    r"functools|typing|stallscope|multiprocessing|selectors|queue)[/.(]|^<built-in|^nn\.Module:|^<frozen|^\{.*\}$"
)


def is_user_frame(name: str) -> bool:
    """A python_function name in the user's code (not torch, the stdlib's plumbing, or ours)."""
    return not _LIBRARY_FRAME.search(name)


def frames_at(ev: EventTable, tid: int, ts: int, py_rows: np.ndarray | None = None) -> list[str]:
    """Python frames (outermost first) that were on the stack of thread ``tid`` at ``ts``."""
    rows = ev.rows_of_kind(Kind.PYTHON) if py_rows is None else py_rows
    if not len(rows):
        return []
    rows = rows[(ev.tid[rows] == tid) & (ev.ts_ns[rows] <= ts) & (ev.ts_ns[rows] + ev.dur_ns[rows] >= ts)]
    rows = rows[np.argsort(ev.ts_ns[rows], kind="stable")]
    return [ev.name_of(int(r)) for r in rows]


def user_frame_at(ev: EventTable, tid: int, ts: int, py_rows: np.ndarray | None = None) -> str | None:
    """The innermost frame of the user's own code at that moment, e.g. ``train.py(42): forward``."""
    for name in reversed(frames_at(ev, tid, ts, py_rows)):
        if is_user_frame(name):
            return name
    return None


def top_counts(items: Iterable[Any], n: int = 5) -> list[Any]:
    counts: dict[Any, int] = {}
    for it in items:
        if it is not None:
            counts[it] = counts.get(it, 0) + 1
    return sorted(counts, key=counts.__getitem__, reverse=True)[:n]


def peaks(ctx: AnalysisContext) -> GpuPeaks | None:
    """The peak figures of the context's GPU, None when it is not in the table."""
    return peaks_for(ctx.device_name)


def ms(ns: float) -> float:
    """Nanoseconds as milliseconds."""
    return float(ns) / 1e6


def worst_rank(ctx: AnalysisContext, analyze_one: Callable[[AnalysisContext], Iterable[Finding]]) -> list[Finding]:
    """Run a single-rank analysis on every rank; per finding id keep the rank where it costs
    the most, and name every rank that showed it in ``where.ranks``."""
    if len(ctx.ranks) <= 1:
        return list(analyze_one(ctx))
    best: dict[str, Any] = {}
    seen: dict[str, list[int]] = {}
    for rank in ctx.ranks:
        view = dataclasses.replace(ctx, ranks=[rank])
        for f in analyze_one(view):
            seen.setdefault(f.id, []).append(rank.rank)
            cur = best.get(f.id)
            if cur is None or f.impact.est_saving_ms_per_step > cur.impact.est_saving_ms_per_step:
                best[f.id] = f
    for fid, f in best.items():
        f.where = dict(f.where)
        f.where["ranks"] = seen[fid]
    return list(best.values())


class PerRank(Analyzer):
    """An analyzer that reads one rank at a time: ``_analyze_rank`` gets a context holding that
    rank alone, and across ranks each finding is kept from the rank where it costs the most
    (:func:`worst_rank`)."""

    def analyze(self, ctx: AnalysisContext) -> list[Finding]:
        return worst_rank(ctx, self._analyze_rank)

    def _analyze_rank(self, ctx: AnalysisContext) -> list[Finding]:
        raise NotImplementedError


def python_lines_of(ev: EventTable, gpu_or_cpu_rows: np.ndarray, limit: int = 50) -> list[str]:
    """The user's Python lines that issued these rows (GPU rows via their launch), most frequent
    first; empty when the trace has no stacks."""
    py = ev.rows_of_kind(Kind.PYTHON)
    if not len(py) or not len(gpu_or_cpu_rows):
        return []
    lines = []
    for r in gpu_or_cpu_rows[:limit]:
        r = int(r)
        src = int(ev.launch_of[r]) if len(ev.launch_of) and ev.kind[r] in (Kind.KERNEL, Kind.MEMCPY, Kind.MEMSET) else r
        if src < 0:
            src = int(ev.op_of[r]) if len(ev.op_of) else -1
        if src >= 0:
            lines.append(user_frame_at(ev, int(ev.tid[src]), int(ev.ts_ns[src]), py))
    return top_counts(lines)


class IntervalIndex:
    """A union of intervals answering "how much of [lo, hi) is covered" in O(log n)."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray) -> None:
        self.s, self.e = merge(np.asarray(starts), np.asarray(ends))
        self.cum = np.concatenate([[0], np.cumsum(self.e - self.s)])

    def covered(self, lo: int, hi: int) -> int:
        if hi <= lo or not len(self.s):
            return 0
        i = int(np.searchsorted(self.e, lo, side="right"))  # first interval ending after lo
        j = int(np.searchsorted(self.s, hi, side="left"))  # intervals starting before hi
        if j <= i:
            return 0
        total = int(self.cum[j] - self.cum[i])
        total -= max(0, lo - int(self.s[i]))
        total -= max(0, int(self.e[j - 1]) - hi)
        return max(0, total)

    def of_rows(ev: EventTable, rows: np.ndarray) -> IntervalIndex:  # type: ignore[misc]
        return IntervalIndex(ev.ts_ns[rows], ev.ts_ns[rows] + ev.dur_ns[rows])

    of_rows = staticmethod(of_rows)


# ------------------------------------------------ blocking calls, GPU idle and the feeding threads


def issuing_threads(rank: RankData) -> np.ndarray:
    """The CPU threads that feed the GPU the step's work: the training loop and the autograd
    engine (:mod:`stallscope.analyzers.roles`); every CPU thread when no role is known."""
    roles = rank.roles
    tids = [t for t, r in roles.by_tid.items() if r in ("loop", "autograd")]
    if not tids:
        tids = list(roles.by_tid)
    return np.asarray(sorted(tids), dtype=np.int64)


def blocking_call_rows(ev: EventTable) -> np.ndarray:
    """Runtime rows that block the host until the GPU has caught up: the synchronizing calls of
    :data:`stallscope.analyzers.vocab.SYNC_CALLS` and every call that launched a device-to-host
    copy, whatever its size (``cudaMemcpyAsync`` of ``.item()``, ``.cpu()``, ``.tolist()``).
    The breakdown's ``sync_wait_ms`` uses the same calls (docs/breakdown.md)."""
    sync = ev.rows_named(is_sync_call, Kind.RUNTIME)
    copies = ev.rows_named(is_device_to_host, Kind.MEMCPY)
    launch = ev.launch_of[copies] if len(ev.launch_of) and len(copies) else np.empty(0, np.int64)
    return union1d(sync, launch[launch >= 0]).astype(np.int64)


def gpu_busy(ev: EventTable) -> tuple[np.ndarray, np.ndarray]:
    """The union of all GPU activity (kernels, copies, sets; every device and stream)."""
    g = ev.gpu_rows()
    return merge(ev.ts_ns[g], ev.ts_ns[g] + ev.dur_ns[g])


def complement(s: np.ndarray, e: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` minus a sorted, disjoint union of intervals."""
    cs = np.concatenate(([lo], e)).astype(np.int64)
    ce = np.concatenate((s, [hi])).astype(np.int64)
    cs, ce = np.clip(cs, lo, hi), np.clip(ce, lo, hi)
    keep = ce > cs
    return cs[keep], ce[keep]


def intersect(a_s: np.ndarray, a_e: np.ndarray, b_s: np.ndarray, b_e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The intersection of two interval unions, as a sorted, disjoint union."""
    a_s, a_e = merge(a_s, a_e)
    b_s, b_e = merge(b_s, b_e)
    out_s: list[int] = []
    out_e: list[int] = []
    i = j = 0
    while i < len(a_s) and j < len(b_s):
        lo, hi = max(a_s[i], b_s[j]), min(a_e[i], b_e[j])
        if hi > lo:
            out_s.append(int(lo))
            out_e.append(int(hi))
        if a_e[i] < b_e[j]:
            i += 1
        else:
            j += 1
    return np.asarray(out_s, dtype=np.int64), np.asarray(out_e, dtype=np.int64)


def step_spans(rank: RankData) -> tuple[np.ndarray, np.ndarray]:
    """The analysed steps as intervals (the breakdown's partition windows); the whole trace when
    the trace has no steps."""
    if rank.steps:
        return merge(
            np.asarray([s.start_ns for s in rank.steps], dtype=np.int64),
            np.asarray([s.end_ns for s in rank.steps], dtype=np.int64),
        )
    ev = rank.events
    if not len(ev):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.asarray([ev.ts_ns.min()], np.int64), np.asarray([(ev.ts_ns + ev.dur_ns).max()], np.int64)


def data_wait_spans(ev: EventTable) -> tuple[np.ndarray, np.ndarray]:
    """The DataLoader's ``__next__`` ranges (any thread): the breakdown's data wait, which it puts
    before every other reason the GPU idles."""
    rows = ev.rows_named(is_data_wait, Kind.CPU_OP, Kind.ANNOTATION)
    return merge(ev.ts_ns[rows], ev.ts_ns[rows] + ev.dur_ns[rows])


def enclosing_ops(ev: EventTable, tid: int, ts: int, ops: np.ndarray | None = None) -> np.ndarray:
    """CPU op rows of thread ``tid`` open at ``ts``, outermost first. For many lookups in one
    table, :class:`OpenOps` answers the same without scanning every op each time."""
    rows = ev.rows_of_kind(Kind.CPU_OP) if ops is None else ops
    if not len(rows):
        return rows
    rows = rows[(ev.tid[rows] == tid) & (ev.ts_ns[rows] <= ts) & (ev.ts_ns[rows] + ev.dur_ns[rows] >= ts)]
    return rows[np.lexsort((-ev.dur_ns[rows], ev.ts_ns[rows]))]


class OpenOps:
    """:func:`enclosing_ops` for many lookups: the ops grouped by thread and sorted by start. An
    op open at ``ts`` started at most its duration before it, so short ops (up to ``SHORT_NS``)
    are searched in the window ``[ts - SHORT_NS, ts]`` of the sorted starts; the few longer ones
    (steps' outer ops, backward, optimizer) are checked whole."""

    SHORT_NS = 1_000_000  # 1 ms: most ops are far shorter, so the window holds few of them

    def __init__(self, ev: EventTable, ops: np.ndarray | None = None) -> None:
        rows = ev.rows_of_kind(Kind.CPU_OP) if ops is None else np.asarray(ops, dtype=np.int64)
        self._ev = ev
        self._by_tid: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        if not len(rows):
            return
        tids = ev.tid[rows]
        for tid in unique(tids).tolist():
            r = rows[tids == tid]
            r = r[np.argsort(ev.ts_ns[r], kind="stable")]
            short = ev.dur_ns[r] <= self.SHORT_NS
            s = r[short]
            self._by_tid[int(tid)] = (
                s,
                ev.ts_ns[s].astype(np.int64),
                (ev.ts_ns[s] + ev.dur_ns[s]).astype(np.int64),
                r[~short],
            )

    def at(self, tid: int, ts: int) -> np.ndarray:
        """CPU op rows of thread ``tid`` open at ``ts``, outermost first (as :func:`enclosing_ops`)."""
        ev = self._ev
        got = self._by_tid.get(int(tid))
        if got is None:
            return np.empty(0, dtype=np.int64)
        short, starts, ends, long = got
        lo = int(np.searchsorted(starts, ts - self.SHORT_NS, side="left"))
        hi = int(np.searchsorted(starts, ts, side="right"))
        found = short[lo:hi][ends[lo:hi] >= ts]
        if len(long):
            found = np.concatenate((found, long[(ev.ts_ns[long] <= ts) & (ev.ts_ns[long] + ev.dur_ns[long] >= ts)]))
        return found[np.lexsort((-ev.dur_ns[found], ev.ts_ns[found]))]
