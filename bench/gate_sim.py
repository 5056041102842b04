"""False-positive rate and power of the default gate under realistic run noise (CPU, seeded).

Writes bench/results/gate-sim.yaml (or $OUT/gate-sim.yaml) and prints a table; docs/ci.md
quotes these figures. The default gate is two rules: step-time median 3 % and p90 10 %, alpha
0.01; a trial fails when either rule calls a regression (:func:`run_rule_decisions`, the
decision the gate makes, which tests/test_gate_variance.py checks against the rule engine).

Noise model of one run's step times (log scale): the true step time, plus a per-run offset
(normal, sd = the run-to-run CV), plus a linear drift inside the run (end-to-end change
normal, sd 2 %), plus AR(1) step noise (lag-1 correlation 0.5, marginal CV 5 or 10 %); then
2 % of the steps are outliers, 1.5x to 4x longer (GC, checkpoints). In ``gate ab`` designs the
machine also drifts linearly over the job (base and head runs interleaved, end-to-end change
uniform in +-2 %). Every trial draws fresh runs; a regression multiplies every step of every
current run. ``fp_pct_realistic`` is the highest false-positive rate and ``power_pct_*`` the
lowest power over the four realistic scenarios (CV 5/10 % x run-to-run 1/2 %), for the
recommended designs; every design's figures are in ``designs``.

    python3 bench/gate_sim.py
"""

from __future__ import annotations

import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from stallscope.analyzers.gate.variance import run_rule_decisions
from stallscope.analyzers.stats import DEFAULT_ALPHA, median_rule_decisions
from stallscope.profiler.common import write_yaml

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261203
TRIALS_FP = 8000
TRIALS_POWER = 3000
CHUNK = 1000
STEPS = 190  # a `--steps 200` run: 5 traced steps and 2 warm-up steps are not samples
RULES = (("median", 3.0), ("p90", 10.0))
RUN_CV_ASSUMED_PCT = 1.0
NOISE = {
    "ar1_lag1_correlation": 0.5,
    "drift_in_run_sd_pct": 2.0,
    "outlier_share_pct": 2.0,
    "outlier_factor": [1.5, 4.0],
    "job_drift_pct": 2.0,
    "steps_per_run": STEPS,
}
SCENARIOS = {
    "cv5-run1": {"cv_pct": 5.0, "run_to_run_cv_pct": 1.0},
    "cv5-run2": {"cv_pct": 5.0, "run_to_run_cv_pct": 2.0},
    "cv10-run1": {"cv_pct": 10.0, "run_to_run_cv_pct": 1.0},
    "cv10-run2": {"cv_pct": 10.0, "run_to_run_cv_pct": 2.0},
}
INDEPENDENT = {"cv_pct": 5.0, "run_to_run_cv_pct": 0.0}  # the old model: i.i.d. steps, no offsets
# name: (baseline runs, current runs, interleaved in one job)
DESIGNS = {
    "gate --baseline REPORT (1 run vs 1 run)": (1, 1, False),
    "gate --baseline FOLDER of 10 runs, 1 current run": (10, 1, False),
    "gate --baseline FOLDER of 10 runs, 3 current runs": (10, 3, False),
    "gate --baseline FOLDER of 10 runs, 5 current runs": (10, 5, False),
    "gate --baseline FOLDER of 20 runs, 5 current runs": (20, 5, False),
    "gate ab --rounds 3": (3, 3, True),
    "gate ab --rounds 5": (5, 5, True),
    "gate ab --rounds 8": (8, 8, True),
    "gate ab --rounds 10": (10, 10, True),
}
OLD_RULE_DESIGNS = ("gate --baseline REPORT (1 run vs 1 run)", "gate ab --rounds 3")
RECOMMENDED = ("gate ab --rounds 10", "gate --baseline FOLDER of 20 runs, 5 current runs")


def simulate(
    rng: np.random.Generator,
    trials: int,
    runs: int,
    cv_pct: float,
    run_cv_pct: float,
    slots: np.ndarray,
    job_drift: np.ndarray,
    effect: float,
    realistic: bool,
) -> np.ndarray:
    """Step times ``(trials, runs, STEPS)`` under the noise model (module doc)."""
    sigma = math.sqrt(math.log1p((cv_pct / 100.0) ** 2))
    rho = NOISE["ar1_lag1_correlation"] if realistic else 0.0
    noise = rng.standard_normal((STEPS, trials, runs))  # steps first: each AR(1) update is contiguous
    noise[0] *= sigma
    if rho:
        noise[1:] *= sigma * math.sqrt(1.0 - rho * rho)
        for j in range(1, STEPS):
            noise[j] += rho * noise[j - 1]
    else:
        noise[1:] *= sigma
    log_t = np.ascontiguousarray(noise.transpose(1, 2, 0))
    log_t += math.log1p(effect) + rng.normal(0.0, run_cv_pct / 100.0, (trials, runs, 1))
    if realistic:
        ramp = np.linspace(-0.5, 0.5, STEPS)
        log_t += rng.normal(0.0, NOISE["drift_in_run_sd_pct"] / 100.0, (trials, runs, 1)) * ramp
        log_t += (job_drift[:, None] * slots[None, :])[..., None]
    steps = np.exp(log_t, out=log_t)
    steps *= 20.0
    if realistic:
        out = rng.random(steps.shape) < NOISE["outlier_share_pct"] / 100.0
        steps[out] *= rng.uniform(*NOISE["outlier_factor"], int(out.sum()))
    return steps


