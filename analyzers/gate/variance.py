"""Run-level variance models: how sure the gate can be that a change is not run-to-run noise.

Steps of one run share that run's offset (clocks, placement, neighbours, allocator state) and
are autocorrelated, so a test on pooled per-step samples treats thousands of steps as
independent evidence when the real unit of replication is the run. The gate reduces each run
to its statistic (median, mean or pNN of its steps), works on the log of it (a change is a
ratio) and uses one of two variance models:

``between-runs``
    Several runs in all (a baseline folder of reports, a current folder, or the interleaved
    rounds of ``gate ab``): a two-sample Student t-test on the runs' log statistics with the
    pooled between-run variance, ``df = runs_base + runs_current - 2``. Between-run variance is
    measured, so offsets, drift and autocorrelation are all inside it. Used when ``df >= 2``.

``within-run-blocks+assumed-run-cv``
    Too few runs to measure between-run variance (one stored baseline report and one current
    run). Each run's variance is estimated from contiguous blocks of its steps (batch means: the
    variance of the block statistics over the number of blocks, which holds under
    autocorrelation and drift inside the run), and a run-to-run CV is *assumed* (gate.yaml
    ``run_to_run_cv_pct``, default :data:`DEFAULT_RUN_CV_PCT`) for the part no single run can
    show; Welch-Satterthwaite degrees of freedom. The step-level test (Mann-Whitney or
    bootstrap) must agree as well. A change beyond the threshold that this test cannot call
    significant is *inconclusive* here, not a pass: one run a side cannot tell it from
    run-to-run noise, and only more runs can (:func:`run_rule_outcomes`).

Why the default assumed run-to-run CV is 2.5 %: no single run can show it, so the false-positive
rate stays at ``alpha`` only while the assumed CV is at least the machine's real one (at 1 %
the default gate failed 5-9 % of identical runs on a machine with 2 %). Measured: GPU-bound
training runs on one H200 differ by 0.1-0.7 % (sd of the run medians of resnet50,
convnext_tiny, gpt2 and the gate workload: bench/results/window-after-effect*.yaml, gate.yaml);
shared CI machines commonly by 1-2 %, the top of the realistic scenarios of bench/gate_sim.py.
At an assumed CV equal to the real one the median rule alone fires at about ``alpha`` (the
block estimate reads a little low under autocorrelation) and two default rules share the
budget, so the default sits a quarter above 2 %: simulated false positives stay under 1 % at a
real 2 %. No default covers host-bound runs (8-23 % on the same H200) or a baseline taken on
another GPU of the same model (8 % average spread across same-model GPUs: Sinha et al., SC22):
there a baseline folder measures the spread instead of assuming it.

Both models are available in vectorized form (:func:`run_rule_outcomes`) for the simulation in
``bench/gate_sim.py`` and the tests; :func:`compare_runs` is the same test for one rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from stallscope.analyzers.stats import DEFAULT_ALPHA, mann_whitney_greater, student_t_isf, student_t_sf

__all__ = [
    "ASSUMED_RUN_CV",
    "BETWEEN_RUNS",
    "DEFAULT_RUN_CV_PCT",
    "MIN_DF",
    "RuleOutcomes",
    "RunComparison",
    "block_variance",
    "compare_runs",
    "few_runs_text",
    "run_rule_decisions",
    "run_rule_outcomes",
    "run_statistic",
]

BETWEEN_RUNS = "between-runs"
ASSUMED_RUN_CV = "within-run-blocks+assumed-run-cv"
DEFAULT_RUN_CV_PCT = 2.5  # assumed run-to-run CV with too few runs to measure it; why 2.5: module doc
MIN_DF = 2  # below this the t quantile explodes (31.8 at df 1): one run per side is better served by the fallback
MAX_BLOCKS = 10
MIN_BLOCK_STEPS = 5
_TINY = 1e-12


def run_statistic(x: np.ndarray, statistic: str) -> np.ndarray:
    """``median``, ``mean`` or ``pNN`` of the steps along the last axis."""
    if statistic == "mean":
        return np.mean(x, axis=-1)
    if statistic == "median":
        return np.median(x, axis=-1)
    return np.quantile(x, int(statistic[1:]) / 100.0, axis=-1)


def block_variance(x: np.ndarray, statistic: str) -> tuple[np.ndarray, int]:
    """Variance of the log of a run's statistic from contiguous blocks of its steps (last axis).

    ``B = clip(n // 5, 2, 10)`` blocks of ``n // B`` steps, taken from the end of the run (the
    few steps left over are the earliest, closest to warm-up). Returns ``(variance, B)``.
    """
    n = x.shape[-1]
    blocks = int(min(MAX_BLOCKS, max(2, n // MIN_BLOCK_STEPS)))
    length = n // blocks
    tail = x[..., n - blocks * length :].reshape(*x.shape[:-1], blocks, length)
    logs = np.log(run_statistic(tail, statistic))
    return logs.var(axis=-1, ddof=1) / blocks, blocks


def _between(base_logs: np.ndarray, cur_logs: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    k, m = base_logs.shape[-1], cur_logs.shape[-1]
    df = float(k + m - 2)
    squares = ((base_logs - base_logs.mean(-1, keepdims=True)) ** 2).sum(-1) + (
        (cur_logs - cur_logs.mean(-1, keepdims=True)) ** 2
    ).sum(-1)
    se = np.sqrt(squares / df * (1.0 / k + 1.0 / m))
    return cur_logs.mean(-1) - base_logs.mean(-1), se, df


def _assumed(
    base_logs: np.ndarray,
    base_var: np.ndarray,
    cur_logs: np.ndarray,
    cur_var: np.ndarray,
    blocks: tuple[np.ndarray, np.ndarray],
    run_cv_pct: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k, m = base_logs.shape[-1], cur_logs.shape[-1]
    tau2 = math.log1p((run_cv_pct / 100.0) ** 2)
    parts_b, parts_c = base_var / k**2, cur_var / m**2
    var = tau2 * (1.0 / k + 1.0 / m) + parts_b.sum(-1) + parts_c.sum(-1)
    spread = (parts_b**2 / (blocks[0] - 1)).sum(-1) + (parts_c**2 / (blocks[1] - 1)).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(spread > 0, var**2 / np.where(spread > 0, spread, 1.0), np.inf)
    return cur_logs.mean(-1) - base_logs.mean(-1), np.sqrt(var), df


@dataclass
class RunComparison:
    """One statistic compared at the run level, in "worse" terms like :class:`SampleComparison`.

    ``run_cv_pct`` is the spread of one run's statistic (pooled sd of the logs, in %) where it
    was measured, else the assumed run-to-run CV."""

    model: str
    description: str
    base_value: float
    current_value: float
    change_pct: float
    worse_pct: float
    p_worse: float
    p_better: float
    ci_ratio: tuple[float, float]
    df: float
    se_log: float
    t_crit: float
    runs_base: int
    runs_current: int
    run_cv_pct: float

    @property
    def flagged_from_pct(self) -> float:
        """The smallest change towards worse (in %) this comparison's test calls significant."""
        return (math.exp(self.t_crit * self.se_log) - 1.0) * 100.0


