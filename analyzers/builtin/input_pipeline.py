"""input-pipeline: how much of each step the GPU (or, CPU-only, the training loop) waits for data.

Measure: ``data_wait_ms`` of the step breakdown, i.e. time spent inside the DataLoader's
``__next__`` (``enumerate(DataLoader)#...``) *while the GPU is idle*. Loading that overlaps GPU
work is free and not counted. For CPU-only traces it is the whole ``__next__`` time, since
nothing else could have run meanwhile. When the run directory has per-step telemetry for the
whole run, its ``data_wait_ms`` is reported too (the window may not be typical).

Grading (share of step time): >= 20 % high, >= 5 % medium, > 1 % low. These are the cut points
of TensorFlow's input-pipeline analyzer ("highly" / "moderately input-bound") and the 5 % of
the TensorBoard profiler's DataLoader rule. Why: step-time noise of a training loop is a few
percent, so a stall under ~5 % is hard to tell from noise and rarely worth a code change; at a
fifth of every step the input pipeline is the first thing to fix, because no GPU-side change can
recover time the GPU spends idle.

Impact: the whole data wait is the saving estimate (prefetching with enough workers can hide
all of it when producing a batch takes less time than a step).
"""
from __future__ import annotations

import math

import numpy as np

from analyzers.base import Analyzer, Finding, Impact, register, severity_from_share
from analyzers.model import AnalysisContext, Kind

MEDIUM_PCT = 5.0
HIGH_PCT = 20.0
LOW_PCT = 1.0


@register
class InputPipeline(Analyzer):
    """Data-wait share of step time."""

    name = "input-pipeline"
    requires = frozenset({"trace"})
    description = "GPU idle while the DataLoader produces the next batch"

    def analyze(self, ctx: AnalysisContext) -> list[Finding]:
        wall = data = 0.0
        steps = 0
        worst_rank, worst_share = None, -1.0
        next_ms = 0.0
        iter_names: set[str] = set()
        for rd in ctx.ranks:
            r_wall = sum(b.wall_ms for b in rd.breakdown)
            r_data = sum(b.data_wait_ms for b in rd.breakdown)
            wall += r_wall
            data += r_data
            steps += len(rd.breakdown)
            if r_wall > 0 and r_data / r_wall > worst_share:
                worst_rank, worst_share = rd.rank, r_data / r_wall
            ev = rd.events
            rows = ev.rows_named(lambda s: s.startswith("enumerate(DataLoader)"), Kind.CPU_OP, Kind.ANNOTATION)
            rows = rows[ev.step[rows] >= 0] if rows.size else rows
            next_ms += float(ev.dur_ns[rows].sum()) / 1e6
            iter_names.update(ev.name_of(int(r)).split("#", 1)[-1] for r in rows[:50])
        if wall <= 0 or steps == 0:
            return []
        share = 100.0 * data / wall
        if share <= LOW_PCT:
            return []
        per_step = data / steps
        evidence: dict[str, object] = {
            "data_wait_pct": share,
            "data_wait_ms_per_step": per_step,
            "step_ms_mean": wall / steps,
            "dataloader_next_ms_per_step": next_ms / steps,
            "steps": steps,
            "gpu_timeline": ctx.has("gpu"),
        }
        tel = _telemetry_data_wait(ctx)
        if tel is not None:
            evidence["whole_run_data_wait_pct"] = tel
        single = any("_SingleProcessDataLoaderIter" in n for n in iter_names)
        if single:
            evidence["num_workers"] = 0
        advice = ("raise DataLoader num_workers (and pin_memory=True, persistent_workers=True), "
                  "or move per-sample preprocessing to the GPU")
        return [
            Finding(
                id="input-pipeline-data-wait",
                category="input-pipeline",
                title=f"{'GPU idle' if ctx.has('gpu') else 'Loop waits'} {share:.1f}% of step time on the DataLoader",
                severity=severity_from_share(share, MEDIUM_PCT, HIGH_PCT, LOW_PCT),
                impact=Impact(step_time_pct=share, est_saving_ms_per_step=per_step),
                evidence=evidence,
                where={"ranks": [worst_rank] if worst_rank is not None else [], "modules": sorted(iter_names)[:3]},
                confidence=0.9 if ctx.has("gpu") else 0.75,
                fixes=["dataloader_workers", "gpu_preprocess"],
                advice=advice,
            )
        ]


def _telemetry_data_wait(ctx: AnalysisContext) -> float | None:
    """Whole-run data-wait share from steps.csv (rank 0 first), or None."""
    for rd in ctx.ranks:
        tel = rd.telemetry
        if not tel or "data_wait_ms" not in tel or "wall_ms" not in tel:
            continue
        try:
            dw = np.asarray(tel["data_wait_ms"], dtype=np.float64)
            wl = np.asarray(tel["wall_ms"], dtype=np.float64)
        except (TypeError, ValueError):
            continue
        ok = np.isfinite(dw) & np.isfinite(wl)
        total = float(wl[ok].sum())
        if total > 0 and not math.isnan(total):
            return 100.0 * float(dw[ok].sum()) / total
    return None
