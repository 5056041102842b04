"""Judging gate rules on two reports.

Metrics whose parent holds ``samples`` (``summary.step_time_ms.median``, ``.p90``, ``.mean``)
are decided on the per-step samples of each run: effect beyond the threshold *and* significant
under the run-level variance model of :mod:`analyzers.gate.variance` (measured between runs when
there are enough runs, else assumed, with the step-level test of :mod:`analyzers.stats` as
well). Beyond the threshold but not significant passes when between-run variance was measured
(the runs show the change is noise-sized) and is inconclusive when it was assumed (one run a
side cannot separate it from run-to-run noise). Other numbers have no samples and are judged by
threshold alone.
Findings: a finding is new when its id is not in the baseline.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from stallscope.analyzers.gate.rules import (
    GPU_IDLE,
    IDLE_PARTS,
    SEVERITY_RANK,
    STATISTIC,
    FindingRule,
    GateConfig,
    MetricRule,
    RuleResult,
)
from stallscope.analyzers.gate.variance import BETWEEN_RUNS, compare_runs, few_runs_text, run_statistic
from stallscope.analyzers.stats import compare_samples, mann_whitney_greater
from stallscope.profiler.common import ToolError

__all__ = ["evaluate_findings", "evaluate_metric", "resolve"]

_MISSING = object()


def resolve(report: Any, path: str) -> Any:
    """Value at a dotted path (list items by index); a missing step gives a sentinel, not an error."""
    if path == GPU_IDLE:
        breakdown = resolve(report, "summary.breakdown_pct")
        if not isinstance(breakdown, dict):
            return _MISSING
        if "gpu_idle_pct" in breakdown or "idle_pct" in breakdown:
            return breakdown.get("gpu_idle_pct", breakdown.get("idle_pct"))
        parts = [breakdown[k] for k in IDLE_PARTS if isinstance(breakdown.get(k), (int, float))]
        return float(sum(parts)) if parts else _MISSING
    node = report
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _numbers_in(report: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(report, dict):
        for key, value in report.items():
            if prefix == "" and key in ("environment", "tool", "source", "findings"):
                continue
            out += _numbers_in(value, f"{prefix}{key}.")
    elif isinstance(report, list) and prefix.count(".") < 4:
        for i, value in enumerate(report[:3]):
            out += _numbers_in(value, f"{prefix}{i}.")
    elif isinstance(report, (int, float)) and not isinstance(report, bool):
        out.append(prefix[:-1])
    return out


def _samples(report: dict[str, Any], parent: str, side: str) -> Optional[list[float]]:
    raw = resolve(report, f"{parent}.samples")
    if raw is _MISSING:
        return None
    if not isinstance(raw, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        raise ToolError(
            f"{side} report: {parent}.samples must be a list of numbers; regenerate the report with stallscope diagnose"
        )
    return [float(v) for v in raw if math.isfinite(v)]


def evaluate_metric(
    rule: MetricRule,
    base: dict[str, Any],
    current: dict[str, Any],
    config: GateConfig,
    names: tuple[str, str] = ("baseline", "current"),
    runs: Optional[tuple[Sequence[dict[str, Any]], Sequence[dict[str, Any]]]] = None,
    rounds: bool = False,
) -> RuleResult:
    """Judge one metric rule on two reports.

    ``runs`` holds each side's per-run reports when a side has several (a baseline folder, the
    rounds of ``gate ab``, then ``rounds`` is true); rules on per-step samples then test at the
    run level (:mod:`analyzers.gate.variance`). Without it each report is one run.
    """
    parent, _, statistic = rule.path.rpartition(".")
    sample_parent = bool(STATISTIC.match(statistic)) and (
        parent == "summary.step_time_ms"
        or isinstance(resolve(base, f"{parent}.samples"), list)
        or isinstance(resolve(current, f"{parent}.samples"), list)
    )
    if sample_parent and rule.test != "threshold":
        sides = runs or ([base], [current])
        return _evaluate_samples(rule, parent, statistic, sides, config, names, rounds)
    return _evaluate_scalar(rule, base, current, names)


def _result(rule: MetricRule, kind: str, status: str, message: str, **kw: Any) -> RuleResult:
    return RuleResult(rule.name, kind, status, message, metric=rule.path, threshold=rule.threshold_text, **kw)


def _beyond(rule: MetricRule, worse_pct: float, worse_abs: float) -> bool:
    if rule.max_regression_pct is not None:
        return worse_pct > rule.max_regression_pct
    return worse_abs > float(rule.max_regression_abs or 0.0)


def _side_runs(reports: Sequence[dict[str, Any]], parent: str, side: str, rule: MetricRule) -> list[list[float]]:
    runs = []
    for report in reports:
        samples = _samples(report, parent, side)
        if samples is None:
            raise ToolError(
                f"{side} report has no per-step samples at {parent}.samples (rule {rule.name!r}); regenerate it with stallscope diagnose, which keeps them"
            )
        runs.append(samples)
    return runs


def _step_p(b: list[float], c: list[float], statistic: str, test: str, rule: MetricRule) -> tuple[float, float]:
    """One-sided step-level p-values (worse, better) of the rule's test on the pooled samples."""
    if test == "mann-whitney":  # the bootstrap interval of compare_samples is not needed here
        up, down = float(mann_whitney_greater(b, c)), float(mann_whitney_greater(c, b))
        return (up, down) if rule.lower_is_better else (down, up)
    steps = compare_samples(b, c, statistic, test, rule.lower_is_better)
    return steps.p_worse, steps.p_better