def _describe(model: str, k: int, m: int, df: float, blocks: int, run_cv_pct: float, rounds: bool) -> str:
    if model == BETWEEN_RUNS:
        unit = f"{k}+{m} interleaved rounds" if rounds else f"{k} baseline + {m} current runs"
        return f"between-run variance measured from {unit} (t-test on the runs' statistics, df {df:g})"
    why = "one run per side" if k + m == 2 else f"{k}+{m} runs give df {k + m - 2} < {MIN_DF}"
    return (
        f"between-run variance not measurable ({why}): within-run variance from {blocks} blocks per run "
        f"plus an assumed run-to-run CV of {run_cv_pct:g}% (run_to_run_cv_pct), and the step-level test"
    )


def few_runs_text(runs_base: int, runs_current: int) -> str:
    """How the verdict names a comparison with too few runs: "one run a side", "2+1 runs"."""
    return "one run a side" if runs_base == runs_current == 1 else f"{runs_base}+{runs_current} runs"


def compare_runs(
    base_runs: Sequence[np.ndarray],
    cur_runs: Sequence[np.ndarray],
    statistic: str = "median",
    lower_is_better: bool = True,
    alpha: float = DEFAULT_ALPHA,
    run_cv_pct: float = DEFAULT_RUN_CV_PCT,
    rounds: bool = False,
) -> RunComparison:
    """Compare the runs of two sides for one statistic (every run's values positive, >= 2 steps)."""
    b_logs = np.log([float(run_statistic(np.asarray(r), statistic)) for r in base_runs])
    c_logs = np.log([float(run_statistic(np.asarray(r), statistic)) for r in cur_runs])
    k, m = b_logs.size, c_logs.size
    if k + m - 2 >= MIN_DF:
        model = BETWEEN_RUNS
        diff, se_arr, df_val = _between(b_logs, c_logs)
        df, blocks = df_val, 0
        run_cv_pct = float(se_arr) / math.sqrt(1.0 / k + 1.0 / m) * 100.0  # the measured one
    else:
        model = ASSUMED_RUN_CV
        b_var = [block_variance(np.asarray(r), statistic) for r in base_runs]
        c_var = [block_variance(np.asarray(r), statistic) for r in cur_runs]
        counts = (np.array([v[1] for v in b_var], float), np.array([v[1] for v in c_var], float))
        diff, se_arr, df_arr = _assumed(
            b_logs, np.array([v[0] for v in b_var]), c_logs, np.array([v[0] for v in c_var]), counts, run_cv_pct
        )
        df, blocks = float(df_arr), int(min(counts[0].min(), counts[1].min()))
    d, se = float(diff), max(float(se_arr), _TINY)
    worse_log = d if lower_is_better else -d
    p_worse = float(student_t_sf(worse_log / se, df))
    p_better = float(student_t_sf(-worse_log / se, df))
    t_crit = student_t_isf(alpha, df)
    half = t_crit * se
    change = (math.exp(d) - 1.0) * 100.0
    return RunComparison(
        model=model,
        description=_describe(model, k, m, df, blocks, run_cv_pct, rounds),
        base_value=float(np.exp(b_logs.mean())),
        current_value=float(np.exp(c_logs.mean())),
        change_pct=change,
        worse_pct=change if lower_is_better else -change,
        p_worse=p_worse,
        p_better=p_better,
        ci_ratio=(math.exp(d - half), math.exp(d + half)),
        df=df,
        se_log=se,
        t_crit=t_crit,
        runs_base=k,
        runs_current=m,
        run_cv_pct=run_cv_pct,
    )


