"""False-positive rate and power of the default gate under realistic run noise (CPU, seeded).

Writes bench/results/gate-sim.yaml (or $OUT/gate-sim.yaml) and prints a table; docs/ci.md
quotes these figures. The default gate is two rules: step-time median 3 % and p90 10 %, alpha
0.01; a trial fails when either rule calls a regression (:func:`run_rule_outcomes`, the
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

``single_baseline_*``: one stored baseline report against one current run, the fallback
variance model with the default assumed run-to-run CV. There the gate has three answers:
regression (exit 1; ``fp`` on identical code, ``power`` on slowdowns), inconclusive (exit 3:
beyond the threshold, not significant) and pass; ``not_passed`` is regression or inconclusive.
``single_baseline_before`` is the same trials judged with the earlier default of 1 %, and
``single_baseline_oracle_power_*`` the power of a median test that *knows* each scenario's
noise (critical value: the 99th percentile of the median ratio on identical code, at least
the 3 % threshold): no gate with one run a side can do better at 1 % false positives.

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

from stallscope.analyzers.gate.variance import DEFAULT_RUN_CV_PCT, run_rule_outcomes
from stallscope.analyzers.stats import DEFAULT_ALPHA, median_rule_decisions
from stallscope.profiler.common import write_yaml

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261203
TRIALS_FP = 8000
TRIALS_POWER = 3000
CHUNK = 1000
STEPS = 190  # a `--steps 200` run: 5 traced steps and 2 warm-up steps are not samples
RULES = (("median", 3.0), ("p90", 10.0))
RUN_CV_ASSUMED_PCT = DEFAULT_RUN_CV_PCT
RUN_CV_ASSUMED_BEFORE_PCT = 1.0  # the earlier default, judged on the same trials for comparison
NOISE: dict[str, Any] = {
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
SINGLE = "gate --baseline REPORT (1 run vs 1 run)"
OLD_RULE_DESIGNS = (SINGLE, "gate ab --rounds 3")
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
        low, high = NOISE["outlier_factor"]
        steps[out] *= rng.uniform(low, high, int(out.sum()))
    return steps


def failure_rates(
    rng: np.random.Generator,
    design: tuple[int, int, bool],
    scenario: dict[str, float],
    effect: float,
    trials: int,
    realistic: bool = True,
    old_rule: bool = False,
    single: bool = False,
) -> dict[str, Any]:
    """Shares of trials (in %) the default gate fails (``fail``) and calls inconclusive.

    ``old_rule``: also the pooled-step rule's failures. ``single``: also the failures with the
    earlier assumed run-to-run CV (``fail_before``) and every trial's log ratio of the run
    medians (``log_ratio``, for the oracle bound)."""
    k, m, interleaved = design
    counts = {"fail": 0, "inconclusive": 0, "fail_old_rule": 0, "fail_before": 0}
    ratios = []
    position = np.arange(2 * max(k, m)) / max(1, 2 * max(k, m) - 1) - 0.5  # A B A B ... over the job
    for start in range(0, trials, CHUNK):
        size = min(CHUNK, trials - start)
        moving = interleaved and realistic
        drift = rng.uniform(-1.0, 1.0, size) * NOISE["job_drift_pct"] / 100.0 if moving else np.zeros(size)
        noise = (scenario["cv_pct"], scenario["run_to_run_cv_pct"])
        base = simulate(rng, size, k, *noise, position[0::2][:k], drift, 0.0, realistic)
        cur = simulate(rng, size, m, *noise, position[1::2][:m], drift, effect, realistic)
        failed, unsure, failed_before = (np.zeros(size, dtype=bool) for _ in range(3))
        for statistic, threshold in RULES:
            outcome = run_rule_outcomes(base, cur, threshold, DEFAULT_ALPHA, RUN_CV_ASSUMED_PCT, statistic)
            failed |= outcome.regression
            unsure |= outcome.inconclusive
            if single:
                before = run_rule_outcomes(base, cur, threshold, DEFAULT_ALPHA, RUN_CV_ASSUMED_BEFORE_PCT, statistic)
                failed_before |= before.regression
        counts["fail"] += int(failed.sum())
        counts["inconclusive"] += int((unsure & ~failed).sum())  # a regression in one rule wins (exit 1)
        counts["fail_before"] += int(failed_before.sum())
        if old_rule:
            old = median_rule_decisions(base.reshape(size, -1), cur.reshape(size, -1), RULES[0][1])[0]
            counts["fail_old_rule"] += int(old.sum())
        if single:
            ratios.append(np.log(np.median(cur, -1) / np.median(base, -1))[:, 0])
    out: dict[str, Any] = {key: 100.0 * n / trials for key, n in counts.items()}
    if single:
        out["log_ratio"] = np.concatenate(ratios)
    return out


def design_rows(rng: np.random.Generator, name: str, design: tuple[int, int, bool]) -> dict[str, Any]:
    """One design under every scenario: false positives, power at +5 % and +10 %."""
    old, single = name in OLD_RULE_DESIGNS, name == SINGLE
    rows = []
    for scenario_name, scenario in SCENARIOS.items():
        same = failure_rates(rng, design, scenario, 0.0, TRIALS_FP, old_rule=old, single=single)
        p5 = failure_rates(rng, design, scenario, 0.05, TRIALS_POWER, old_rule=old, single=single)
        p10 = failure_rates(rng, design, scenario, 0.10, TRIALS_POWER, single=single)
        row: dict[str, Any] = {"scenario": scenario_name, "fp_pct": round(same["fail"], 3)}
        if old:
            row["fp_pct_old_rule"] = round(same["fail_old_rule"], 3)
        row.update(power_pct_5pct=round(p5["fail"], 2), power_pct_10pct=round(p10["fail"], 2))
        if old:
            row["power_pct_5pct_old_rule"] = round(p5["fail_old_rule"], 2)
        if single:
            row.update(single_rows(scenario, same, p5, p10))
        rows.append(row)
        was = f" (old rule {same['fail_old_rule']:.2f}%)" if old else ""
        unsure = f" inconclusive {same['inconclusive']:5.2f}%" if single else ""
        print(
            f"{name:<50} {scenario_name:<9} FP {same['fail']:5.2f}%{was}{unsure}  power +5% {p5['fail']:6.2f}%  "
            f"+10% {p10['fail']:6.2f}%",
            flush=True,
        )
    iid = failure_rates(rng, design, INDEPENDENT, 0.0, TRIALS_FP, realistic=False, old_rule=old)
    out: dict[str, Any] = {
        "design": name,
        "runs_base": design[0],
        "runs_current": design[1],
        "fp_pct_worst": max(r["fp_pct"] for r in rows),
        "power_pct_10pct_worst": min(r["power_pct_10pct"] for r in rows),
        "power_pct_5pct_worst": min(r["power_pct_5pct"] for r in rows),
        "fp_pct_independent_steps": round(iid["fail"], 3),
    }
    if old:
        out["fp_pct_independent_steps_old_rule"] = round(iid["fail_old_rule"], 3)
    out["scenarios"] = rows
    return out


def single_rows(
    scenario: dict[str, float], same: dict[str, Any], p5: dict[str, Any], p10: dict[str, Any]
) -> dict[str, Any]:
    """The single-baseline figures of one scenario: inconclusive shares, a 15 % slowdown, the
    earlier default's figures on the same trials, and the oracle bound."""
    # Drawn from a generator of its own so that every other design sees the same trials as before.
    extra = np.random.default_rng([SEED, 15, int(scenario["cv_pct"]), int(scenario["run_to_run_cv_pct"])])
    p15 = failure_rates(extra, (1, 1, False), scenario, 0.15, TRIALS_POWER, single=True)
    critical = max(float(np.quantile(same["log_ratio"], 1.0 - DEFAULT_ALPHA)), math.log1p(RULES[0][1] / 100.0))
    return {
        "inconclusive_pct": round(same["inconclusive"], 3),
        "power_pct_15pct": round(p15["fail"], 2),
        "not_passed_pct_5pct": round(p5["fail"] + p5["inconclusive"], 2),
        "not_passed_pct_10pct": round(p10["fail"] + p10["inconclusive"], 2),
        "inconclusive_pct_5pct": round(p5["inconclusive"], 2),
        "inconclusive_pct_10pct": round(p10["inconclusive"], 2),
        "oracle_power_pct_5pct": round(100.0 * float(np.mean(p5["log_ratio"] > critical)), 2),
        "oracle_power_pct_10pct": round(100.0 * float(np.mean(p10["log_ratio"] > critical)), 2),
        "fp_pct_before": round(same["fail_before"], 3),
        "power_pct_5pct_before": round(p5["fail_before"], 2),
        "power_pct_10pct_before": round(p10["fail_before"], 2),
    }


