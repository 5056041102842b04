"""The memory view of a trace recorded with ``profile_memory=True`` (``stallscope profile --memory``).

torch.profiler writes one ``[memory]`` instant event per allocation and free: ``Bytes`` (negative
for a free), ``Addr``, the device's ``Total Allocated`` and ``Total Reserved`` after it, ``Device
Type`` (0 CPU, 1 CUDA) and ``Device Id``. From them, for one device (the CUDA device with the
highest peak, else the CPU): allocated and reserved at the end of each step, the peak of each
step, and at the highest peak the allocations still live (matched by address), largest first,
with the CPU op that made each. Memory allocated before the trace began is in the totals but
not among the live allocations (``untracked_mb``). No torch import.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stallscope.analyzers.model import AnalysisContext, EventTable, Kind
from stallscope.analyzers.views.common import MB, is_step_marker, pick_rank
from stallscope.analyzers.views.cpu_ops import cpu_nesting
from stallscope.analyzers.vocab import MEMORY_EVENT

__all__ = ["allocator_samples", "device_label", "memory_view"]

_CUDA = 1


def device_label(dev_type: int, dev_id: int) -> str:
    return "cpu" if dev_type == 0 else f"cuda:{dev_id}" if dev_type == _CUDA else f"device type {dev_type}:{dev_id}"


def allocator_samples(t: EventTable) -> dict[str, np.ndarray]:
    """The allocator samples of ``t`` as columns, in time order."""
    rows = [int(r) for r in t.rows_named(lambda s: s == MEMORY_EVENT) if "memory" in t.extra.get(int(r), {})]
    mem = [t.extra[r]["memory"] for r in rows]

    def col(key: str, default: int) -> np.ndarray:
        vals = [m.get(key, default) for m in mem]
        return np.asarray([v if isinstance(v, int) else default for v in vals], dtype=np.int64)

    return {
        "row": np.asarray(rows, dtype=np.int64),
        "alloc": col("Total Allocated", 0),
        "reserved": col("Total Reserved", 0),
        "type": col("Device Type", -1),
        "id": col("Device Id", -1),
        "addr": col("Addr", -1),
        "bytes": t.bytes[np.asarray(rows, dtype=np.int64)],
    }


def _level_before(ts: np.ndarray, values: np.ndarray, at: int) -> int | None:
    """The value of the last sample at or before ``at`` (None when there is none)."""
    k = int(np.searchsorted(ts, at, side="right")) - 1
    return int(values[k]) if k >= 0 else None


def _live(t: EventTable, s: dict[str, np.ndarray], upto: int, limit: int) -> tuple[list[dict[str, Any]], int, int]:
    """The allocations among samples ``[0, upto]`` not freed by sample ``upto``: (the ``limit``
    largest with their ops, the bytes of all of them, how many there are)."""
    live: dict[int, int] = {}
    for i in range(upto + 1):
        addr, nbytes = int(s["addr"][i]), int(s["bytes"][i])
        if addr < 0:
            continue
        if nbytes > 0:
            live[addr] = i
        else:
            live.pop(addr, None)
    idx = np.asarray(sorted(live.values(), key=lambda i: -int(s["bytes"][i])), dtype=np.int64)
    total, count = (int(s["bytes"][idx].sum()) if idx.size else 0), int(idx.size)
    idx = idx[: max(limit, 0)]
    nz = cpu_nesting(t)
    where = nz.innermost(t, s["row"][idx])
    out = []
    for i, p in zip(idx.tolist(), where.tolist(), strict=True):
        chain = []
        while p >= 0:
            r = int(nz.rows[p])
            if t.kind[r] == Kind.CPU_OP and not is_step_marker(t.name_of(r)):
                chain.append(t.name_of(r))
            p = int(nz.parent[p])
        step = int(t.step[s["row"][i]])
        out.append(
            {
                "mb": int(s["bytes"][i]) / MB,
                "op": chain[0] if chain else None,
                "caller": chain[-1] if len(chain) > 1 else None,
                "step": step if step >= 0 else None,
            }
        )
    return out, total, count


def memory_view(ctx: AnalysisContext, rank: int | None = None, limit: int = 10) -> dict[str, Any] | None:
    """The memory view of rank ``rank`` (default: the first full rank); None without ``[memory]``
    samples.

    Keys: ``device`` (``cuda:0`` / ``cpu``), ``other_devices``, ``samples``; ``steps``: per step
    ``step``, ``allocated_end_mb``, ``reserved_end_mb``, ``peak_allocated_mb``,
    ``peak_reserved_mb`` (None where no sample precedes); ``peak``: ``step``, ``allocated_mb``,
    ``reserved_mb``, ``at_ms`` (after the step's start), ``live`` (the ``limit`` largest
    allocations live at the peak: ``mb``, ``op`` (innermost CPU op), ``caller`` (outermost),
    ``step`` it was made in, None before the steps), ``live_count``, ``tracked_mb`` (all live
    allocations the trace saw), ``untracked_mb`` (the rest of the total: made before the trace).
    """
    rd = pick_rank(ctx, rank)
    if rd is None:
        return None
    t = rd.events
    s = allocator_samples(t)
    if s["row"].size == 0:
        return None
    devices = sorted({(int(a), int(b)) for a, b in zip(s["type"], s["id"], strict=True)})
    cuda = [d for d in devices if d[0] == _CUDA]
    pool = cuda or devices
    peak_of = {d: int(s["alloc"][(s["type"] == d[0]) & (s["id"] == d[1])].max()) for d in pool}
    dev = max(pool, key=lambda d: peak_of[d])
    mine = (s["type"] == dev[0]) & (s["id"] == dev[1])
    s = {k: v[mine] for k, v in s.items()}
    ts = t.ts_ns[s["row"]]
    out: dict[str, Any] = {
        "device": device_label(*dev),
        "other_devices": [device_label(*d) for d in devices if d != dev],
        "samples": int(s["row"].size),
        "steps": [],
        "peak": None,
    }
    best: tuple[int, int, int] | None = None  # (allocated, sample, step position)
    for pos, st in enumerate(rd.steps):
        # the samples of the step, and the one before it (its level holds at the step's start)
        lo = max(int(np.searchsorted(ts, st.start_ns, side="right")) - 1, 0)
        hi = int(np.searchsorted(ts, st.end_ns, side="left"))
        out["steps"].append(
            {
                "step": st.index,
                "allocated_end_mb": _mb(_level_before(ts, s["alloc"], st.end_ns - 1)),
                "reserved_end_mb": _mb(_level_before(ts, s["reserved"], st.end_ns - 1)),
                "peak_allocated_mb": _mb(int(s["alloc"][lo:hi].max()) if hi > lo else None),
                "peak_reserved_mb": _mb(int(s["reserved"][lo:hi].max()) if hi > lo else None),
            }
        )
        if hi > lo:
            i = lo + int(np.argmax(s["alloc"][lo:hi]))
            if best is None or int(s["alloc"][i]) > best[0]:
                best = (int(s["alloc"][i]), i, pos)
    if best is None:
        return out
    value, i, pos = best
    live, tracked, count = _live(t, s, i, limit)
    st = rd.steps[pos]
    out["peak"] = {
        "step": st.index,
        "allocated_mb": value / MB,
        "reserved_mb": int(s["reserved"][i]) / MB,
        "at_ms": max(int(ts[i]) - st.start_ns, 0) / 1e6,
        "live": live,
        "live_count": count,
        "tracked_mb": tracked / MB,
        "untracked_mb": max(value - tracked, 0) / MB,
    }
    return out


def _mb(value: int | None) -> float | None:
    return None if value is None else value / MB
