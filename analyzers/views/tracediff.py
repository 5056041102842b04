"""A trace-level diff of two runs, HTA's trace diff: CPU ops and GPU kernels added, removed,
slower and faster.

Each side is reduced to, per op name and per kernel name, the time per step (CPU ops: self time,
so that a change shows on the op that changed and not on every op around it; kernels, memcpys
and memsets: their duration) and the calls per step. A name only in B is ``added``, only in A
``removed``. For the rest the ratio of the mean times per step decides, at least
``MIN_CHANGE`` either way; when both sides have ``MIN_SAMPLES`` steps or more, a one-sided
Mann-Whitney test across steps must also say so (p < ``SIGNIFICANT_P``), else the ratio alone
decides (and ``note`` says so). Rows are sorted by the absolute change in ms per step.
No torch import.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stallscope.analyzers.arrays import isin
from stallscope.analyzers.compare import MIN_SAMPLES, SIGNIFICANT_P
from stallscope.analyzers.model import AnalysisContext, EventTable, Kind
from stallscope.analyzers.stats import mann_whitney_greater
from stallscope.analyzers.views.common import is_step_marker, pick_rank, step_positions
from stallscope.analyzers.views.cpu_ops import cpu_nesting

__all__ = ["MIN_CHANGE", "STATUSES", "trace_diff"]

MIN_CHANGE = 0.05  # a ratio within 5 % of 1 is no change
STATUSES = ("added", "removed", "slower", "faster", "unchanged")

# per name: (ms in each step, calls in each step)
PerStep = dict[str, tuple[np.ndarray, np.ndarray]]


def _per_step(t: EventTable, rows: np.ndarray, ns: np.ndarray, pos: np.ndarray, n: int) -> PerStep:
    """Sum ``ns`` and count rows per (name, step position); rows outside the steps are left out."""
    ok = pos >= 0
    rows, ns, pos = rows[ok], ns[ok], pos[ok]
    if rows.size == 0:
        return {}
    ids, local = np.unique(t.name[rows], return_inverse=True)
    key = local.reshape(-1) * n + pos
    ms = np.bincount(key, weights=ns / 1e6, minlength=ids.size * n).reshape(ids.size, n)
    calls = np.bincount(key, minlength=ids.size * n).reshape(ids.size, n)
    return {t.names[int(i)]: (ms[k], calls[k]) for k, i in enumerate(ids)}


def _side(ctx: AnalysisContext, rank: int | None) -> tuple[int, PerStep, PerStep]:
    """(steps, CPU ops per step, GPU ops per step) of one side."""
    rd = pick_rank(ctx, rank)
    if rd is None or not rd.steps:
        return 0, {}, {}
    t, n = rd.events, len(rd.steps)
    nz = cpu_nesting(t)
    markers = t.name_ids_matching(is_step_marker)
    op = (t.kind[nz.rows] == Kind.CPU_OP) & ~isin(t.name[nz.rows], markers)
    op_rows = nz.rows[op]
    ops = _per_step(t, op_rows, nz.self_ns[op].astype(np.float64), step_positions(t, rd.steps, op_rows), n)
    gpu = t.gpu_rows()
    kernels = _per_step(t, gpu, t.dur_ns[gpu].astype(np.float64), step_positions(t, rd.steps, gpu), n)
    return n, ops, kernels


def _status(a: np.ndarray, b: np.ndarray, tested: bool) -> tuple[str, float | None]:
    """The status of a name present on both sides, and the p-value of the test that decided it."""
    ma, mb = float(a.mean()), float(b.mean())
    if ma <= 0.0 and mb <= 0.0:
        return "unchanged", None
    ratio = mb / ma if ma > 0 else float("inf")
    if ratio >= 1.0 + MIN_CHANGE:
        p = float(mann_whitney_greater(a, b)) if tested else None
        return ("slower" if p is None or p < SIGNIFICANT_P else "unchanged"), p
    if ratio <= 1.0 / (1.0 + MIN_CHANGE):
        p = float(mann_whitney_greater(b, a)) if tested else None
        return ("faster" if p is None or p < SIGNIFICANT_P else "unchanged"), p
    return "unchanged", None


def _diff(a: PerStep, b: PerStep, tested: bool, limit: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The changed names (largest change first, ``limit`` of them) and a count per status."""
    rows: list[dict[str, Any]] = []
    counts = dict.fromkeys(STATUSES, 0)
    zero = (np.zeros(1), np.zeros(1, dtype=np.int64))
    for name in dict.fromkeys([*a, *b]):
        (ams, acalls), (bms, bcalls) = a.get(name, zero), b.get(name, zero)
        if name not in a or not acalls.any():
            status, p = "added", None
        elif name not in b or not bcalls.any():
            status, p = "removed", None
        else:
            status, p = _status(ams, bms, tested)
        counts[status] += 1
        if status == "unchanged":
            continue
        ma, mb = float(ams.mean()), float(bms.mean())
        rows.append(
            {
                "name": name,
                "status": status,
                "a_ms_per_step": ma,
                "b_ms_per_step": mb,
                "delta_ms_per_step": mb - ma,
                "ratio": mb / ma if status in ("slower", "faster") and ma > 0 else None,
                "a_calls_per_step": float(acalls.mean()),
                "b_calls_per_step": float(bcalls.mean()),
                "p_value": p,
            }
        )
    rows.sort(key=lambda r: -abs(r["delta_ms_per_step"]))
    return rows[: max(limit, 0)], counts


def trace_diff(
    ctx_a: AnalysisContext, ctx_b: AnalysisContext, limit: int = 20, rank: int | None = None
) -> dict[str, Any]:
    """The trace diff of A (before) and B (after), rank ``rank`` of each (default: the first full rank).

    Keys: ``steps`` ({``a``, ``b``}: steps per side), ``tested`` (whether the Mann-Whitney test
    was applied), ``note`` (what limits the diff, or None), ``ops`` and ``kernels`` (the ``limit``
    largest changes: ``name``, ``status`` (added / removed / slower / faster), ``a_ms_per_step``,
    ``b_ms_per_step``, ``delta_ms_per_step``, ``ratio`` (B/A, slower and faster only),
    ``a_calls_per_step``, ``b_calls_per_step``, ``p_value`` (the one-sided test's, None when not
    tested)), ``counts`` ({``ops``, ``kernels``}: names per status, unchanged included).
    """
    na, ops_a, kernels_a = _side(ctx_a, rank)
    nb, ops_b, kernels_b = _side(ctx_b, rank)
    tested = na >= MIN_SAMPLES and nb >= MIN_SAMPLES
    note = None
    if not na or not nb:
        note = f"{'A' if not na else 'B'} has no trace with steps: nothing to compare"
    elif not tested:
        note = (
            f"fewer than {MIN_SAMPLES} steps on a side ({na} in A, {nb} in B): slower / faster by the "
            f"ratio of the mean time per step alone (at least {MIN_CHANGE:.0%} either way), untested"
        )
    ops, op_counts = _diff(ops_a, ops_b, tested, limit)
    kernels, kernel_counts = _diff(kernels_a, kernels_b, tested, limit)
    return {
        "steps": {"a": na, "b": nb},
        "tested": tested,
        "note": note,
        "ops": ops,
        "kernels": kernels,
        "counts": {"ops": op_counts, "kernels": kernel_counts},
    }
