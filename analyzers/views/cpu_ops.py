"""The most expensive CPU ops: count, total and self time per step, by thread role.

The TensorBoard plugin's operator view and ``key_averages()`` in one table. Self time is an op's
duration minus what its direct children (CPU ops and annotations on the same thread, by interval
nesting) cover. Each op gets its thread's role from the model (``RankData.roles``, see
``analyzers/roles.py``: ``loop``, ``autograd``, ``dataloader``, ``pin_memory``, ``comm``,
``compile``, ``other``), except that an op inside autograd's ``evaluate_function`` range is
``autograd`` on any thread: on the CPU the engine runs the backward on the loop thread, and that
work is backward all the same.

No torch import.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stallscope.analyzers.arrays import isin
from stallscope.analyzers.model import AnalysisContext, EventTable, Kind
from stallscope.analyzers.roles import ROLES, thread_roles
from stallscope.analyzers.views.common import Nesting, ViewRows, is_step_marker, nest, pick_rank

__all__ = ["BACKWARD_RANGE", "ROLES", "cpu_nesting", "row_roles", "top_cpu_ops"]

BACKWARD_RANGE = "autograd::engine::evaluate_function"


def cpu_nesting(t: EventTable) -> Nesting:
    """The nesting of every CPU op and annotation of ``t``, marking rows inside autograd's
    ``evaluate_function`` ranges."""
    rows = t.rows_of_kind(Kind.CPU_OP, Kind.ANNOTATION)
    bwd_ids = t.name_ids_matching(lambda s: s.startswith(BACKWARD_RANGE))
    return nest(t, rows, isin(t.name[rows], bwd_ids))


def row_roles(t: EventTable, nz: Nesting) -> np.ndarray:
    """The role (index into :data:`ROLES`) of each row of ``nz``: its thread's role, except that
    a row inside an ``evaluate_function`` range is ``autograd``."""
    roles = thread_roles(t)
    thread_role = np.asarray([ROLES.index(roles.role(tid)) for _, tid in nz.threads], dtype=np.int64)
    role = thread_role[nz.thread] if nz.rows.size else np.zeros(0, dtype=np.int64)
    return np.where(nz.marked, ROLES.index("autograd"), role)


def top_cpu_ops(ctx: AnalysisContext, limit: int = 15, rank: int | None = None) -> ViewRows:
    """The ``limit`` CPU ops (torch operators; step ranges and annotations left out) with the most
    self time inside the steps of rank ``rank`` (default: the first full rank), one row per (op
    name, role), largest self time first.

    Row keys: ``name``, ``role`` (one of :data:`ROLES`), ``count``, ``calls_per_step``,
    ``total_ms_per_step`` (inclusive), ``self_ms_per_step``, ``self_pct_of_step`` (self time
    against the mean step's wall time). Empty with a ``note`` when there are no CPU ops in steps.
    """
    rd = pick_rank(ctx, rank)
    if rd is None or not rd.steps:
        return ViewRows(note="no trace with steps to read CPU ops from")
    t = rd.events
    nz = cpu_nesting(t)
    roles = row_roles(t, nz)
    marker_ids = t.name_ids_matching(is_step_marker)
    keep = (t.kind[nz.rows] == Kind.CPU_OP) & (t.step[nz.rows] >= 0) & ~isin(t.name[nz.rows], marker_ids)
    if not keep.any():
        return ViewRows(note="no CPU ops inside the steps")
    name = t.name[nz.rows][keep].astype(np.int64)
    role = roles[keep]
    key = name * len(ROLES) + role
    uniq, inv = np.unique(key, return_inverse=True)
    count = np.bincount(inv)
    total = np.bincount(inv, weights=(nz.end - nz.start)[keep])
    own = np.bincount(inv, weights=nz.self_ns[keep])
    n = len(rd.steps)
    step_ms = float(np.mean([s.wall_ms for s in rd.steps]))
    rows: list[dict[str, Any]] = []
    for k in np.argsort(-own, kind="stable")[: max(limit, 0)]:
        self_ms = float(own[k]) / 1e6 / n
        rows.append(
            {
                "name": t.names[int(uniq[k]) // len(ROLES)],
                "role": ROLES[int(uniq[k]) % len(ROLES)],
                "count": int(count[k]),
                "calls_per_step": float(count[k]) / n,
                "total_ms_per_step": float(total[k]) / 1e6 / n,
                "self_ms_per_step": self_ms,
                "self_pct_of_step": 100.0 * self_ms / step_ms if step_ms > 0 else 0.0,
            }
        )
    return ViewRows(rows)
