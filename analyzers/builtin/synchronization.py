"""synchronization: the step time lost to blocking host-device syncs, and the line that issued each.

**Blocking calls.** A runtime call that returns only when the GPU has caught up:
``cudaStreamSynchronize``, ``cudaDeviceSynchronize``, ``cudaEventSynchronize``, synchronous
``cudaMemcpy`` / ``cudaMemset``, their driver and HIP spellings (``vocab.SYNC_CALLS``), and every
call that launched a device-to-host copy, **whatever its size** (``cudaMemcpyAsync`` DtoH of
``.item()``, ``.cpu()``, ``.tolist()``, ``print(tensor)``: a 4-byte readback blocks like a 4 GB
one). ``if tensor:`` and data-dependent shapes (``nonzero``, ``masked_select``) end in one.

**What a sync costs** is GPU idle time, the breakdown's ``sync_wait_ms`` by the same rule
(docs/breakdown.md):

1. *blocked*: the GPU idles while the call runs (the host waits for work the trace does not
   show finishing, or for the call's own latency);
2. *drained*: when the GPU's idle gap began during the call, the whole gap after it returns. The
   sync emptied the queue, so the GPU waits until the host launches again, however long the host
   takes (a metric computed on the value read, logging, the next step's Python). Without the
   sync the host would have done that work while queued kernels ran.

**What removing them can save** is less when the host is the slower side. Without the syncs
the step still lasts as long as the busier of the host (the step less its time blocked in
these calls and waiting for data) and the GPU (its busy time); so the saving is at most the
step less that (``removable_ms_per_step``). A metric computed on the host from the value read
back (68 ms of Python after a 1 ms readback) drains the queue just as a bare ``.item()`` does,
but moving the readback later only overlaps 68 ms of host work with a few ms of GPU work: the
step stays host-bound. The finding's share and severity are that bound; the GPU idle time
around the calls stays in the evidence (``sync_wait_pct_of_step``) and in the breakdown, where
the analyzer of the host work (cpu-metric, host-bound) can claim the rest.

Host time blocked while the GPU is busy costs nothing (the GPU is the bottleneck then): it is in
the evidence (``host_blocked_ms_per_step``), not in the share. Evidence also splits the drained
time into the refill (up to ``REFILL_MS`` per sync: one launch latency plus the eager dispatch
of the next op, 10-100 us in PyTorch, so 1 ms is ten times that) and the host work the sync
exposed beyond it.

**Threads.** Only calls on the threads that feed the GPU count (the training loop and the
autograd engine, ``analyzers/roles.py``): a sync on another thread (a DataLoader or
communication thread) blocks that thread alone; the GPU then idles because the loop waits on
something else, which the input-pipeline and communication analyzers own. The breakdown counts
calls on every thread, so the two differ by exactly those calls
(``breakdown_sync_wait_ms_per_step`` is in the evidence).

Severity by share of step time (5 % / 20 %, ``_common``). Each call site (op, cause, Python
line) is listed with its milliseconds per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from stallscope.analyzers.arrays import isin, median
from stallscope.analyzers.base import Finding, Impact, register
from stallscope.analyzers.builtin import _common as c
from stallscope.analyzers.model import Kind
from stallscope.analyzers.vocab import is_device_to_host

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext, EventTable, RankData

REFILL_MS = 1.0
MAX_SITE_ROWS = 2000  # calls whose op and line are looked up (the costliest): bounds the time on huge traces
_CAUSE = {
    "aten::_local_scalar_dense": ".item() / float(tensor)",
    "aten::item": ".item() / float(tensor)",
    "aten::is_nonzero": "if tensor: (truth value of a tensor)",
    "aten::nonzero": "nonzero / data-dependent shape",
    "aten::masked_select": "masked_select / boolean indexing",
    "aten::unique": "unique (data-dependent shape)",
    "aten::_unique2": "unique (data-dependent shape)",
    "aten::tolist": ".tolist()",
    "aten::repeat_interleave": "repeat_interleave with tensor repeats",
}
_COPY_OPS = ("aten::copy_", "aten::_to_copy", "aten::to")


def sync_wait_ns(rank: RankData, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each blocking call row: (GPU idle ns while it ran, GPU idle ns of the gap it drained
    after it returned), inside the steps and outside data waits. Time is given to one call only
    (the earliest), so the sums are the union."""
    ev = rank.events
    n = len(rows)
    if not n:
        return np.zeros(0), np.zeros(0)
    bs, be = c.gpu_busy(ev)
    if not len(bs):  # no timed GPU activity: when the GPU idled is unknown
        return np.zeros(n), np.zeros(n)
    lo = int(min(ev.ts_ns.min(), bs.min()))
    hi = int(max((ev.ts_ns + ev.dur_ns).max(), be.max()))
    idle_s, idle_e = c.complement(bs, be, lo, hi)
    ss, se = c.step_spans(rank)
    ok_s, ok_e = c.intersect(idle_s, idle_e, ss, se)
    ds, de = c.data_wait_spans(ev)
    if len(ds):
        ok_s, ok_e = c.intersect(ok_s, ok_e, *c.complement(ds, de, lo, hi))
    allowed = c.IntervalIndex(ok_s, ok_e)
    ts = ev.ts_ns[rows].astype(np.int64)
    te = ts + ev.dur_ns[rows].astype(np.int64)
    # the idle gap the call returned into, and whether it began while the call ran
    k = np.searchsorted(idle_s, te, side="right") - 1
    kk = np.clip(k, 0, max(len(idle_s) - 1, 0))
    if len(idle_s):
        drained = (k >= 0) & (idle_e[kk] > te) & (idle_s[kk] >= ts)
        end = np.where(drained, idle_e[kk], te)
    else:
        end = te
    order = np.argsort(ts, kind="stable")
    blocked = np.zeros(n)
    after = np.zeros(n)
    reach = lo
    for i in order:
        a = max(int(ts[i]), reach)
        if a >= end[i]:
            continue
        mid = max(a, int(te[i]))
        blocked[i] = allowed.covered(a, min(int(te[i]), int(end[i])))
        after[i] = allowed.covered(mid, int(end[i]))
        reach = int(end[i])
    return blocked, after


