"""Statistics of the gate: exactness against scipy, and the acceptance simulations (seeded, vectorized)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stallscope.analyzers.gate.evaluate import evaluate_metric
from stallscope.analyzers.gate.rules import parse_config
from stallscope.analyzers.gate.variance import run_rule_decisions
from stallscope.analyzers.stats import (
    average_ranks,
    bootstrap_quantile_ratio,
    compare_samples,
    mann_whitney_greater,
    median_rule_decisions,
    normal_sf,
    student_t_isf,
    student_t_sf,
)

TRIALS = 1000
THRESHOLD_PCT = 3.0  # the default step-time median rule


def lognormal_steps(rng: np.random.Generator, median_ms: float, cv: float, shape: tuple[int, ...]) -> np.ndarray:
    """Right-skewed step times (like real ones) with a given median and coefficient of variation."""
    sigma = math.sqrt(math.log1p(cv * cv))
    return median_ms * np.exp(rng.normal(0.0, sigma, shape))


def test_normal_sf_known_values() -> None:
    assert normal_sf(0.0) == pytest.approx(0.5)
    assert normal_sf(1.959963984540054) == pytest.approx(0.025, rel=1e-9)
    assert normal_sf(-3.0) == pytest.approx(1 - 0.0013498980316301, rel=1e-9)


def test_average_ranks_handles_ties_per_row() -> None:
    ranks, tie_sum = average_ranks(np.array([[3.0, 1.0, 3.0, 2.0], [5.0, 5.0, 5.0, 1.0]]))
    assert ranks.tolist() == [[3.5, 1.0, 3.5, 2.0], [3.0, 3.0, 3.0, 1.0]]
    assert tie_sum.tolist() == [6.0, 24.0]


def test_mann_whitney_matches_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(7)
    for nb, nc in ((8, 9), (30, 30), (100, 140)):
        base = rng.normal(100, 5, nb).round(0)  # rounding makes ties
        cur = rng.normal(102, 5, nc).round(0)
        ours = float(mann_whitney_greater(base, cur))
        ref = stats.mannwhitneyu(cur, base, alternative="greater", method="asymptotic", use_continuity=True).pvalue
        assert ours == pytest.approx(ref, rel=1e-9, abs=1e-15)


def test_student_t_matches_scipy_including_fractional_df_and_tails() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(17)
    t = np.concatenate([rng.normal(0, 4, 400), [0.0, 40.0, -40.0, 1e-3]])
    df = np.concatenate([rng.uniform(0.7, 900, 400), [1.0, 2.0, 3.5, 250.0]])
    ours, ref = student_t_sf(t, df), stats.t.sf(t, df)
    assert np.allclose(ours, ref, rtol=1e-9, atol=1e-300)
    for p, nu in ((0.01, 1), (0.01, 4), (0.005, 18), (0.99, 7.5), (0.3, 60)):
        assert student_t_isf(p, nu) == pytest.approx(stats.t.isf(p, nu), rel=1e-9)
    assert float(student_t_sf(np.inf, 3)) == 0.0 and float(student_t_sf(-np.inf, 3)) == 1.0


def test_mann_whitney_vectorized_equals_one_by_one() -> None:
    rng = np.random.default_rng(3)
    base, cur = rng.normal(10, 1, (5, 40)), rng.normal(10.3, 1, (5, 40))
    rows = [float(mann_whitney_greater(b, c)) for b, c in zip(base, cur, strict=True)]
    assert mann_whitney_greater(base, cur).tolist() == pytest.approx(rows)


def test_mann_whitney_all_equal_is_not_significant() -> None:
    assert float(mann_whitney_greater(np.ones(30), np.ones(30))) == 1.0


def test_bootstrap_is_reproducible_and_centered() -> None:
    rng = np.random.default_rng(5)
    base, cur = rng.normal(10, 0.2, 200), rng.normal(11, 0.2, 200)
    a, b = bootstrap_quantile_ratio(base, cur), bootstrap_quantile_ratio(base, cur)
    assert np.array_equal(a, b)
    assert np.median(a) == pytest.approx(np.median(cur) / np.median(base), rel=0.01)


@pytest.mark.parametrize("n", [20, 100])
def test_false_positive_rate_on_noise_only_pairs_is_at_most_one_percent(n: int) -> None:
    rng = np.random.default_rng(20261128 + n)
    base = lognormal_steps(rng, 50.0, 0.05, (TRIALS, n))
    cur = lognormal_steps(rng, 50.0, 0.05, (TRIALS, n))
    regression, _ = median_rule_decisions(base, cur, THRESHOLD_PCT)
    assert regression.mean() <= 0.01
    # Without the effect-size threshold, the test alone fires at about alpha: the p-values are calibrated.
    significant_only, _ = median_rule_decisions(base, cur, 0.0)
    assert significant_only.mean() <= 0.02


def test_five_percent_regression_detected_at_n100_cv2() -> None:
    rng = np.random.default_rng(11)
    base = lognormal_steps(rng, 50.0, 0.02, (TRIALS, 100))
    cur = lognormal_steps(rng, 50.0 * 1.05, 0.02, (TRIALS, 100))
    regression, improvement = median_rule_decisions(base, cur, THRESHOLD_PCT)
    assert regression.mean() >= 0.95
    assert not improvement.any()


@pytest.mark.parametrize("factor", [0.99, 0.95, 0.8])
def test_real_improvement_never_fails(factor: float) -> None:
    rng = np.random.default_rng(int(factor * 1000))
    base = lognormal_steps(rng, 50.0, 0.05, (TRIALS, 100))
    cur = lognormal_steps(rng, 50.0 * factor, 0.05, (TRIALS, 100))
    regression, improvement = median_rule_decisions(base, cur, THRESHOLD_PCT)
    assert not regression.any()
    if factor <= 0.95:
        assert improvement.mean() >= 0.95


def test_higher_is_better_flips_the_direction() -> None:
    rng = np.random.default_rng(2)
    base = lognormal_steps(rng, 1000.0, 0.02, (200, 100))
    cur = lognormal_steps(rng, 900.0, 0.02, (200, 100))  # throughput fell by 10 %
    regression, _ = median_rule_decisions(base, cur, THRESHOLD_PCT, lower_is_better=False)
    assert regression.all()


def _report(samples: np.ndarray) -> dict:
    return {
        "schema_version": 1,
        "summary": {"step_time_ms": {"median": float(np.median(samples)), "samples": samples.tolist()}},
    }


def test_rule_engine_reaches_the_same_decisions_as_the_vectorized_simulation() -> None:
    """One report per side: the gate decides as :func:`run_rule_decisions` does (the fallback
    variance model), which only ever vetoes what the step-level rule above would fail."""
    config = parse_config({"rules": [{"metric": "step_time_median", "max_regression_pct": THRESHOLD_PCT}]})
    rule = config.rules[0]
    rng = np.random.default_rng(99)
    factors = np.repeat([1.0, 1.03, 1.10, 0.90], 40)
    base = lognormal_steps(rng, 20.0, 0.05, (factors.size, 60))
    cur = lognormal_steps(rng, 20.0, 0.05, (factors.size, 60)) * factors[:, None]
    regression, improvement = run_rule_decisions(base[:, None, :], cur[:, None, :], THRESHOLD_PCT)
    statuses = [evaluate_metric(rule, _report(b), _report(c), config).status for b, c in zip(base, cur, strict=True)]
    assert [s == "regression" for s in statuses] == regression.tolist()
    assert [s == "improvement" for s in statuses] == improvement.tolist()
    assert {"regression", "pass", "improvement"} <= set(statuses)
    step_regression, step_improvement = median_rule_decisions(base, cur, THRESHOLD_PCT)
    assert not (regression & ~step_regression).any() and not (improvement & ~step_improvement).any()


def test_default_gate_false_positive_rate_including_p90_bootstrap() -> None:
    """The whole default gate (median + p90 rules) on noise only: no more than 1 % failing."""
    config = parse_config(None)
    rng = np.random.default_rng(4242)
    trials = 300
    base = lognormal_steps(rng, 30.0, 0.05, (trials, 100))
    cur = lognormal_steps(rng, 30.0, 0.05, (trials, 100))
    failed = 0
    for b, c in zip(base, cur, strict=True):
        results = [evaluate_metric(rule, _report(b), _report(c), config) for rule in config.rules]
        failed += any(r.status == "regression" for r in results)
    assert failed / trials <= 0.01


def test_compare_samples_reports_effect_and_interval() -> None:
    rng = np.random.default_rng(1)
    base = lognormal_steps(rng, 10.0, 0.02, (100,))
    cur = lognormal_steps(rng, 11.0, 0.02, (100,))
    cmp = compare_samples(base, cur, "median")
    assert cmp.change_pct == pytest.approx(10.0, abs=1.5)
    assert cmp.p_worse < 1e-10 and cmp.p_better > 0.99
    assert 1.0 < cmp.ci_ratio[0] < 1.1 < cmp.ci_ratio[1] + 0.02
    p90 = compare_samples(base, cur, "p90", "bootstrap")
    assert p90.p_worse < 0.01