def _evaluate_samples(
    rule: MetricRule,
    parent: str,
    statistic: str,
    sides: tuple[Sequence[dict[str, Any]], Sequence[dict[str, Any]]],
    config: GateConfig,
    names: tuple[str, str],
    rounds: bool,
) -> RuleResult:
    b_runs, c_runs = (_side_runs(reports, parent, side, rule) for reports, side in zip(sides, names, strict=True))
    b = [v for run in b_runs for v in run]
    c = [v for run in c_runs for v in run]
    test = rule.test or ("mann-whitney" if statistic in ("median", "mean") else "bootstrap")
    if min(len(b), len(c)) < config.min_samples:
        return _result(
            rule,
            "samples",
            "inconclusive",
            f"too few samples ({len(b)} vs {len(c)}, need {config.min_samples} per side): run at least "
            f"{config.min_samples - min(len(b), len(c))} more step(s), or lower --skip (the samples are the steps "
            "after --skip, outside the trace window and the step that writes it)",
            test=test,
            n_base=len(b),
            n_current=len(c),
        )
    b_runs, c_runs = [r for r in b_runs if len(r) >= 2], [r for r in c_runs if len(r) >= 2]
    values = [run_statistic(np.asarray(r), statistic) for r in (*b_runs, *c_runs)]
    if not b_runs or not c_runs or not all(v > 0 for v in values):
        return _result(
            rule,
            "samples",
            "inconclusive",
            f"{statistic} of every run must be positive, from at least 2 steps, for the run-level test",
            test=test,
            n_base=len(b),
            n_current=len(c),
        )
    cmp = compare_runs(
        [np.asarray(r) for r in b_runs],
        [np.asarray(r) for r in c_runs],
        statistic,
        rule.lower_is_better,
        config.alpha,
        config.run_to_run_cv_pct,
        rounds,
    )
    p_worse, p_better = cmp.p_worse, cmp.p_better
    if cmp.model == BETWEEN_RUNS:
        test = "t-test on runs"
    else:  # too few runs: the step-level test must agree as well
        step_worse, step_better = _step_p(b, c, statistic, test, rule)
        p_worse, p_better = max(p_worse, step_worse), max(p_better, step_better)
    sign = 1 if rule.lower_is_better else -1
    worse_abs = (cmp.current_value - cmp.base_value) * sign
    flagged = cmp.flagged_from_pct
    if rule.max_regression_pct is not None:
        flagged = max(flagged, rule.max_regression_pct)
    common = dict(
        test=test,
        base=cmp.base_value,
        current=cmp.current_value,
        change_pct=cmp.change_pct,
        ci_ratio=cmp.ci_ratio,
        n_base=len(b),
        n_current=len(c),
        variance_model=cmp.model,
        variance=cmp.description,
        runs_base=cmp.runs_base,
        runs_current=cmp.runs_current,
        df=cmp.df,
        flagged_from_pct=flagged,
        run_cv_pct=cmp.run_cv_pct,
    )
    better_abs, better_pct = -worse_abs, -cmp.worse_pct
    change = f"{statistic} {cmp.change_pct:+.2f}%"
    if _beyond(rule, cmp.worse_pct, worse_abs):
        if p_worse < config.alpha:
            message = f"{change} (beyond {rule.threshold_text}, p={p_worse:.2g})"
            return _result(rule, "samples", "regression", message, p_value=p_worse, **common)
        if cmp.model == BETWEEN_RUNS:
            message = f"{change} but not significant (p={p_worse:.2g} >= {config.alpha:g})"
            return _result(rule, "samples", "pass", message, p_value=p_worse, **common)
        message = (
            f"{change}: beyond {rule.threshold_text}, but {few_runs_text(cmp.runs_base, cmp.runs_current)} cannot "
            f"separate it from run-to-run noise (p={p_worse:.2g}; a regression from {flagged:+.1f}% with the assumed "
            f"run-to-run CV of {config.run_to_run_cv_pct:g}%); "
            + ("run more rounds (gate ab --rounds 10)" if rounds else "store a baseline folder or use gate ab")
        )
        return _result(rule, "samples", "inconclusive", message, p_value=p_worse, **common)
    if _beyond(rule, better_pct, better_abs) and p_better < config.alpha:
        message = f"{change} (better, p={p_better:.2g})"
        return _result(rule, "samples", "improvement", message, p_value=p_better, **common)
    message = f"{change} (within {rule.threshold_text})"
    return _result(rule, "samples", "pass", message, p_value=p_worse, **common)


