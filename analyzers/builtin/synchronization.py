"""synchronization: blocking host-device syncs inside the step, what they cost, and the line.

A blocking sync (``cudaStreamSynchronize``, ``cudaDeviceSynchronize``,
``cudaEventSynchronize``, synchronous ``cudaMemcpy``) drains the GPU queue: the host waits
for the GPU, then the GPU waits for the host to enqueue the next kernel. That second wait is
the **bubble**, the time from the sync's return to the next GPU activity, and it is what a
sync costs. ``.item()``, ``.cpu()``, ``.tolist()``, printing a tensor, ``if tensor:`` and
data-dependent shapes (``nonzero``, ``masked_select``) all end in one.

Each bubble is charged to the sync only up to ``BUBBLE_CAP_MS`` (1 ms). Refilling a drained
queue costs one launch latency plus the eager dispatch of the next op, 10-100 µs in PyTorch;
a gap ten times longer than that is host work the sync merely exposed (a metric, data
loading, Python logic), which the cpu-metric, input-pipeline and host-bound analyzers
attribute to what the host was doing. Severity by bubble share of step time (5 % / 20 %).
The cause comes from the enclosing op (``aten::_local_scalar_dense`` means ``.item()``) and
the line from Python stacks when they were captured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from stallscope.analyzers.base import Finding, Impact, register
from stallscope.analyzers.builtin import _common as c
from stallscope.analyzers.model import Kind
from stallscope.analyzers.vocab import is_sync_call

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext, EventTable

BUBBLE_CAP_MS = 1.0
_CAUSE = {
    "aten::_local_scalar_dense": ".item() / float(tensor)",
    "aten::item": ".item() / float(tensor)",
    "aten::is_nonzero": "if tensor: (truth value of a tensor)",
    "aten::nonzero": "nonzero / data-dependent shape",
    "aten::masked_select": "masked_select / boolean indexing",
    "aten::unique": "unique (data-dependent shape)",
    "aten::_unique2": "unique (data-dependent shape)",
    "aten::tolist": ".tolist()",
    "aten::to": ".cpu() / .to('cpu')",
    "aten::_to_copy": ".cpu() / .to('cpu')",
    "aten::copy_": ".cpu() / .to('cpu') / copy_ to host",
    "aten::repeat_interleave": "repeat_interleave with tensor repeats",
}


def sync_rows(ev: EventTable) -> np.ndarray:
    """Blocking sync runtime calls inside the analysed steps."""
    return c.in_window(ev, ev.rows_named(is_sync_call, Kind.RUNTIME))


def bubbles_ns(ev: EventTable, rows: np.ndarray, cap_ns: float) -> np.ndarray:
    """For each sync row, GPU idle time from its return to the next GPU activity (capped)."""
    g = ev.gpu_rows()
    s, e = c.merge(ev.ts_ns[g], ev.ts_ns[g] + ev.dur_ns[g])
    out = np.zeros(len(rows))
    if not len(s):
        return out
    for i, r in enumerate(rows):
        t = int(ev.ts_ns[r] + ev.dur_ns[r])
        k = np.searchsorted(s, t, side="right")
        if k > 0 and e[k - 1] > t:
            continue  # GPU still busy (another stream): no bubble
        if k >= len(s):
            continue
        out[i] = min(float(s[k] - t), cap_ns)
    return out


def _cause(ev: EventTable, row: int, ops: np.ndarray) -> str:
    t = int(ev.ts_ns[row])
    tid = ev.tid[row]
    cand = ops[(ev.tid[ops] == tid) & (ev.ts_ns[ops] <= t) & (ev.ts_ns[ops] + ev.dur_ns[ops] >= t)]
    for r in cand[np.argsort(ev.ts_ns[cand])[::-1]]:
        name = ev.name_of(int(r))
        if name in _CAUSE:
            return _CAUSE[name]
    name = ev.name_of(row)
    if name in ("cudaDeviceSynchronize", "cuCtxSynchronize"):
        return "torch.cuda.synchronize()"
    if name == "cudaEventSynchronize":
        return "event.synchronize()"
    if len(cand):
        return ev.name_of(int(cand[np.argmax(ev.ts_ns[cand])]))
    return "stream synchronize"


@register
class Synchronization(c.PerRank):
    """Blocking syncs per step, the GPU bubble they cause, and the Python line."""

    name = "synchronization"
    requires = frozenset({"trace", "gpu"})
    description = "blocking host-device syncs (.item(), .cpu(), synchronize) inside the step"

    def _analyze_rank(self, ctx: AnalysisContext) -> list[Finding]:
        rank = ctx.ranks[0]
        ev = rank.events
        rows = sync_rows(ev)
        total_ns, n_steps = c.window_ns(rank)
        if not len(rows) or not total_ns:
            return []
        bub = bubbles_ns(ev, rows, BUBBLE_CAP_MS * 1e6)
        blocked = ev.dur_ns[rows].astype(float)
        ops = ev.rows_of_kind(Kind.CPU_OP)
        py = ev.rows_of_kind(Kind.PYTHON)
        order = np.argsort(bub)[::-1][:200]
        causes = [_cause(ev, int(rows[i]), ops) for i in order]
        lines = (
            [c.user_frame_at(ev, int(ev.tid[rows[i]]), int(ev.ts_ns[rows[i]]), py) for i in order[:50]]
            if len(py)
            else []
        )
        lost = float(bub.sum())
        share = 100.0 * lost / total_ns
        per_step = len(rows) / n_steps
        evidence = {
            "syncs_per_step": per_step,
            "bubble_ms_per_step": c.ms(lost) / n_steps,
            "mean_bubble_us": float(bub.mean()) / 1e3,
            "host_blocked_ms_per_step": c.ms(blocked.sum()) / n_steps,
            "bubble_pct_of_step": share,
            "top_cause": c.top_counts(causes, 1)[0] if causes else None,
        }
        where: dict[str, list] = {"causes": c.top_counts(causes), "api": c.top_counts(ev.name_of(int(r)) for r in rows)}
        if lines:
            where["python"] = c.top_counts(lines)
        return [
            Finding(
                id="blocking-syncs",
                category="synchronization",
                title=f"{per_step:.0f} blocking host-device sync(s) per step drain the GPU queue",
                severity=c.grade(share),
                impact=Impact(share, c.ms(lost) / n_steps),
                evidence=evidence,
                where=where,
                confidence=0.85 if lines else 0.75,
                fixes=[],
                advice="Keep values on the GPU inside the step: accumulate losses/metrics as tensors and read them "
                "once per step (or every N steps); avoid .item()/.cpu()/print(tensor) in forward.",
            )
        ]