def failure_rates(
    rng: np.random.Generator,
    design: tuple[int, int, bool],
    scenario: dict[str, float],
    effect: float,
    trials: int,
    realistic: bool = True,
    old_rule: bool = False,
) -> tuple[float, float | None]:
    """Share of trials (in %) the default gate fails, and the old pooled-step rule's (if asked)."""
    k, m, interleaved = design
    new = old = 0
    position = np.arange(2 * max(k, m)) / max(1, 2 * max(k, m) - 1) - 0.5  # A B A B ... over the job
    for start in range(0, trials, CHUNK):
        size = min(CHUNK, trials - start)
        moving = interleaved and realistic
        drift = rng.uniform(-1.0, 1.0, size) * NOISE["job_drift_pct"] / 100.0 if moving else np.zeros(size)
        noise = (scenario["cv_pct"], scenario["run_to_run_cv_pct"])
        base = simulate(rng, size, k, *noise, position[0::2][:k], drift, 0.0, realistic)
        cur = simulate(rng, size, m, *noise, position[1::2][:m], drift, effect, realistic)
        failed = np.zeros(size, dtype=bool)
        for statistic, threshold in RULES:
            failed |= run_rule_decisions(base, cur, threshold, DEFAULT_ALPHA, RUN_CV_ASSUMED_PCT, statistic)[0]
        new += int(failed.sum())
        if old_rule:
            old += int(median_rule_decisions(base.reshape(size, -1), cur.reshape(size, -1), RULES[0][1])[0].sum())
    return 100.0 * new / trials, (100.0 * old / trials if old_rule else None)


def design_rows(rng: np.random.Generator, name: str, design: tuple[int, int, bool]) -> dict[str, Any]:
    """One design under every scenario: false positives, power at +5 % and +10 %."""
    old = name in OLD_RULE_DESIGNS
    rows = []
    for scenario_name, scenario in SCENARIOS.items():
        fp, fp_old = failure_rates(rng, design, scenario, 0.0, TRIALS_FP, old_rule=old)
        p5, p5_old = failure_rates(rng, design, scenario, 0.05, TRIALS_POWER, old_rule=old)
        p10, _ = failure_rates(rng, design, scenario, 0.10, TRIALS_POWER)
        row: dict[str, Any] = {"scenario": scenario_name, "fp_pct": round(fp, 3)}
        if old:
            row["fp_pct_old_rule"] = round(fp_old or 0.0, 3)
        row.update(power_pct_5pct=round(p5, 2), power_pct_10pct=round(p10, 2))
        if old:
            row["power_pct_5pct_old_rule"] = round(p5_old or 0.0, 2)
        rows.append(row)
        was = f" (old rule {fp_old:.2f}%)" if old else ""
        print(f"{name:<50} {scenario_name:<9} FP {fp:5.2f}%{was}  power +5% {p5:6.2f}%  +10% {p10:6.2f}%", flush=True)
    iid, iid_old = failure_rates(rng, design, INDEPENDENT, 0.0, TRIALS_FP, realistic=False, old_rule=old)
    out: dict[str, Any] = {
        "design": name,
        "runs_base": design[0],
        "runs_current": design[1],
        "fp_pct_worst": max(r["fp_pct"] for r in rows),
        "power_pct_10pct_worst": min(r["power_pct_10pct"] for r in rows),
        "power_pct_5pct_worst": min(r["power_pct_5pct"] for r in rows),
        "fp_pct_independent_steps": round(iid, 3),
    }
    if old:
        out["fp_pct_independent_steps_old_rule"] = round(iid_old or 0.0, 3)
    out["scenarios"] = rows
    return out


def main() -> int:
    rng = np.random.default_rng(SEED)
    designs = [design_rows(rng, name, design) for name, design in DESIGNS.items()]
    chosen = [d for d in designs if d["design"] in RECOMMENDED]
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python3 bench/gate_sim.py",
        "what": "default gate (median 3 %, p90 10 %, alpha 0.01) under realistic run noise: share of identical runs it "
        "fails (fp) and of runs slowed down by 5 % / 10 % it fails (power)",
        "seed": SEED,
        "trials_fp": TRIALS_FP,
        "trials_power": TRIALS_POWER,
        "alpha": DEFAULT_ALPHA,
        "rules_threshold_pct": {f"step_time_{s}": t for s, t in RULES},
        "run_to_run_cv_pct_assumed": RUN_CV_ASSUMED_PCT,
        "noise_model": NOISE,
        "scenarios": SCENARIOS,
        "independent_steps_scenario": INDEPENDENT,
        "recommended_designs": list(RECOMMENDED),
        "fp_pct_realistic": max(d["fp_pct_worst"] for d in chosen),
        "power_pct_10pct_realistic": min(d["power_pct_10pct_worst"] for d in chosen),
        "power_pct_5pct_realistic": min(d["power_pct_5pct_worst"] for d in chosen),
        "goal": {"fp_pct_max": 1.0, "power_pct_10pct_min": 95.0, "power_pct_5pct_min": 80.0},
        "old_rule": "median 3 % and a one-sided Mann-Whitney test on the pooled steps, the gate before run-level "
        "variance (its p90 rule could only add failures)",
        "designs": designs,
    }
    out_dir = Path(os.environ.get("OUT") or ROOT / "bench" / "results")
    write_yaml(out_dir / "gate-sim.yaml", result)
    print(
        f"recommended designs, worst realistic scenario: FP {result['fp_pct_realistic']}%, "
        f"power +10% {result['power_pct_10pct_realistic']}%, +5% {result['power_pct_5pct_realistic']}%"
    )
    print(f"written: {out_dir / 'gate-sim.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
