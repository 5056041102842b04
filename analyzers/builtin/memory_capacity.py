"""memory-capacity: peak GPU memory against capacity, allocator churn, fragmentation, OOM risk.

Sources: NVML ``mem_used_mb`` / ``mem_total_mb`` samples (whole device, the number that runs
out) and, when the trace has ``profile_memory`` samples, the caching allocator's
``Total Reserved`` / ``Total Allocated`` on CUDA devices. Capacity is NVML's total, else the
peak table's memory size.

* **>= 90 %** of capacity is **medium** (the TensorBoard profiler's memory rule): one more
  activation of a larger batch or a longer sequence no longer fits, and the allocator starts
  returning cached blocks (``cudaFree``) and retrying, which synchronises the device.
* **>= 97 %** is **high**: the margin left is smaller than one large activation or a
  fragmentation spike, so OOM is a matter of input shape.
* Time spent in ``cudaMalloc``/``cudaFree`` inside steps is charged as impact (a warm caching
  allocator makes neither call, so any such time is churn) and graded 5 % / 20 % like every
  time-based finding; the severity is the higher of the two grades.
* Fragmentation: at the reserved peak, reserved minus allocated over reserved >= 30 % (a
  third of the pool unusable for the request that failed) adds advice
  (``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from stallscope.analyzers.base import Finding, Impact, Severity, register
from stallscope.analyzers.builtin import _common as c
from stallscope.analyzers.model import Kind

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext, RankData

MEDIUM_PCT_OF_CAPACITY = 90.0
HIGH_PCT_OF_CAPACITY = 97.0
FRAGMENTATION_PCT = 30.0
ALLOC_CALLS = frozenset(
    {
        "cudaMalloc",
        "cudaFree",
        "cudaMallocAsync",
        "cudaFreeAsync",
        "cuMemAlloc_v2",
        "cuMemFree_v2",
        "cuMemCreate",
        "cuMemMap",
        "cuMemUnmap",
        "cuMemRelease",
    }
)


def _trace_peaks(rank: RankData) -> tuple[float | None, float | None]:
    """(peak reserved bytes, allocated bytes at that moment) on CUDA devices from [memory] samples."""
    ev = rank.events
    best_res, alloc_at = None, None
    for r in ev.rows_named(lambda s: s == "[memory]"):
        mem = ev.extra.get(int(r), {}).get("memory") or {}
        if mem.get("Device Type") != 1:
            continue
        res = float(mem.get("Total Reserved") or 0)
        if best_res is None or res > best_res:
            best_res, alloc_at = res, float(mem.get("Total Allocated") or 0)
    return best_res, alloc_at


def _nv(rank: RankData, key: str) -> np.ndarray | None:
    if not rank.nvml or key not in rank.nvml:
        return None
    v = rank.nvml[key]
    if v.dtype == object:
        return None
    v = v[np.isfinite(v)]
    return v if len(v) else None


@register
class MemoryCapacity(c.PerRank):
    """Peak GPU memory against capacity; allocator churn and fragmentation."""

    name = "memory-capacity"
    requires = frozenset({"trace"})
    description = "peak GPU memory vs capacity, allocator churn, fragmentation, OOM risk"

    def _analyze_rank(self, ctx: AnalysisContext) -> list[Finding]:
        rank = ctx.ranks[0]
        used = _nv(rank, "mem_used_mb")
        total = _nv(rank, "mem_total_mb")
        res, alloc = _trace_peaks(rank)
        peaks = c.peaks(ctx)
        capacity_mb = (
            float(total.max()) if total is not None else (peaks.memory_gb * 1024 if peaks is not None else None)
        )
        peak_mb = float(used.max()) if used is not None else (res / 2**20 if res else None)
        ev = rank.events
        total_ns, n_steps = c.window_ns(rank)
        alloc_rows = c.in_window(ev, ev.rows_named(lambda s: s in ALLOC_CALLS, Kind.RUNTIME))
        alloc_ns = int(ev.dur_ns[alloc_rows].sum()) if len(alloc_rows) else 0
        alloc_share = 100.0 * alloc_ns / total_ns if total_ns else 0.0
        ooms = len(ev.rows_named(lambda s: s == "[OutOfMemory]"))
        if capacity_mb is None or peak_mb is None:
            return []
        pct = 100.0 * peak_mb / capacity_mb
        sev = (
            Severity.HIGH
            if pct >= HIGH_PCT_OF_CAPACITY or ooms
            else Severity.MEDIUM
            if pct >= MEDIUM_PCT_OF_CAPACITY
            else Severity.INFO
        )
        time_sev = c.grade(alloc_share)
        if time_sev.rank > sev.rank:
            sev = time_sev
        if sev == Severity.INFO:
            return []
        evidence: dict[str, Any] = {
            "peak_used_mb": peak_mb,
            "capacity_mb": capacity_mb,
            "peak_pct_of_capacity": pct,
            "source": "nvml" if used is not None else "allocator samples",
            "allocator_calls_per_step": len(alloc_rows) / max(n_steps, 1),
            "allocator_ms_per_step": c.ms(alloc_ns) / max(n_steps, 1),
            "oom_events": ooms,
        }
        advice = "Lower the batch size or sequence length, use activation checkpointing or bf16 autocast."
        if res and alloc is not None:
            frag = 100.0 * (res - alloc) / res
            evidence.update(
                {"peak_reserved_mb": res / 2**20, "allocated_at_peak_mb": alloc / 2**20, "fragmentation_pct": frag}
            )
            if frag >= FRAGMENTATION_PCT:
                advice += " Fragmented pool: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True."
        return [
            Finding(
                id="memory-near-capacity",
                category="memory-capacity",
                title=f"GPU memory peaks at {pct:.0f}% of capacity",
                severity=sev,
                impact=Impact(alloc_share, c.ms(alloc_ns) / max(n_steps, 1)),
                evidence=evidence,
                where={"ranks": [rank.rank]},
                confidence=0.85 if used is not None else 0.7,
                fixes=[],
                advice=advice,
            )
        ]