def removable_ns(rank: RankData, rows: np.ndarray, total_ns: int) -> tuple[float, float, float]:
    """(the most that removing the blocking calls ``rows`` could save, host busy ns, GPU busy ns)
    over the analysed window of ``total_ns``: the window less the busier side's time (module doc)."""
    ev = rank.events
    ss, se = c.step_spans(rank)
    if not len(ss):
        return float(total_ns), 0.0, 0.0
    lo = int(ss[0])
    hi = lo + int(total_ns)
    bs, be = c.gpu_busy(ev)
    gpu = float(c.covered_ns(*c.intersect(bs, be, np.asarray([lo]), np.asarray([hi])))) if len(bs) else 0.0
    ds, de = c.data_wait_spans(ev)
    data = float(c.covered_ns(*c.intersect(ds, de, ss, se))) if len(ds) else 0.0
    ts = ev.ts_ns[rows].astype(np.int64)
    blocked_host = float(c.covered_ns(*c.merge(ts, ts + ev.dur_ns[rows].astype(np.int64))))
    # in the untraced loop's terms: the profiler's added host time leaves the step and the host alike
    step = float(total_ns) - _profiler_added_ns(rank, total_ns)
    host = max(0.0, step - blocked_host - data)
    return max(0.0, step - max(host, gpu)), host, gpu