class RuleOutcomes(NamedTuple):
    """One rule's outcome per trial; at most one is true, none means pass."""

    regression: np.ndarray
    improvement: np.ndarray
    inconclusive: np.ndarray


def run_rule_outcomes(
    base: np.ndarray,
    current: np.ndarray,
    threshold_pct: float,
    alpha: float = DEFAULT_ALPHA,
    run_cv_pct: float = DEFAULT_RUN_CV_PCT,
    statistic: str = "median",
    lower_is_better: bool = True,
) -> RuleOutcomes:
    """The gate's outcome for ``(trials, runs, steps)`` arrays of each side, vectorized.

    As :func:`analyzers.gate.evaluate.evaluate_metric` decides one trial at a time (a test checks
    that they agree): regression, improvement, or, in the fallback model only, inconclusive (worse
    beyond the threshold but not significant). In the fallback model the step-level test is
    Mann-Whitney for medians and means; for quantiles it is left out here (the engine's bootstrap
    can only turn a regression into inconclusive, so regressions here are an upper bound).
    """
    b, c = np.asarray(base, dtype=np.float64), np.asarray(current, dtype=np.float64)
    b_logs, c_logs = np.log(run_statistic(b, statistic)), np.log(run_statistic(c, statistic))
    k, m = b.shape[1], c.shape[1]
    step_up = step_down = np.zeros(b.shape[0])
    measured = k + m - 2 >= MIN_DF
    if measured:
        diff, se, df_val = _between(b_logs, c_logs)
        df: np.ndarray | float = df_val
    else:
        (b_var, nb), (c_var, nc) = block_variance(b, statistic), block_variance(c, statistic)
        blocks = (np.full(k, float(nb)), np.full(m, float(nc)))
        diff, se, df = _assumed(b_logs, b_var, c_logs, c_var, blocks, run_cv_pct)
        if statistic in ("median", "mean"):
            pooled_b, pooled_c = b.reshape(b.shape[0], -1), c.reshape(c.shape[0], -1)
            step_up, step_down = mann_whitney_greater(pooled_b, pooled_c), mann_whitney_greater(pooled_c, pooled_b)
    worse_log = diff if lower_is_better else -diff
    t = worse_log / np.maximum(se, _TINY)
    change = (np.exp(diff) - 1.0) * 100.0
    worse_pct = change if lower_is_better else -change
    if isinstance(df, float):  # one df for every trial: sf(t) < alpha exactly when t > isf(alpha), one quantile
        t_crit = student_t_isf(alpha, df)
        worse_sig, better_sig = t > t_crit, -t > t_crit
    else:
        worse_sig = np.maximum(student_t_sf(t, df), step_up if lower_is_better else step_down) < alpha
        better_sig = np.maximum(student_t_sf(-t, df), step_down if lower_is_better else step_up) < alpha
    beyond = worse_pct > threshold_pct
    regression = beyond & worse_sig
    inconclusive = beyond & ~worse_sig if not measured else np.zeros_like(regression)
    return RuleOutcomes(regression, (-worse_pct > threshold_pct) & better_sig, inconclusive)


def run_rule_decisions(
    base: np.ndarray,
    current: np.ndarray,
    threshold_pct: float,
    alpha: float = DEFAULT_ALPHA,
    run_cv_pct: float = DEFAULT_RUN_CV_PCT,
    statistic: str = "median",
    lower_is_better: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(regression, improvement)`` boolean arrays over trials of :func:`run_rule_outcomes`."""
    outcomes = run_rule_outcomes(base, current, threshold_pct, alpha, run_cv_pct, statistic, lower_is_better)
    return outcomes.regression, outcomes.improvement
