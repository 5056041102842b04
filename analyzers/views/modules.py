"""Forward time per ``nn.Module``, from the module ranges of traces recorded with Python stacks.

torch.profiler's Python tracer (``with_stack=True``; ``stallscope profile --stack``) records each
module call as a ``python_function`` range named ``nn.Module: <Class>_<n>`` (``n`` numbers the
instances of a class), and ``record_function("nn.Module: ...")`` ranges read the same. Module
ranges nest as the modules do: a module's self time is its time minus its child modules'. The
ranges cover Python's forward calls only; autograd runs the backward outside them.
No torch import.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from stallscope.analyzers.model import AnalysisContext
from stallscope.analyzers.views.common import ViewRows, nest, pick_rank

__all__ = ["MODULE_PREFIX", "module_time"]

MODULE_PREFIX = "nn.Module: "
NO_MODULES = (
    "no nn.Module ranges in the trace: record it with Python stacks "
    "(stallscope profile --stack, or torch.profiler's with_stack=True) for time per module"
)
FORWARD_ONLY = (
    "forward time only: module ranges cover the Python forward calls, autograd runs the backward outside them"
)


def module_time(ctx: AnalysisContext, limit: int = 15, rank: int | None = None) -> ViewRows:
    """Forward time per ``nn.Module`` inside the steps of rank ``rank`` (default: the first full
    rank), the ``limit`` modules with the most time, largest first; ``note`` says what is covered.

    Row keys: ``module`` (``Class_n``), ``parent`` (the enclosing module, None at the top),
    ``depth`` (0 at the top), ``count``, ``calls_per_step``, ``forward_ms_per_step``
    (inclusive), ``self_ms_per_step`` (less the child modules), ``pct_of_step`` (inclusive time
    against the mean step). Empty with a ``note`` when the trace has no module ranges.
    """
    rd = pick_rank(ctx, rank)
    if rd is None or not rd.steps:
        return ViewRows(note="no trace with steps to read module ranges from")
    t = rd.events
    rows = t.rows_named(lambda s: s.startswith(MODULE_PREFIX))
    rows = rows[t.step[rows] >= 0]
    if rows.size == 0:
        return ViewRows(note=NO_MODULES)
    nz = nest(t, rows)
    depth = np.zeros(rows.size, dtype=np.int64)
    for i in nz.order.tolist():  # parents precede their children in this order
        p = int(nz.parent[i])
        depth[i] = depth[p] + 1 if p >= 0 else 0
    names = [t.names[int(k)][len(MODULE_PREFIX) :] for k in t.name[rows]]
    n_steps = len(rd.steps)
    step_ms = float(np.mean([s.wall_ms for s in rd.steps]))
    acc: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        a = acc.setdefault(name, {"count": 0, "total": 0, "self": 0, "depth": [], "parents": Counter()})
        a["count"] += 1
        a["total"] += int(nz.end[i] - nz.start[i])
        a["self"] += int(nz.self_ns[i])
        a["depth"].append(int(depth[i]))
        p = int(nz.parent[i])
        a["parents"][names[p] if p >= 0 else None] += 1
    out = []
    for name, a in sorted(acc.items(), key=lambda kv: -kv[1]["total"])[: max(limit, 0)]:
        fwd_ms = a["total"] / 1e6 / n_steps
        out.append(
            {
                "module": name,
                "parent": a["parents"].most_common(1)[0][0],
                "depth": min(a["depth"]),
                "count": a["count"],
                "calls_per_step": a["count"] / n_steps,
                "forward_ms_per_step": fwd_ms,
                "self_ms_per_step": a["self"] / 1e6 / n_steps,
                "pct_of_step": 100.0 * fwd_ms / step_ms if step_ms > 0 else 0.0,
            }
        )
    return ViewRows(out, note=FORWARD_ONLY)
