"""Link the rows of a decoded event table: time order, and GPU rows to what launched them.

After :func:`sort_and_link`, ``launch_of`` maps each GPU row to the runtime call that launched
it (same ``correlation``), and ``op_of`` to the CPU op around that launch (same ``External id``,
else the innermost CPU op on the launching thread whose span contains the launch).
"""

from __future__ import annotations

import numpy as np

from stallscope.analyzers.arrays import isin, unique
from stallscope.analyzers.model import GPU_KINDS, TABLE_COLUMNS, EventTable, Kind

__all__ = ["sort_and_link", "sort_events", "link"]


def sort_and_link(t: EventTable) -> EventTable:
    """Sort ``t`` by time (enclosing ranges first) and fill its links; returns the table."""
    t = sort_events(t)
    link(t)
    return t


def sort_events(t: EventTable) -> EventTable:
    """Rows by start time, longer rows first on ties (an enclosing range before its children);
    links already filled (``launch_of``, ``op_of``) and ``extra`` follow their rows."""
    order = np.lexsort((-t.dur_ns, t.ts_ns))
    if order.size < 2 or np.all(order[:-1] < order[1:]):
        return t
    remap = np.empty_like(order)
    remap[order] = np.arange(order.size)
    for f in TABLE_COLUMNS:
        setattr(t, f, getattr(t, f)[order])
    for f in ("launch_of", "op_of"):
        links = getattr(t, f)
        setattr(t, f, np.where(links >= 0, remap[np.maximum(links, 0)], -1))
    rows = np.fromiter(t.extra.keys(), dtype=np.int64, count=len(t.extra))
    t.extra = dict(zip(remap[rows].tolist(), t.extra.values(), strict=True))
    return t


def _lookup(keys: np.ndarray, rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each wanted key, the row whose key matches (first in ``rows`` order), else -1."""
    if keys.size == 0 or wanted.size == 0:
        return np.full(wanted.size, -1, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    pos = np.searchsorted(sk, wanted)
    pos_c = np.minimum(pos, sk.size - 1)
    hit = (pos < sk.size) & (sk[pos_c] == wanted) & (wanted >= 0)
    return np.where(hit, rows[order][pos_c], -1).astype(np.int64)


def link(t: EventTable) -> None:
    """Fill ``launch_of`` and ``op_of`` of the GPU rows of a time-sorted table."""
    gpu = np.flatnonzero(isin(t.kind, np.asarray(GPU_KINDS, dtype=np.int8)))
    if gpu.size == 0:
        return
    runtime = np.flatnonzero((t.kind == Kind.RUNTIME) & (t.correlation >= 0))
    launch = _lookup(t.correlation[runtime], runtime, t.correlation[gpu])
    t.launch_of[gpu] = launch
    cpu = np.flatnonzero((t.kind == Kind.CPU_OP) & (t.external_id >= 0))
    ext = np.where(launch >= 0, t.external_id[np.maximum(launch, 0)], t.external_id[gpu])
    op = _lookup(t.external_id[cpu], cpu, ext)
    missing = (op < 0) & (launch >= 0)
    if missing.any():
        op[missing] = _containing_op(t, launch[missing])
    t.op_of[gpu] = op


def _containing_op(t: EventTable, rows: np.ndarray) -> np.ndarray:
    """Innermost CPU op on the same thread whose span contains each row's start."""
    out = np.full(rows.size, -1, dtype=np.int64)
    cpu = np.flatnonzero(t.kind == Kind.CPU_OP)
    if cpu.size == 0:
        return out
    for tid in unique(t.tid[rows]):
        ops = cpu[t.tid[cpu] == tid]
        if ops.size == 0:
            continue
        starts, ends = t.ts_ns[ops], t.ts_ns[ops] + t.dur_ns[ops]
        want = np.flatnonzero(t.tid[rows] == tid)
        for i in want:
            ts = t.ts_ns[rows[i]]
            j = int(np.searchsorted(starts, ts, side="right")) - 1
            walked = 0
            while j >= 0 and ends[j] < ts and walked < 256:  # back to the innermost enclosing op
                j -= 1
                walked += 1
            if j >= 0 and starts[j] <= ts <= ends[j]:
                out[i] = ops[j]
    return out
