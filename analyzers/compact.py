"""Bounded memory for many ranks: keep full event tables for the first ranks only.

Beyond ``FULL_RANKS`` ranks, each further rank's breakdown is computed as soon as it is loaded,
then its event table is cut down to what the cross-rank analysis needs: step markers, DataLoader
ranges, collective ops, communication kernels and blocking runtime calls. The communication
analyzer (collective matching, straggler, bus bandwidth) and the per-rank breakdown cover every
rank; per-rank analyzers (kernels, copies, precision...) look at the first ``FULL_RANKS`` ranks,
which in data-parallel jobs run the same code. Memory then grows with the number of ranks only
by the small compact tables, instead of by a whole trace per rank.
"""

from __future__ import annotations

import numpy as np

from stallscope.analyzers.arrays import union1d
from stallscope.analyzers.breakdown import rank_breakdown
from stallscope.analyzers.model import EventTable, Kind, RankData
from stallscope.analyzers.vocab import COMPACT_KEEP_PREFIXES, is_comm_kernel, is_sync_call

__all__ = ["FULL_RANKS", "compact_rank", "take_rows"]

FULL_RANKS = 8


def take_rows(t: EventTable, rows: np.ndarray) -> EventTable:
    """A new table holding ``rows`` (sorted), links and sparse args remapped (-1 where cut)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    remap = np.full(len(t), -1, dtype=np.int64)
    remap[rows] = np.arange(rows.size)

    def relink(col: np.ndarray) -> np.ndarray:
        col = col[rows]
        return np.where(col >= 0, remap[np.maximum(col, 0)], -1)

    return EventTable(
        names=t.names,
        kind=t.kind[rows],
        name=t.name[rows],
        ts_ns=t.ts_ns[rows],
        dur_ns=t.dur_ns[rows],
        pid=t.pid[rows],
        tid=t.tid[rows],
        stream=t.stream[rows],
        device=t.device[rows],
        correlation=t.correlation[rows],
        external_id=t.external_id[rows],
        step=t.step[rows],
        flops=t.flops[rows],
        bytes=t.bytes[rows],
        launch_of=relink(t.launch_of),
        op_of=relink(t.op_of),
        extra={int(remap[k]): v for k, v in t.extra.items() if remap[k] >= 0},
    )


def compact_rank(rd: RankData) -> None:
    """Compute the rank's breakdown (if not yet done), then keep only the cross-rank rows."""
    if not rd.breakdown:
        rd.breakdown = rank_breakdown(rd)
    t = rd.events
    if not len(t):
        return
    wanted = np.asarray(
        [
            s.startswith(COMPACT_KEEP_PREFIXES) or "DataLoader" in s or is_comm_kernel(s) or is_sync_call(s)
            for s in t.names
        ],
        dtype=bool,
    )
    keep = wanted[t.name]
    keep &= t.kind != Kind.PYTHON
    rows = np.flatnonzero(keep)
    rows = union1d(rows, t.op_of[rows][t.op_of[rows] >= 0])
    rd.events = take_rows(t, rows)
    rd.meta["compacted"] = True