def _profiler_added_ns(rank: RankData, total_ns: int) -> float:
    """Host time the profiler added over the analysed steps: their mean traced step less the
    median untraced step (telemetry), times the steps; 0 without enough untraced steps."""
    out = rank.untraced_step_mask() if rank.steps else None
    if out is None or not rank.telemetry:
        return 0.0
    wall = np.asarray(rank.telemetry.get("wall_ms", ()), dtype=float)[out]
    wall = wall[np.isfinite(wall)]
    if wall.size < c.MIN_UNTRACED_STEPS:
        return 0.0
    per_step = float(total_ns) / len(rank.steps) - float(median(wall)) * 1e6
    return max(0.0, per_step) * len(rank.steps)


def _copy_direction(ev: EventTable) -> dict[int, str]:
    """Op row -> direction of the copy it launched (``DtoH``, ``HtoD (Pageable)``, ...)."""
    out: dict[int, str] = {}
    for r in ev.rows_of_kind(Kind.MEMCPY):
        op = int(ev.op_of[r]) if len(ev.op_of) else -1
        if op >= 0:
            name = ev.name_of(int(r))
            out[op] = "DtoH" if is_device_to_host(name) else ("HtoD pageable" if "Pageable" in name else "other")
    return out


def _cause(ev: EventTable, row: int, chain: np.ndarray, copy_dir: dict[int, str]) -> str:
    for r in chain[::-1]:  # innermost first
        name = ev.name_of(int(r))
        if name in _CAUSE:
            return _CAUSE[name]
        if name in _COPY_OPS:
            d = next((copy_dir[int(x)] for x in chain[::-1] if int(x) in copy_dir), None)
            if d == "DtoH":
                return ".cpu() / .to('cpu') / copy to host"
            if d == "HtoD pageable":
                return ".to(device) from pageable host memory (the copy syncs)"
    name = ev.name_of(row)
    if name.endswith(("DeviceSynchronize", "CtxSynchronize")):
        return "torch.cuda.synchronize()"
    if name.endswith("EventSynchronize"):
        return "event.synchronize()"
    if len(chain):
        return ev.name_of(int(chain[-1]))
    return "stream synchronize"


def _dtoh_bytes(ev: EventTable) -> dict[int, int]:
    """Launch row -> bytes of the device-to-host copy it launched."""
    copies = ev.rows_named(is_device_to_host, Kind.MEMCPY)
    out: dict[int, int] = {}
    for r in copies:
        launch = int(ev.launch_of[r]) if len(ev.launch_of) else -1
        if launch >= 0:
            out[launch] = int(ev.bytes[r])
    return out


