"""False-positive rate and power of the gate's default median rule, by simulation (CPU, seeded).

Writes bench/results/gate-sim.yaml (or $OUT/gate-sim.yaml) and prints a table. These are the
figures docs/ci.md quotes. Step times are log-normal (right-skewed, like real ones) with the
given coefficient of variation; each trial draws fresh base and current samples.

    python3 bench/gate_sim.py
"""
from __future__ import annotations

import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from stallscope.analyzers.stats import DEFAULT_ALPHA, median_rule_decisions
from stallscope.profiler.common import write_yaml

ROOT = Path(__file__).resolve().parents[1]

TRIALS = 10_000
THRESHOLD_PCT = 3.0
SEED = 20261128


def _steps(rng: np.random.Generator, median: float, cv: float, shape: tuple[int, int]) -> np.ndarray:
    return median * np.exp(rng.normal(0.0, math.sqrt(math.log1p(cv * cv)), shape))


def rate(n: int, cv: float, effect_pct: float, threshold_pct: float, rng: np.random.Generator) -> float:
    """Share of trials the rule calls a regression, for a true median change of ``effect_pct``."""
    hits = 0
    for chunk in range(0, TRIALS, 2000):
        size = min(2000, TRIALS - chunk)
        base = _steps(rng, 50.0, cv, (size, n))
        cur = _steps(rng, 50.0 * (1 + effect_pct / 100.0), cv, (size, n))
        regression, _ = median_rule_decisions(base, cur, threshold_pct, DEFAULT_ALPHA)
        hits += int(regression.sum())
    return hits / TRIALS


def main() -> int:
    rng = np.random.default_rng(SEED)
    rows = []
    for cv in (0.02, 0.05):
        for n in (20, 50, 100, 300):
            rows.append({
                "cv_pct": cv * 100,
                "samples_per_side": n,
                "false_positive_pct": round(100 * rate(n, cv, 0.0, THRESHOLD_PCT, rng), 3),
                "false_positive_test_only_pct": round(100 * rate(n, cv, 0.0, 0.0, rng), 3),
                "detect_5pct_regression_pct": round(100 * rate(n, cv, 5.0, THRESHOLD_PCT, rng), 2),
                "fail_on_5pct_improvement_pct": round(100 * rate(n, cv, -5.0, THRESHOLD_PCT, rng), 3),
            })
    out_dir = Path(os.environ.get("OUT") or ROOT / "bench" / "results")
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "what": "default median rule: effect beyond threshold and one-sided Mann-Whitney p < alpha",
        "command": "python3 bench/gate_sim.py",
        "trials": TRIALS,
        "seed": SEED,
        "threshold_pct": THRESHOLD_PCT,
        "alpha": DEFAULT_ALPHA,
        "distribution": "log-normal step times",
        "rows": rows,
    }
    write_yaml(out_dir / "gate-sim.yaml", result)
    print("cv%   n    FP%    FP% (test only)   detect 5%   fail on -5%")
    for r in rows:
        print(f"{r['cv_pct']:<4g} {r['samples_per_side']:<4} {r['false_positive_pct']:<6} {r['false_positive_test_only_pct']:<17} {r['detect_5pct_regression_pct']:<11} {r['fail_on_5pct_improvement_pct']}")
    print(f"written: {out_dir / 'gate-sim.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
