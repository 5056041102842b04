"""gpu-health: throttling seen in NVML samples (clock-event reasons, SM clock, temperature).

Only samples where the GPU was busy count (``gpu_util_pct >= 50``): NVML utilisation is the
share of the sample period with a kernel running, and an idle or mostly idle GPU lowering its
clock costs nothing. Clock-event reason bits (NVML ``nvmlClocksEventReason*``):

* thermal (``0x20`` SW thermal, ``0x40`` HW thermal), hardware slowdown (``0x8``) and power
  brake (``0x80``): the GPU is held below the clock it was sold at by cooling or by the board.
  Cost estimate: throttled share of busy samples x mean clock deficit (1 - SM clock / max SM
  clock) x the GPU-busy share of the step, an upper bound since memory-bound kernels slow less
  than the clock. Graded 5 % / 20 % of step time; any hardware slowdown or power brake is at
  least **low** because it usually points at a power supply or board fault.
* software power cap (``0x4``): the GPU is at its rated power envelope, the normal regime of
  large dense GEMMs on H100/H200-class parts; nothing in the program is wrong. Reported at most
  **low**, so a healthy compute-bound job is not told it has a problem.
* applications-clock setting (``0x2``): clocks pinned below maximum by an administrator;
  reported at most **low** with the setting named.
* ECC / XID: the v1 ``nvml.csv`` has no such columns; when a run carries columns named
  ``ecc_*`` or ``xid*`` (counters), any increase during the run is **high**: an uncorrectable
  memory error or an XID during training is a hardware fault (wrong results or a crash soon).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from stallscope.analyzers.base import Analyzer, Finding, Impact, Severity, register
from stallscope.analyzers.builtin import _common as c

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext

BUSY_UTIL_PCT = 50.0
HW_SLOWDOWN, SW_POWER_CAP, APP_CLOCKS = 0x8, 0x4, 0x2
THERMAL_BITS = {0x20: "sw_thermal", 0x40: "hw_thermal", 0x8: "hw_slowdown", 0x80: "hw_power_brake"}


def _reasons(col: Any) -> np.ndarray:
    out = np.zeros(len(col), dtype=np.int64)
    for i, v in enumerate(col):
        try:
            if isinstance(v, str):
                out[i] = int(v, 16) if v.lower().startswith("0x") else int(v or 0)
            elif v == v:  # not nan
                out[i] = int(v)
        except (TypeError, ValueError):
            out[i] = 0
    return out


def _col(nv: dict[str, np.ndarray], key: str, n: int) -> np.ndarray:
    v = nv.get(key)
    if v is None or v.dtype == object:
        return np.full(n, np.nan)
    return v.astype(float)


@register
class GpuHealth(Analyzer):
    """Thermal / power / hardware clock throttling while the GPU is busy (NVML)."""

    name = "gpu-health"
    requires = frozenset({"nvml"})
    description = "clock-event reasons, SM clock below maximum while busy, temperature (NVML)"

    def analyze(self, ctx: AnalysisContext) -> list[Finding]:
        out = []
        for rank in ctx.ranks:
            nv = rank.nvml
            if not nv or not len(next(iter(nv.values()))):
                continue
            f = self._rank(ctx, rank, nv)
            if f is not None:
                out.append(f)
            errors = self._hardware_errors(rank, nv)
            if errors is not None:
                out.append(errors)
        return out

    def _hardware_errors(self, rank: Any, nv: dict[str, np.ndarray]) -> Finding | None:
        grew = {}
        for key, col in nv.items():
            if not (key.startswith("ecc_") or key.startswith("xid")) or col.dtype == object:
                continue
            v = col[np.isfinite(col)]
            if len(v) and v.max() - v.min() > 0:
                grew[key] = float(v.max() - v.min())
        if not grew:
            return None
        return Finding(
            id="gpu-hardware-errors",
            category="gpu-health",
            title="GPU reported hardware errors during the run (" + ", ".join(sorted(grew)) + ")",
            severity=Severity.HIGH,
            impact=Impact(0.0, 0.0),
            evidence={f"{k}_increase": v for k, v in grew.items()},
            where={"ranks": [rank.rank]},
            confidence=0.9,
            fixes=[],
            advice="Drain the node and check nvidia-smi -q -d ECC,PAGE_RETIREMENT and the kernel log for XIDs.",
        )

    def _rank(self, ctx: AnalysisContext, rank: Any, nv: dict[str, np.ndarray]) -> Finding | None:
        n = len(next(iter(nv.values())))
        util = _col(nv, "gpu_util_pct", n)
        busy = util >= BUSY_UTIL_PCT
        if busy.sum() == 0:
            return None
        reasons = _reasons(nv.get("clock_event_reasons", np.zeros(n)))[busy]
        clk = _col(nv, "sm_clock_mhz", n)[busy]
        clk_max = _col(nv, "sm_clock_max_mhz", n)[busy]
        temp = _col(nv, "temp_c", n)[busy]
        ratio = np.where(clk_max > 0, clk / clk_max, np.nan)
        thermal_mask = np.zeros(len(reasons), bool)
        for bit in THERMAL_BITS:
            thermal_mask |= (reasons & bit) != 0
        cap_mask = (reasons & SW_POWER_CAP) != 0
        app_mask = (reasons & APP_CLOCKS) != 0
        hw = bool(((reasons & (HW_SLOWDOWN | 0x80)) != 0).any())
        bd = rank.breakdown
        busy_share = (
            (sum(b.compute_ms + b.memory_ms for b in bd) / sum(b.wall_ms for b in bd))
            if bd and sum(b.wall_ms for b in bd)
            else 1.0
        )

        def deficit(mask: np.ndarray) -> float:
            r = ratio[mask]
            r = r[~np.isnan(r)]
            return float(max(0.0, 1.0 - r.mean())) if len(r) else 0.0

        evidence: dict[str, Any] = {
            "busy_samples": int(busy.sum()),
            "thermal_or_hw_throttled_pct_of_busy": 100.0 * thermal_mask.mean(),
            "power_capped_pct_of_busy": 100.0 * cap_mask.mean(),
            "mean_sm_clock_pct_of_max": 100.0 * float(np.nanmean(ratio)) if np.isfinite(ratio).any() else None,
            "max_temp_c": float(np.nanmax(temp)) if np.isfinite(temp).any() else None,
        }
        step_ms = sum(s.wall_ms for s in rank.steps) / len(rank.steps) if rank.steps else 0.0
        if thermal_mask.any():
            loss_pct = 100.0 * thermal_mask.mean() * deficit(thermal_mask) * busy_share
            sev = c.grade(loss_pct)
            if hw and sev.rank < Severity.LOW.rank:
                sev = Severity.LOW
            names = sorted({name for bit, name in THERMAL_BITS.items() if ((reasons & bit) != 0).any()})
            evidence["clock_deficit_pct_when_throttled"] = 100.0 * deficit(thermal_mask)
            return Finding(
                id="gpu-throttled",
                category="gpu-health",
                title=f"GPU throttled ({', '.join(names)}) in {100 * thermal_mask.mean():.0f}% of busy samples",
                severity=sev,
                impact=Impact(loss_pct, step_ms * loss_pct / 100.0),
                evidence=evidence,
                where={"reasons": names, "ranks": [rank.rank]},
                confidence=0.8,
                fixes=[],
                advice="Check cooling, fan and power delivery (nvidia-smi -q -d PERFORMANCE,TEMPERATURE); "
                "hardware slowdown or power brake usually means a board or PSU fault.",
            )
        if cap_mask.mean() >= 0.5 or app_mask.any():
            loss_pct = 100.0 * cap_mask.mean() * deficit(cap_mask | app_mask) * busy_share
            sev = Severity.LOW if loss_pct > c.LOW_PCT else Severity.INFO
            reason = (
                "application clocks set below maximum" if app_mask.any() else "at its power limit (software power cap)"
            )
            return Finding(
                id="gpu-power-capped",
                category="gpu-health",
                title=f"GPU clock held below maximum: {reason}",
                severity=sev,
                impact=Impact(loss_pct, step_ms * loss_pct / 100.0),
                evidence=evidence,
                where={
                    "reasons": ["sw_power_cap"] if not app_mask.any() else ["applications_clocks"],
                    "ranks": [rank.rank],
                },
                confidence=0.7,
                fixes=[],
                advice="Expected under dense GEMM load; nothing in the program to change. "
                "Application clocks can be reset with nvidia-smi -rac (admin).",
            )
        return None
