"""Two-sample statistics shared by the gate, compare and auto-patch, in numpy only (no scipy at run time).

The gate calls a change a regression only when two things hold (asv's rule, made explicit):

1. **Effect size**: the relative change of the statistic (median, p90, ...) between the
   baseline's and the current per-step samples is beyond the rule's threshold; and
2. **Significance**: a one-sided test on the per-step samples says the current samples are
   worse with ``p < alpha`` (default ``alpha = 0.01``).

Tests:

* ``mann-whitney`` (default for medians): the Mann-Whitney U test, normal approximation with
  tie correction and continuity correction. It is rank-based, so the long right tail of step
  times (a GC pause, a checkpoint) does not move it, and it needs no distribution assumption.
* ``bootstrap``: percentile bootstrap of the ratio of a quantile (median, p90, ...) between the
  two sides, with a fixed seed so verdicts are reproducible. Used for tail quantiles, where a
  location test answers the wrong question.

False-positive rate: on identical distributions with independent steps, the one-sided test
alone fires with probability ``alpha``; requiring the effect beyond the threshold as well can
only lower that. Steps of real runs are not independent: they are autocorrelated and every run
carries its own offset (clocks, placement, neighbours), so a step-level test is over-confident
between runs. The gate therefore tests at the run level when it has several runs
(:mod:`analyzers.gate.variance`, Student's t below); ``bench/gate_sim.py`` measures both.

All functions accept 1-D samples, and the vectorized forms accept ``(trials, n)`` arrays so
simulations run in one numpy call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stallscope.analyzers.arrays import median, quantile

if TYPE_CHECKING:  # annotations only: numpy.typing costs ~1 ms to import
    from numpy.typing import ArrayLike

__all__ = [
    "DEFAULT_ALPHA",
    "SampleComparison",
    "average_ranks",
    "bootstrap_quantile_ratio",
    "compare_samples",
    "median_rule_decisions",
    "mann_whitney_greater",
    "normal_sf",
    "student_t_isf",
    "student_t_sf",
    "summary",
]

DEFAULT_ALPHA = 0.01
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20260101
_BOOTSTRAP_CELLS = 4_000_000
_BOOTSTRAP_BUDGET = 20_000_000

_erfc = np.frompyfunc(math.erfc, 1, 1)
_T_DF_CAP = 1000.0  # beyond this Student's t is the normal to 4 digits; a cap keeps the fraction short


def summary(samples: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """Median, p10, p90 and mean of the finite samples (linear interpolation between order
    statistics); each is None when no sample is finite."""
    arr = np.asarray([s for s in samples if s is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"median": None, "p10": None, "p90": None, "mean": None}
    return {
        "median": float(median(arr)),
        "p10": float(quantile(arr, 0.1)),
        "p90": float(quantile(arr, 0.9)),
        "mean": float(arr.mean()),
    }


def normal_sf(z: np.ndarray | float) -> np.ndarray:
    """Survival function of the standard normal, P(Z > z), elementwise."""
    arr = np.asarray(z, dtype=np.float64)
    return np.asarray(_erfc(arr / math.sqrt(2.0)), dtype=np.float64) * 0.5


def average_ranks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks (1-based, ties get their average rank) along the last axis, and per-row tie sums.

    Returns ``(ranks, tie_sum)`` where ``tie_sum`` is ``sum(t**3 - t)`` over the tie groups of
    each row, the quantity the Mann-Whitney variance correction needs.
    """
    arr = np.asarray(x, dtype=np.float64)
    n = arr.shape[-1]
    rows = arr.reshape(-1, n)
    order = np.argsort(rows, axis=1, kind="mergesort")
    ordered = np.take_along_axis(rows, order, axis=1)
    starts = np.ones_like(ordered, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    flat_starts = starts.ravel()
    group = np.cumsum(flat_starts) - 1
    counts = np.bincount(group).astype(np.float64)
    first = (np.arange(rows.size) % n)[flat_starts].astype(np.float64)
    ranks_sorted = (first + (counts + 1.0) / 2.0)[group].reshape(rows.shape)
    ranks = np.empty_like(ranks_sorted)
    np.put_along_axis(ranks, order, ranks_sorted, axis=1)
    row_of_group = (np.arange(rows.size) // n)[flat_starts]
    tie_sum = np.bincount(row_of_group, weights=counts**3 - counts, minlength=rows.shape[0])
    return ranks.reshape(arr.shape), tie_sum.reshape(arr.shape[:-1])


def mann_whitney_greater(base: ArrayLike, current: ArrayLike) -> np.ndarray:
    """One-sided Mann-Whitney U p-value for "current tends to be larger than base".

    Normal approximation with tie and continuity corrections; fine from about 8 samples per
    side, and the gate requires more. Works along the last axis: ``(n,)`` or ``(trials, n)``.
    A degenerate case (every value equal) gives ``p = 1``.
    """
    b = np.asarray(base, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    nb, nc = b.shape[-1], c.shape[-1]
    ranks, tie_sum = average_ranks(np.concatenate([b, c], axis=-1))
    rank_sum_current = ranks[..., nb:].sum(axis=-1)
    u_current = rank_sum_current - nc * (nc + 1) / 2.0
    n = nb + nc
    mean = nb * nc / 2.0
    var = nb * nc / 12.0 * ((n + 1) - tie_sum / (n * (n - 1)))
    sd = np.sqrt(np.maximum(var, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, (u_current - mean - 0.5) / np.where(sd > 0, sd, 1.0), -np.inf)
    return normal_sf(z)


def bootstrap_quantile_ratio(
    base: np.ndarray,
    current: np.ndarray,
    q: float | None = 0.5,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> np.ndarray:
    """Bootstrap distribution of ``quantile(current, q) / quantile(base, q)`` (1-D inputs).

    ``q=None`` bootstraps the ratio of means instead. Both sides are resampled independently
    with replacement; the generator is seeded so the same inputs always give the same verdict.
    """
    b = np.asarray(base, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    rng = np.random.default_rng(seed)
    # Very long runs need fewer resamples for the same precision; keep p-value steps below 1/400.
    resamples = min(resamples, max(400, _BOOTSTRAP_BUDGET // max(b.size, c.size, 1)))

    def resampled(x: np.ndarray) -> np.ndarray:
        # Chunks bound memory to a few tens of MB however many steps a run has.
        chunk = max(1, _BOOTSTRAP_CELLS // max(x.size, 1))
        out = np.empty(resamples, dtype=np.float64)
        for start in range(0, resamples, chunk):
            rows = x[rng.integers(0, x.size, size=(min(chunk, resamples - start), x.size))]
            out[start : start + rows.shape[0]] = rows.mean(axis=1) if q is None else np.quantile(rows, q, axis=1)
        return out

    qb = resampled(b)
    qc = resampled(c)
    with np.errstate(divide="ignore", invalid="ignore"):
        return qc / qb


@dataclass
class SampleComparison:
    """What the statistics say about one metric's samples, in "worse" terms.

    ``worse_pct`` is the relative change of the statistic towards worse (positive = worse,
    whatever the direction of the metric); ``p_worse`` / ``p_better`` are one-sided p-values;
    ``ci_ratio`` is a bootstrap interval of current/base for the statistic (``1 - 2 alpha``).
    """

    statistic: str
    test: str
    base_value: float
    current_value: float
    change_pct: float
    worse_pct: float
    p_worse: float
    p_better: float
    ci_ratio: tuple[float, float]
    n_base: int
    n_current: int


def _quantile_of(statistic: str) -> float:
    if statistic == "median":
        return 0.5
    if statistic.startswith("p") and statistic[1:].isdigit():
        return int(statistic[1:]) / 100.0
    raise ValueError(f"unknown statistic {statistic!r}")


def compare_samples(
    base: Sequence[float],
    current: Sequence[float],
    statistic: str = "median",
    test: str = "mann-whitney",
    lower_is_better: bool = True,
    alpha: float = DEFAULT_ALPHA,
) -> SampleComparison:
    """Compare two sets of per-step samples for one statistic (``median``, ``p90``, ``mean``...)."""
    b = np.asarray(base, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    q: float | None
    if statistic == "mean":
        bv, cv, q = float(b.mean()), float(c.mean()), None
    else:
        q = _quantile_of(statistic)
        bv, cv = float(np.quantile(b, q)), float(np.quantile(c, q))
    change = (cv / bv - 1.0) * 100.0 if bv != 0 else math.copysign(math.inf, cv) if cv else 0.0
    worse = change if lower_is_better else -change
    ratios = bootstrap_quantile_ratio(b, c, q=q)
    finite = ratios[np.isfinite(ratios)]
    lo, hi = (
        (float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha)))
        if finite.size
        else (math.nan, math.nan)
    )
    if test == "mann-whitney":
        p_up = float(mann_whitney_greater(b, c))
        p_down = float(mann_whitney_greater(c, b))
    elif test == "bootstrap":
        n = max(finite.size, 1)
        p_up = float(((finite <= 1.0).sum() + 1) / (n + 1))
        p_down = float(((finite >= 1.0).sum() + 1) / (n + 1))
    else:
        raise ValueError(f"unknown test {test!r}")
    p_worse, p_better = (p_up, p_down) if lower_is_better else (p_down, p_up)
    return SampleComparison(
        statistic=statistic,
        test=test,
        base_value=bv,
        current_value=cv,
        change_pct=change,
        worse_pct=worse,
        p_worse=p_worse,
        p_better=p_better,
        ci_ratio=(lo, hi),
        n_base=int(b.size),
        n_current=int(c.size),
    )


def median_rule_decisions(
    base: np.ndarray,
    current: np.ndarray,
    max_regression_pct: float,
    alpha: float = DEFAULT_ALPHA,
    lower_is_better: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorized step-level median rule over ``(trials, n)`` arrays (all steps as independent).

    Returns boolean arrays ``(regression, improvement)``: the median moved beyond the
    threshold towards worse (better) and the one-sided Mann-Whitney test agrees at ``alpha``.
    This was the whole gate before run-level variance; the gate's decision now is
    :func:`analyzers.gate.variance.run_rule_decisions`, which keeps this test as a second
    condition when one run per side leaves between-run variance unmeasured.
    """
    b = np.atleast_2d(np.asarray(base, dtype=np.float64))
    c = np.atleast_2d(np.asarray(current, dtype=np.float64))
    change = (np.median(c, axis=1) / np.median(b, axis=1) - 1.0) * 100.0
    worse = change if lower_is_better else -change
    p_up, p_down = mann_whitney_greater(b, c), mann_whitney_greater(c, b)
    p_worse, p_better = (p_up, p_down) if lower_is_better else (p_down, p_up)
    return (worse > max_regression_pct) & (p_worse < alpha), (-worse > max_regression_pct) & (p_better < alpha)


def _t_sf_scalar(t: float, df: float) -> float:
    """:func:`student_t_sf` for one value in pure Python (numpy's per-call cost dominates scalars)."""
    if math.isnan(t) or math.isnan(df):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    nu = min(df, _T_DF_CAP)
    a, b, x = nu / 2.0, 0.5, nu / (nu + t * t)
    if x >= 1.0:
        return 0.5
    flip = x >= (a + 1.0) / (a + b + 2.0)
    if flip:
        a, b, x = b, a, 1.0 - x
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        step = 1.0
        for num in (
            m * (b - m) * x / ((a - 1 + 2 * m) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1 + 2 * m)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            step = d * c
            h *= step
        if abs(step - 1.0) < 1e-15:
            break
    inc = front * h / a
    tail = 0.5 * (1.0 - inc if flip else inc)
    return tail if t > 0 else 1.0 - tail


def student_t_sf(t: ArrayLike, df: ArrayLike) -> np.ndarray:
    """Survival function of Student's t, ``P(T > t)``, elementwise; ``df`` may be fractional
    (Welch-Satterthwaite) and is capped at 1000, where t equals the normal to 4 digits.
    Regularized incomplete beta by its continued fraction (Numerical Recipes 6.4)."""
    return np.asarray(_t_sf(np.asarray(t, dtype=np.float64), np.asarray(df, dtype=np.float64)), dtype=np.float64)


def student_t_isf(p: float, df: float) -> float:
    """The ``t`` with ``P(T > t) = p`` for Student's t with ``df`` degrees of freedom (bisection
    on a log scale of ``|t|``, to 1e-12 relative)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if p == 0.5:
        return 0.0
    target, sign = (p, 1.0) if p < 0.5 else (1.0 - p, -1.0)
    lo, hi = 0.0, 1.0
    while _t_sf_scalar(hi, df) > target:
        lo, hi = hi, hi * 4.0
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_sf_scalar(mid, df) > target else (lo, mid)
    return sign * 0.5 * (lo + hi)


_t_sf = np.frompyfunc(_t_sf_scalar, 2, 1)