def single_summary(design: dict[str, Any]) -> dict[str, Any]:
    """The top-level ``single_baseline_*`` keys: worst case over the realistic scenarios."""
    rows = design["scenarios"]
    worst = lambda key, pick=min: pick(r[key] for r in rows)  # noqa: E731
    out = {
        "single_baseline_design": design["design"],
        "single_baseline_variance_model": "within-run-blocks+assumed-run-cv",
        "single_baseline_run_to_run_cv_pct_assumed": RUN_CV_ASSUMED_PCT,
        "single_baseline_fp_pct_realistic": worst("fp_pct", max),
        "single_baseline_inconclusive_pct": worst("inconclusive_pct", max),
        "single_baseline_power_pct_15pct_realistic": worst("power_pct_15pct"),
        "single_baseline_power_pct_10pct_realistic": worst("power_pct_10pct"),
        "single_baseline_power_pct_5pct_realistic": worst("power_pct_5pct"),
        "single_baseline_not_passed_pct_10pct_realistic": worst("not_passed_pct_10pct"),
        "single_baseline_not_passed_pct_5pct_realistic": worst("not_passed_pct_5pct"),
        "single_baseline_oracle_power_pct_10pct": worst("oracle_power_pct_10pct"),
        "single_baseline_oracle_power_pct_5pct": worst("oracle_power_pct_5pct"),
        "single_baseline_before": {
            "run_to_run_cv_pct_assumed": RUN_CV_ASSUMED_BEFORE_PCT,
            "inconclusive_verdict": False,
            "fp_pct_realistic": worst("fp_pct_before", max),
            "power_pct_10pct_realistic": worst("power_pct_10pct_before"),
            "power_pct_5pct_realistic": worst("power_pct_5pct_before"),
        },
    }
    out["single_baseline_goal_met"] = {
        "fp": out["single_baseline_fp_pct_realistic"] <= 1.0,
        "power_10pct": out["single_baseline_power_pct_10pct_realistic"] >= 95.0,
        "power_5pct": out["single_baseline_power_pct_5pct_realistic"] >= 80.0,
    }
    return out


def main() -> int:
    rng = np.random.default_rng(SEED)
    designs = [design_rows(rng, name, design) for name, design in DESIGNS.items()]
    chosen = [d for d in designs if d["design"] in RECOMMENDED]
    single = single_summary(next(d for d in designs if d["design"] == SINGLE))
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
        **single,
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
    print(
        f"one baseline report, one current run, worst realistic scenario: FP {single['single_baseline_fp_pct_realistic']}% "
        f"(before: {single['single_baseline_before']['fp_pct_realistic']}%), inconclusive on identical code "
        f"{single['single_baseline_inconclusive_pct']}%, power +10% {single['single_baseline_power_pct_10pct_realistic']}% "
        f"(not passed {single['single_baseline_not_passed_pct_10pct_realistic']}%, oracle bound "
        f"{single['single_baseline_oracle_power_pct_10pct']}%)"
    )
    print(f"written: {out_dir / 'gate-sim.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