def _evaluate_scalar(
    rule: MetricRule, base: dict[str, Any], current: dict[str, Any], names: tuple[str, str]
) -> RuleResult:
    values = [resolve(base, rule.path), resolve(current, rule.path)]
    if values[0] is _MISSING and values[1] is _MISSING:
        if not rule.required:
            return _result(
                rule, "threshold", "skipped", f"{rule.path} is in neither report (required: false)", test="threshold"
            )
        known = _numbers_in(base) + _numbers_in(current)
        close = difflib.get_close_matches(rule.path, known, n=1)
        hint = f"did you mean {close[0]}?" if close else "check the path against the report"
        raise ToolError(f"gate rule {rule.name!r}: metric path {rule.path} is in neither report; {hint}")
    for side, value in zip(names, values, strict=True):
        if value is _MISSING:
            return _result(
                rule, "threshold", "inconclusive", f"{rule.path} is missing from the {side} report", test="threshold"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ToolError(
                f"gate rule {rule.name!r}: {rule.path} in the {side} report is not a number ({type(value).__name__}); point the rule at a number"
            )
    b, c = float(values[0]), float(values[1])
    sign = 1.0 if rule.lower_is_better else -1.0
    worse_abs = (c - b) * sign
    change = (c / b - 1.0) * 100.0 if b else (0.0 if c == b else math.inf)
    worse_pct = change * sign if b else (math.inf if worse_abs > 0 else -math.inf if worse_abs < 0 else 0.0)
    common = dict(test="threshold", base=b, current=c, change_pct=change)
    delta = f"{c - b:+.4g}" if rule.max_regression_abs is not None else f"{change:+.2f}%"
    if _beyond(rule, worse_pct, worse_abs):
        return _result(
            rule,
            "threshold",
            "regression",
            f"{delta} (beyond {rule.threshold_text}; single numbers, no samples)",
            **common,
        )
    if _beyond(rule, -worse_pct, -worse_abs):
        return _result(rule, "threshold", "improvement", f"{delta} (better)", **common)
    return _result(rule, "threshold", "pass", f"{delta} (within {rule.threshold_text})", **common)


def _findings_of(report: dict[str, Any], side: str) -> list[Any]:
    found = report.get("findings")
    if found is None:
        return []
    if not isinstance(found, list):
        raise ToolError(
            f"{side} report: findings must be a list, got {type(found).__name__}; regenerate the report with stallscope diagnose"
        )
    return found


def evaluate_findings(rule: FindingRule, base: dict[str, Any], current: dict[str, Any]) -> RuleResult:
    """Fail when the current report has a finding the baseline lacks, at or above the severity."""
    if rule.fail_on_new is None:
        return RuleResult(rule.name, "findings", "skipped", "finding rule turned off (fail_on_new: off)")
    base_ids = {str(f.get("id")) for f in _findings_of(base, "baseline") if isinstance(f, dict)}
    floor = SEVERITY_RANK[rule.fail_on_new]
    new: list[str] = []
    allowed: list[str] = []
    for f in _findings_of(current, "current"):
        if not isinstance(f, dict) or str(f.get("id")) in base_ids:
            continue
        fid = str(f.get("id", "?"))
        if SEVERITY_RANK.get(str(f.get("severity", "info")), 0) < floor:
            continue
        (allowed if fid in rule.allow else new).append(f"{fid} ({f.get('severity')})")
    if new:
        return RuleResult(rule.name, "findings", "regression", f"new: {', '.join(new)}", new_findings=new)
    note = f"; allowed: {', '.join(allowed)}" if allowed else ""
    return RuleResult(
        rule.name, "findings", "pass", f"no new finding at or above {rule.fail_on_new}{note}", new_findings=[]
    )