@register
class Synchronization(c.PerRank):
    """Blocking syncs per step, the GPU idle time they cost, and the op and line of each."""

    name = "synchronization"
    requires = frozenset({"trace", "gpu"})
    description = "blocking host-device syncs (.item(), .cpu(), synchronize) inside the step"

    def _analyze_rank(self, ctx: AnalysisContext) -> list[Finding]:
        rank = ctx.ranks[0]
        ev = rank.events
        total_ns, n_steps = c.window_ns(rank)
        rows = c.in_window(ev, c.blocking_call_rows(ev))
        rows = rows[isin(ev.tid[rows], c.issuing_threads(rank))] if len(rows) else rows
        if not len(rows) or not total_ns:
            return []
        blocked, after = sync_wait_ns(rank, rows)
        cost = blocked + after
        lost = float(cost.sum())
        bound, host_ns, gpu_ns = removable_ns(rank, rows, total_ns)
        saving = min(lost, bound)
        share = 100.0 * saving / total_ns
        refill = np.minimum(after, REFILL_MS * 1e6)
        open_ops = c.OpenOps(ev)
        py = ev.rows_of_kind(Kind.PYTHON)
        copy_dir = _copy_direction(ev)
        nbytes = _dtoh_bytes(ev)
        sites: dict[tuple, dict[str, Any]] = {}
        for i in np.argsort(-cost, kind="stable")[:MAX_SITE_ROWS]:
            r = int(rows[i])
            tid, t = int(ev.tid[r]), int(ev.ts_ns[r])
            chain = open_ops.at(tid, t)
            op = ev.name_of(int(chain[-1])) if len(chain) else None
            line = c.user_frame_at(ev, tid, t, py) if len(py) else None
            key = (_cause(ev, r, chain, copy_dir), op, line)
            s = sites.setdefault(key, {"ns": 0.0, "n": 0, "bytes": [], "api": {}})
            s["ns"] += float(cost[i])
            s["n"] += 1
            s["api"][ev.name_of(r)] = s["api"].get(ev.name_of(r), 0.0) + float(cost[i])
            if r in nbytes:
                s["bytes"].append(nbytes[r])
        where_sites = []
        for (cause, op, line), s in sorted(sites.items(), key=lambda kv: -kv[1]["ns"])[:8]:
            site: dict[str, Any] = {
                "cause": cause,
                "op": op,
                "api": sorted(s["api"], key=s["api"].__getitem__, reverse=True),
                "calls_per_step": s["n"] / n_steps,
                "ms_per_step": c.ms(s["ns"]) / n_steps,
            }
            if s["bytes"]:
                site["bytes"] = int(median(s["bytes"]))
            if line:
                site["python"] = line
            where_sites.append(site)
        bd = rank.breakdown
        evidence: dict[str, Any] = {
            "syncs_per_step": len(rows) / n_steps,
            "sync_wait_ms_per_step": c.ms(lost) / n_steps,
            "blocked_idle_ms_per_step": c.ms(blocked.sum()) / n_steps,
            "bubble_ms_per_step": c.ms(after.sum()) / n_steps,
            "refill_ms_per_step": c.ms(refill.sum()) / n_steps,
            "host_work_after_sync_ms_per_step": c.ms((after - refill).sum()) / n_steps,
            "host_blocked_ms_per_step": c.ms(ev.dur_ns[rows].sum()) / n_steps,
            "sync_wait_pct_of_step": 100.0 * lost / total_ns,
            "removable_ms_per_step": c.ms(bound) / n_steps,
            "host_busy_ms_per_step": c.ms(host_ns) / n_steps,
            "gpu_busy_ms_per_step": c.ms(gpu_ns) / n_steps,
            "top_cause": where_sites[0]["cause"] if where_sites else None,
        }
        if bd:
            evidence["breakdown_sync_wait_ms_per_step"] = sum(b.sync_wait_ms for b in bd) / len(bd)
        causes = c.top_counts(s["cause"] for s in where_sites)
        where: dict[str, Any] = {
            "sites": where_sites,
            "causes": causes,
            "api": c.top_counts(ev.name_of(int(r)) for r in rows),
        }
        lines = [s["python"] for s in where_sites if "python" in s]
        if lines:
            where["python"] = lines
        per_step = len(rows) / n_steps
        bounded = saving < lost
        if bounded:
            evidence["bounded_by"] = (
                f"the host is busy {c.ms(host_ns) / n_steps:.3g} ms a step against the GPU's "
                f"{c.ms(gpu_ns) / n_steps:.3g} ms: without the syncs the step stays host-bound"
            )
        return [
            Finding(
                id="blocking-syncs",
                category="synchronization",
                title=f"{per_step:.0f} blocking host-device sync(s) per step leave the GPU idle "
                f"({c.ms(lost) / n_steps:.3g} ms a step"
                + (
                    f"; removing them saves at most {c.ms(saving) / n_steps:.3g} ms: the host is the slower side)"
                    if bounded
                    else ")"
                ),
                severity=c.grade(share),
                impact=Impact(share, c.ms(saving) / n_steps),
                evidence=evidence,
                where=where,
                confidence=0.85 if lines else 0.75,
                fixes=[],
                advice="Keep values on the GPU inside the step: accumulate losses/metrics as tensors and read them "
                "once per step (or every N steps), after the next step's work is queued; avoid "
                ".item()/.cpu()/.tolist()/print(tensor) in forward; copy to pinned memory with non_blocking=True "
                "and read it after an event when the value is needed later.",
            )
        ]
