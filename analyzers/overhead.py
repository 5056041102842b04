"""What the trace window left behind: the light steps after it against the light steps before it.

Both are the same loop with the same light telemetry, so a difference is the window's after-effect
(Kineto's CUPTI left attached cost ResNet-50 a third more per step for the rest of the run:
docs/overhead.md, "After the window"). The first step (start-up), the profiler's warm-up step
before the window and the export step after it are left out. A step's time is the one the report
uses (:func:`~stallscope.analyzers.model.step_time_ms`).

Under ``--auto-patch`` the steps after the window may run a patched program; both sides are then
taken from the window's own phase (:mod:`stallscope.profiler.patchphases`), and so is the
window's own slowdown (its steps against the light steps of that phase), named with the phase.

The figure is the ratio of medians with a seeded bootstrap 95 % interval (the gate's statistics,
:mod:`stallscope.analyzers.stats`); it is called a slowdown only when the whole interval lies
above +1 %, the accuracy the window benchmark holds itself to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stallscope.analyzers.model import step_time_ms
from stallscope.analyzers.stats import bootstrap_quantile_ratio
from stallscope.profiler import runformat
from stallscope.profiler.common import read_yaml
from stallscope.profiler.patchphases import Phase, phase_mask, phase_of, read_phases

__all__ = ["MIN_STEPS", "SLOWED_PCT", "after_window", "describe", "record_after_window"]

# Fewer steps on a side than this and a median says little; the figure is then left out (with why).
MIN_STEPS = 3
SLOWED_PCT = 1.0


def after_window(steps: dict[str, np.ndarray], phases: list[Phase] | None = None) -> dict[str, Any]:
    """The after-window figures of one rank's ``steps.csv`` columns, within the window's phase
    when ``phases`` are given (see module docstring)."""
    idx = np.asarray(steps["step"], dtype=np.int64)
    wall = np.asarray(steps["wall_ms"], dtype=np.float64)
    flags = np.asarray(steps["in_window"], dtype=np.float64) > 0
    if not flags.any():
        return {"after_window_pct": None, "why": "no traced steps"}
    first, last = int(idx[flags].min()), int(idx[flags].max())
    step_ms = step_time_ms(wall, np.asarray(steps["gpu_ms"], dtype=np.float64))
    phase = phase_of(phases or [], first)
    same = phase_mask(phase, idx)
    before = step_ms[same & (idx >= 1) & (idx < first - 1)]
    after = step_ms[same & (idx > last + 1)]
    out: dict[str, Any] = {"before_steps": int(before.size), "after_steps": int(after.size)}
    if phase is not None:
        out["phase"] = phase.label()
        light = np.concatenate([before, after])
        inside = step_ms[flags & same]
        if light.size and inside.size and float(np.median(light)) > 0:
            out["window_step_median_ms"] = round(float(np.median(inside)), 4)
            out["light_step_median_ms"] = round(float(np.median(light)), 4)
            out["window_slowdown_pct"] = round((float(np.median(inside)) / float(np.median(light)) - 1) * 100, 2)
    if before.size < MIN_STEPS or after.size < MIN_STEPS:
        out.update(
            after_window_pct=None,
            why=f"needs {MIN_STEPS} light steps on each side of the window (raise --skip or run longer)",
        )
        return out
    ratios = bootstrap_quantile_ratio(before, after)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    pct = (float(np.median(after)) / float(np.median(before)) - 1.0) * 100.0
    lo_pct, hi_pct = (float(lo) - 1.0) * 100.0, (float(hi) - 1.0) * 100.0
    out.update(
        after_window_pct=round(pct, 2),
        after_window_ci95_pct=[round(lo_pct, 2), round(hi_pct, 2)],
        slowed=lo_pct > SLOWED_PCT,
    )
    return out


def record_after_window(run_dir: Path) -> dict[str, Any] | None:
    """Compute rank 0's after-window figures and add them to ``meta.yaml``'s ``overhead``;
    None when the run has no steps.csv for rank 0."""
    cols = runformat.read_csv_columns(runformat.rank_dir(run_dir, 0) / runformat.STEPS_CSV)
    if not cols or not all(k in cols for k in ("step", "wall_ms", "gpu_ms", "in_window")):
        return None
    meta = runformat.read_meta(run_dir)
    patches = read_yaml(run_dir / runformat.PATCHES) if (run_dir / runformat.PATCHES).is_file() else None
    fig = after_window(cols, read_phases(patches))
    if meta:
        meta["overhead"] = {**(meta.get("overhead") or {}), **fig}
        runformat.write_meta(run_dir, meta)
    return fig


def describe(fig: dict[str, Any]) -> str | None:
    """One line for the console when the steps after the window were slower, else None."""
    if not fig or not fig.get("slowed"):
        return None
    lo, hi = fig["after_window_ci95_pct"]
    within = f", {fig['phase']}" if fig.get("phase") else ""
    return (
        f"steps after the trace window ran {fig['after_window_pct']:+.1f} % slower than before it "
        f"(95 % interval {lo:+.1f} .. {hi:+.1f} %, {fig['before_steps']} vs {fig['after_steps']} steps{within}); "
        "suspected cause: the profiler's CUPTI left attached (TEARDOWN_CUPTI not 1) or the clocks "
        "(nvml.csv); the report's step time, taken after the window, includes it"
    )
