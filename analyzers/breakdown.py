"""Where each step's wall time went: a partition of ``[step start, step end)`` (docs/breakdown.md).

Every instant of a step is given to exactly one part, so the parts sum to the wall time by
construction (up to float rounding). With GPU events the timeline is the GPU's:

1. ``compute_ms``: a compute kernel runs (any stream).
2. ``memory_ms``: only memcpy / memset run.
3. ``comm_exposed_ms``: only communication kernels (NCCL) run; ``comm_overlapped_ms`` (not in
   the sum) is communication under compute.
4. the GPU is idle, and the host explains why:
   ``data_wait_ms`` the CPU is inside the DataLoader's ``__next__``;
   ``sync_wait_ms`` the CPU is blocked in a synchronizing call, or the gap began while it was
   (the sync drained the GPU's queue);
   ``launch_overhead_ms`` the CPU is inside runtime calls, a launched op is queued but not yet
   started, or the gap is shorter than :data:`LAUNCH_GAP_NS` (HTA's "kernel wait");
   ``host_other_ms`` everything else (Python, CPU ops, the profiler).

Without GPU events (CPU-only traces) the timeline is the CPU's (all threads of the process):
data wait, then copy ops (``memory_ms``), then any other CPU op (``compute_ms``), then CPU-side
communication (gloo ranges) not hidden under those (``comm_exposed_ms``); the rest is
``host_other_ms``; sync and launch parts are zero.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stallscope.analyzers.arrays import isin, union1d, unique
from stallscope.analyzers.model import GPU_KINDS, AnalysisContext, EventTable, Kind, RankData, Step, StepBreakdown
from stallscope.analyzers.vocab import (
    CPU_COPY_OPS,
    PROFILER_STEP,
    is_comm_kernel,
    is_comm_op,
    is_data_wait,
    is_device_to_host,
    is_sync_call,
)

__all__ = [
    "LAUNCH_GAP_NS",
    "gpu_sets",
    "points",
    "Intervals",
    "breakdown_pct",
    "breakdown_totals",
    "compute_breakdowns",
    "hta_temporal",
    "rank_breakdown",
    "union",
]

# A kernel launch costs the CPU ~3-5 us and the GPU a few us of latency; when the CPU launches
# back-to-back, the GPU waits at most about one launch cost between kernels. A gap no longer than
# two launch costs is therefore explained by launch overhead alone (HTA calls it "kernel wait").
LAUNCH_GAP_NS = 10_000

_GPU_KINDS = np.asarray(GPU_KINDS, dtype=np.int8)


@dataclass
class Intervals:
    """Sorted, disjoint half-open intervals ``[starts[i], ends[i])`` in ns."""

    starts: np.ndarray
    ends: np.ndarray

    @property
    def total_ns(self) -> int:
        """Total length of the intervals."""
        return int((self.ends - self.starts).sum())

    def window(self, lo: int, hi: int) -> Intervals:
        """The intervals clipped to ``[lo, hi)``."""
        i0 = int(np.searchsorted(self.ends, lo, side="right"))
        i1 = int(np.searchsorted(self.starts, hi, side="left"))
        return Intervals(np.clip(self.starts[i0:i1], lo, hi), np.clip(self.ends[i0:i1], lo, hi))

    def covers(self, points: np.ndarray) -> np.ndarray:
        """Whether each elementary segment starting at ``points[i]`` is inside the set."""
        if self.starts.size == 0:
            return np.zeros(points.size, dtype=bool)
        k = np.searchsorted(self.starts, points, side="right") - 1
        return (k >= 0) & (self.ends[np.maximum(k, 0)] > points)


def union(starts: np.ndarray, ends: np.ndarray) -> Intervals:
    """The union of possibly overlapping intervals (empty ones dropped)."""
    keep = ends > starts
    s, e = starts[keep].astype(np.int64), ends[keep].astype(np.int64)
    if s.size == 0:
        return Intervals(s, e)
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    reach = np.maximum.accumulate(e)
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    new[1:] = s[1:] > reach[:-1]
    idx = np.flatnonzero(new)
    return Intervals(s[idx], np.maximum.reduceat(e, idx))


def _rows(t: EventTable, rows: np.ndarray) -> Intervals:
    return union(t.ts_ns[rows], t.ts_ns[rows] + t.dur_ns[rows])


def _gaps(busy: Intervals, lo: int, hi: int) -> Intervals:
    s = np.concatenate(([lo], busy.ends))
    e = np.concatenate((busy.starts, [hi]))
    keep = e > s
    return Intervals(s[keep], e[keep])


def _name_mask(t: EventTable, predicate: Callable[[str], bool]) -> np.ndarray:
    ids = t.name_ids_matching(predicate)
    return isin(t.name, ids)


def gpu_sets(t: EventTable) -> dict[str, Intervals]:
    """The interval sets the GPU timeline's breakdown is cut from (compute, copies, communication,
    data waits, blocking calls, runtime calls...), shared with host-bound so its parts add up to
    the breakdown's exactly."""
    kernel = t.kind == Kind.KERNEL
    comm = kernel & _name_mask(t, is_comm_kernel)
    mem = (t.kind == Kind.MEMCPY) | (t.kind == Kind.MEMSET)
    gpu = kernel | mem
    runtime = t.kind == Kind.RUNTIME
    sync = runtime & _name_mask(t, is_sync_call)
    d2h = np.flatnonzero((t.kind == Kind.MEMCPY) & _name_mask(t, is_device_to_host))
    blocking = t.launch_of[d2h]
    sync_rows = union1d(np.flatnonzero(sync), blocking[blocking >= 0])
    sets = {
        "compute": _rows(t, np.flatnonzero(kernel & ~comm)),
        "memory": _rows(t, np.flatnonzero(mem)),
        "comm": _rows(t, np.flatnonzero(comm)),
        "data": _rows(
            t, np.flatnonzero(((t.kind == Kind.CPU_OP) | (t.kind == Kind.ANNOTATION)) & _name_mask(t, is_data_wait))
        ),
        "sync": _rows(t, sync_rows),
        "runtime": _rows(t, np.flatnonzero(runtime & ~sync)),
    }
    launched = np.flatnonzero(gpu & (t.launch_of >= 0))
    ls = t.ts_ns[t.launch_of[launched]]
    sets["queued"] = union(ls, t.ts_ns[launched])
    gpu_rows = np.flatnonzero(gpu)
    busy = _rows(t, gpu_rows)
    if len(t):
        lo, hi = int(t.ts_ns.min()), int((t.ts_ns + t.dur_ns).max())
    else:
        lo = hi = 0
    gaps = _gaps(busy, lo, hi)
    short = (gaps.ends - gaps.starts) <= LAUNCH_GAP_NS
    sets["short"] = Intervals(gaps.starts[short], gaps.ends[short])
    drained = sets["sync"].covers(gaps.starts) if gaps.starts.size else np.zeros(0, dtype=bool)
    sets["drained"] = Intervals(gaps.starts[drained], gaps.ends[drained])
    return sets


def _cpu_sets(t: EventTable) -> dict[str, Intervals]:
    ops = (t.kind == Kind.CPU_OP) | (t.kind == Kind.ANNOTATION)
    data = ops & _name_mask(t, is_data_wait)
    steps = _name_mask(t, lambda s: s.startswith((PROFILER_STEP, "stallscope.")))
    comm = ops & _name_mask(t, is_comm_op)
    copies = (t.kind == Kind.CPU_OP) & _name_mask(t, lambda s: s in CPU_COPY_OPS)
    compute = (t.kind == Kind.CPU_OP) & ~steps & ~data & ~comm & ~copies
    return {
        "data": _rows(t, np.flatnonzero(data)),
        "comm": _rows(t, np.flatnonzero(comm)),
        "memory": _rows(t, np.flatnonzero(copies)),
        "compute": _rows(t, np.flatnonzero(compute)),
    }


def points(sets: dict[str, Intervals], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Cut ``[lo, hi)`` at every start and end of ``sets``: (segment starts, lengths, per set a
    mask of the segments it covers)."""
    windows = {k: v.window(lo, hi) for k, v in sets.items()}
    pts = unique(np.concatenate([[lo, hi]] + [np.concatenate((w.starts, w.ends)) for w in windows.values()]))
    pts = pts[(pts >= lo) & (pts <= hi)]
    seg = pts[:-1]
    length = np.diff(pts).astype(np.float64)
    return seg, length, {k: w.covers(seg) for k, w in windows.items()}


def _step_gpu(sets: dict[str, Intervals], step: Step, rank: int) -> StepBreakdown:
    seg, length, m = points(sets, step.start_ns, step.end_ns)
    c = m["compute"]
    mem = m["memory"] & ~c
    comm = m["comm"] & ~c & ~m["memory"]
    idle = ~(c | m["memory"] | m["comm"])
    data = idle & m["data"]
    sync = idle & ~data & (m["sync"] | m["drained"])
    launch = idle & ~data & ~sync & (m["runtime"] | m["queued"] | m["short"])
    other = idle & ~data & ~sync & ~launch
    ms = lambda mask: float(length[mask].sum()) / 1e6  # noqa: E731
    return StepBreakdown(
        step=step.index,
        rank=rank,
        wall_ms=step.wall_ms,
        compute_ms=ms(c),
        memory_ms=ms(mem),
        comm_exposed_ms=ms(comm),
        comm_overlapped_ms=ms(m["comm"] & c),
        data_wait_ms=ms(data),
        sync_wait_ms=ms(sync),
        launch_overhead_ms=ms(launch),
        host_other_ms=ms(other),
    )


def _step_cpu(sets: dict[str, Intervals], step: Step, rank: int) -> StepBreakdown:
    seg, length, m = points(sets, step.start_ns, step.end_ns)
    data = m["data"]
    mem = m["memory"] & ~data
    comp = m["compute"] & ~data & ~mem
    comm = m["comm"] & ~data & ~mem & ~comp
    other = ~(data | mem | comp | comm)
    ms = lambda mask: float(length[mask].sum()) / 1e6  # noqa: E731
    return StepBreakdown(
        step=step.index,
        rank=rank,
        wall_ms=step.wall_ms,
        compute_ms=ms(comp),
        memory_ms=ms(mem),
        comm_exposed_ms=ms(comm),
        comm_overlapped_ms=ms(m["comm"] & (comp | mem)),
        data_wait_ms=ms(data),
        host_other_ms=ms(other),
    )


def rank_breakdown(rd: RankData) -> list[StepBreakdown]:
    """The per-step breakdown of one rank (GPU timeline when it has GPU events, else CPU)."""
    t = rd.events
    if not rd.steps or len(t) == 0:
        return []
    has_gpu = bool(isin(t.kind, _GPU_KINDS).any())
    if has_gpu:
        sets = gpu_sets(t)
        return [_step_gpu(sets, s, rd.rank) for s in rd.steps]
    sets = _cpu_sets(t)
    return [_step_cpu(sets, s, rd.rank) for s in rd.steps]


def compute_breakdowns(ctx: AnalysisContext) -> None:
    """Fill ``rank.breakdown`` for every rank of the context."""
    for rd in ctx.ranks:
        if not rd.meta.get("compacted"):  # compacted ranks got theirs from the full table
            rd.breakdown = rank_breakdown(rd)


def breakdown_totals(items: list[StepBreakdown]) -> dict[str, float]:
    """Summed milliseconds of every part over steps (and ranks), with ``wall_ms``."""
    out = {k: 0.0 for k in ("wall_ms",) + StepBreakdown.SUMMED + ("comm_overlapped_ms",)}
    for b in items:
        out["wall_ms"] += b.wall_ms
        for k in StepBreakdown.SUMMED + ("comm_overlapped_ms",):
            out[k] += float(getattr(b, k))
    return out


def breakdown_pct(items: list[StepBreakdown]) -> dict[str, float]:
    """Each part as a percentage of summed wall time (keys end in ``_pct``)."""
    tot = breakdown_totals(items)
    wall = tot.pop("wall_ms")
    if wall <= 0:
        return {k.replace("_ms", "_pct"): 0.0 for k in tot}
    return {k.replace("_ms", "_pct"): round(100.0 * v / wall, 3) for k, v in tot.items()}


_HTA_NOT_COMPUTE = re.compile(r"(^nccl.*Kernel)|(.*(Memcpy)|(Memset))|(.*Sync)")


def hta_temporal(rd: RankData) -> dict[str, float] | None:
    """HTA's ``get_temporal_breakdown`` figures for one rank, from our table (microseconds).

    Same scope as HTA: with two or more ``ProfilerStep`` ranges, only GPU ops launched before the
    last one starts; kernel time is the span from the first GPU op's start to the last one's
    end; idle is the span minus the union of GPU ops; compute is the union of kernels HTA calls
    compute (not ``nccl*Kernel``, not memcpy/memset, not ``*Sync``); non-compute is the rest.
    None when the rank has no GPU ops.
    """
    t = rd.events
    gpu = np.flatnonzero(isin(t.kind, _GPU_KINDS))
    if t.name_ids_matching(lambda s: "ProfilerStep" in s).size >= 2:
        # HTA keeps the GPU ops launched (same correlation id: runtime or driver call) before
        # the last ProfilerStep starts; the GPU-side ProfilerStep ranges count as host rows
        # there, so the last start is often the GPU annotation's, after the CPU's
        gpu_op = np.zeros(len(t), dtype=bool)
        gpu_op[gpu] = t.correlation[gpu] >= 0
        steps = np.flatnonzero(~gpu_op & isin(t.name, t.name_ids_matching(lambda s: "ProfilerStep" in s)))
        last_start = int(t.ts_ns[steps].max())
        launch = t.launch_of[gpu]
        keep = (launch >= 0) & (t.ts_ns[np.maximum(launch, 0)] < last_start)
        gpu = gpu[keep]
    if gpu.size == 0:
        return None
    busy = _rows(t, gpu)
    span = int(busy.ends[-1] - busy.starts[0])
    idle = span - busy.total_ns
    comp_rows = gpu[(t.kind[gpu] == Kind.KERNEL) & ~_name_mask(t, lambda s: bool(_HTA_NOT_COMPUTE.match(s)))[gpu]]
    compute = _rows(t, comp_rows).total_ns
    return {
        "idle_us": idle / 1e3,
        "compute_us": compute / 1e3,
        "non_compute_us": (span - compute - idle) / 1e3,
        "kernel_us": span / 1e3,
    }
