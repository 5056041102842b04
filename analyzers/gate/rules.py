"""gate.yaml: the rules a report is held to, their validation, and how each rule is judged.

Schema (every key optional; without a file the defaults below apply)::

    schema_version: 1
    alpha: 0.01            # significance level of the one-sided tests
    min_samples: 20        # per side, for rules on per-step samples; fewer -> inconclusive
    rules:
      - metric: step_time_median          # an alias, or any report number by dotted path
        direction: lower_is_better        # or higher_is_better
        max_regression_pct: 3             # relative to the baseline ...
      - metric: summary.breakdown_pct.data_wait_pct
        max_regression_abs: 5             # ... or absolute, in the metric's own unit
      - metric: step_time_p90
        max_regression_pct: 10
        test: bootstrap                   # mann-whitney | bootstrap | threshold
    findings:
      fail_on_new: medium                 # high | medium | low | info | off
      allow: [host-bound-launch-gaps]     # finding ids that never fail the gate

Metrics whose parent holds ``samples`` (``summary.step_time_ms.median``, ``.p90``, ``.mean``)
are decided on the per-step samples (effect beyond the threshold *and* significant, see
:mod:`analyzers.gate.stats`); other numbers have no samples and are judged by threshold alone.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from profiler.common import ToolError, read_yaml

__all__ = [
    "ALIASES",
    "DEFAULT_CONFIG",
    "FindingRule",
    "GateConfig",
    "MetricRule",
    "RuleResult",
    "evaluate_findings",
    "evaluate_metric",
    "load_config",
    "parse_config",
    "resolve",
]

SEVERITY_RANK = {"info": 0, "low": 1, "medium": 2, "high": 3}
TESTS = ("mann-whitney", "bootstrap", "threshold")
DIRECTIONS = ("lower_is_better", "higher_is_better")
REPORT_KEYS = ("schema_version", "tool", "source", "environment", "summary", "top_kernels", "findings", "per_rank")
IDLE_PARTS = ("data_wait_pct", "sync_wait_pct", "launch_overhead_pct", "host_other_pct")
GPU_IDLE = "summary.breakdown_pct.gpu_idle_pct"

ALIASES = {
    "step_time_median": "summary.step_time_ms.median",
    "step_time_p90": "summary.step_time_ms.p90",
    "step_time_mean": "summary.step_time_ms.mean",
    "gpu_idle_pct": GPU_IDLE,
    "comm_exposed_pct": "summary.breakdown_pct.comm_exposed_pct",
    "data_wait_pct": "summary.breakdown_pct.data_wait_pct",
    "sync_wait_pct": "summary.breakdown_pct.sync_wait_pct",
    "launch_overhead_pct": "summary.breakdown_pct.launch_overhead_pct",
    "peak_memory_mb": "summary.peak_memory_mb",
}
_HIGHER_IS_BETTER = re.compile(r"throughput|per_s(ec)?\b|_per_s_|mfu|tflops|samples_per|tokens_per|util", re.I)
_SEGMENT = re.compile(r"^[A-Za-z0-9_\-#]+$")
_STATISTIC = re.compile(r"^(median|mean|p\d{1,2})$")
_CONFIG_KEYS = {"schema_version", "alpha", "min_samples", "rules", "findings"}
_RULE_KEYS = {"metric", "name", "direction", "max_regression_pct", "max_regression_abs", "test", "required"}
_FINDING_KEYS = {"fail_on_new", "allow"}

DEFAULT_CONFIG: dict[str, Any] = {
    "schema_version": 1,
    "alpha": 0.01,
    "min_samples": 20,
    "rules": [
        {"metric": "step_time_median", "max_regression_pct": 3},
        {"metric": "step_time_p90", "max_regression_pct": 10},
    ],
    "findings": {"fail_on_new": "high", "allow": []},
}


@dataclass
class MetricRule:
    """One metric held to a threshold. ``path`` is the dotted path from the report's root."""

    name: str
    metric: str
    path: str
    direction: str = "lower_is_better"
    max_regression_pct: Optional[float] = None
    max_regression_abs: Optional[float] = None
    test: Optional[str] = None
    required: bool = True

    @property
    def lower_is_better(self) -> bool:
        return self.direction == "lower_is_better"

    @property
    def threshold_text(self) -> str:
        if self.max_regression_pct is not None:
            return f"{self.max_regression_pct:g}%"
        return f"{self.max_regression_abs:g}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metric": self.metric, "path": self.path, "direction": self.direction}
        if self.max_regression_pct is not None:
            out["max_regression_pct"] = self.max_regression_pct
        if self.max_regression_abs is not None:
            out["max_regression_abs"] = self.max_regression_abs
        if self.test:
            out["test"] = self.test
        return out


@dataclass
class FindingRule:
    """Fail on a finding that is new in the current report, at or above a severity."""

    fail_on_new: Optional[str] = "high"
    allow: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"findings: no new finding >= {self.fail_on_new}" if self.fail_on_new else "findings: off"


@dataclass
class GateConfig:
    """A validated gate.yaml."""

    alpha: float = 0.01
    min_samples: int = 20
    rules: list[MetricRule] = field(default_factory=list)
    findings: FindingRule = field(default_factory=FindingRule)
    source: str = "(defaults)"


@dataclass
class RuleResult:
    """The judgement of one rule: status is pass, improvement, regression, inconclusive or skipped."""

    name: str
    kind: str
    status: str
    message: str
    metric: str = ""
    threshold: str = ""
    test: str = ""
    base: Optional[float] = None
    current: Optional[float] = None
    change_pct: Optional[float] = None
    p_value: Optional[float] = None
    ci_ratio: Optional[tuple[float, float]] = None
    n_base: Optional[int] = None
    n_current: Optional[int] = None
    new_findings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == "regression"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "status": self.status, "message": self.message}
        for key in ("metric", "threshold", "test"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        for key in ("base", "current", "change_pct"):
            value = getattr(self, key)
            if value is not None:
                out[key] = _round(value)
        if self.p_value is not None:
            out["p_value"] = float(f"{self.p_value:.4g}")
        if self.ci_ratio is not None:
            out["ci_ratio"] = [_round(v, 5) for v in self.ci_ratio]
        if self.n_base is not None:
            out["n_base"], out["n_current"] = self.n_base, self.n_current
        if self.kind == "findings":
            out["new_findings"] = list(self.new_findings)
        return out


def _round(value: float, digits: int = 4) -> float:
    return float(round(value, digits)) if math.isfinite(value) else float(value)


def _fail(where: str, what: str) -> ToolError:
    return ToolError(f"{where}: {what}")


def _number(value: Any, where: str, key: str, minimum: float = 0.0, maximum: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not minimum <= value <= maximum:
        bounds = f">= {minimum:g}" if maximum == math.inf else f"in [{minimum:g}, {maximum:g}]"
        raise _fail(where, f"{key} must be a number {bounds}, got {value!r}; fix gate.yaml")
    return float(value)


def normalize_path(metric: str, where: str) -> str:
    """Turn an alias or a dotted path (optionally relative to ``summary``) into a root path."""
    if metric in ALIASES:
        return ALIASES[metric]
    parts = metric.split(".")
    if not metric or not all(_SEGMENT.match(p) for p in parts):
        raise _fail(where, f"metric {metric!r} is not an alias or a dotted report path; use e.g. summary.step_time_ms.median")
    if parts[0] not in REPORT_KEYS:
        parts = ["summary", *parts]
    if parts[0] in ("schema_version", "tool", "source", "environment"):
        raise _fail(where, f"metric {metric!r} is not a performance number; pick a path under summary, top_kernels or per_rank")
    if parts[:2] == ["summary", "step_time_ms"] and (len(parts) != 3 or not _STATISTIC.match(parts[2])):
        raise _fail(where, f"metric {metric!r}: step_time_ms takes one of median, mean, p10..p99 (e.g. summary.step_time_ms.p90)")
    if parts[:2] == ["summary", "breakdown_pct"] and (len(parts) != 3 or not parts[2].endswith("_pct")):
        raise _fail(where, f"metric {metric!r}: breakdown_pct entries end in _pct (e.g. summary.breakdown_pct.data_wait_pct)")
    return ".".join(parts)


def _parse_rule(raw: Any, where: str) -> MetricRule:
    if not isinstance(raw, dict):
        raise _fail(where, "each rule must be a mapping with at least 'metric' and a threshold")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise _fail(where, f"unknown key {sorted(map(str, unknown))[0]!r}; allowed: {', '.join(sorted(_RULE_KEYS))}")
    metric = raw.get("metric")
    if not isinstance(metric, str):
        raise _fail(where, "'metric' is required (an alias such as step_time_median, or a dotted report path)")
    path = normalize_path(metric, where)
    default_direction = "higher_is_better" if _HIGHER_IS_BETTER.search(path) else "lower_is_better"
    direction = raw.get("direction", default_direction)
    if direction not in DIRECTIONS:
        raise _fail(where, f"direction must be lower_is_better or higher_is_better, got {direction!r}")
    has_pct, has_abs = "max_regression_pct" in raw, "max_regression_abs" in raw
    if has_pct == has_abs:
        raise _fail(where, f"metric {metric!r} needs exactly one threshold: max_regression_pct or max_regression_abs")
    pct = _number(raw["max_regression_pct"], where, "max_regression_pct", 0.0, 1000.0) if has_pct else None
    absolute = _number(raw["max_regression_abs"], where, "max_regression_abs") if has_abs else None
    test = raw.get("test")
    if test is not None and test not in TESTS:
        raise _fail(where, f"test must be one of {', '.join(TESTS)}, got {test!r}")
    required = raw.get("required", True)
    if not isinstance(required, bool):
        raise _fail(where, f"required must be true or false, got {required!r}")
    name = raw.get("name", metric)
    if not isinstance(name, str) or not name:
        raise _fail(where, f"name must be a non-empty string, got {name!r}")
    return MetricRule(name, metric, path, direction, pct, absolute, test, required)


def parse_config(data: Any, source: str = "gate.yaml") -> GateConfig:
    """Validate a parsed gate.yaml; any problem is a one-line :class:`ToolError` (exit 2)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _fail(source, "must be a mapping with keys rules, findings, alpha, min_samples")
    unknown = set(data) - _CONFIG_KEYS
    if unknown:
        raise _fail(source, f"unknown key {sorted(map(str, unknown))[0]!r}; allowed: {', '.join(sorted(_CONFIG_KEYS))}")
    if data.get("schema_version", 1) != 1:
        raise _fail(source, f"schema_version {data.get('schema_version')!r} is not supported (this stallscope reads 1)")
    alpha = _number(data.get("alpha", DEFAULT_CONFIG["alpha"]), source, "alpha", 1e-9, 0.5)
    min_samples = data.get("min_samples", DEFAULT_CONFIG["min_samples"])
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 5:
        raise _fail(source, f"min_samples must be an integer >= 5, got {min_samples!r}")
    raw_rules = data.get("rules", DEFAULT_CONFIG["rules"])
    if not isinstance(raw_rules, list):
        raise _fail(source, "rules must be a list of {metric, threshold} mappings")
    rules = [_parse_rule(r, f"{source} rules[{i}]") for i, r in enumerate(raw_rules)]
    names = [r.name for r in rules]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise _fail(source, f"two rules are named {duplicate!r}; give one a distinct 'name'")
    raw_findings = data.get("findings", DEFAULT_CONFIG["findings"])
    if not isinstance(raw_findings, dict):
        raise _fail(f"{source} findings", "must be a mapping with fail_on_new and allow")
    unknown = set(raw_findings) - _FINDING_KEYS
    if unknown:
        raise _fail(f"{source} findings", f"unknown key {sorted(map(str, unknown))[0]!r}; allowed: allow, fail_on_new")
    fail_on = raw_findings.get("fail_on_new", "high")
    if fail_on in (None, False, "off", "none"):
        fail_on = None
    elif not isinstance(fail_on, str) or fail_on not in SEVERITY_RANK:
        raise _fail(f"{source} findings", f"fail_on_new must be one of high, medium, low, info, off; got {fail_on!r}")
    allow = raw_findings.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise _fail(f"{source} findings", "allow must be a list of finding ids")
    return GateConfig(alpha, min_samples, rules, FindingRule(fail_on, list(allow)), source)


def load_config(path: Optional[Path]) -> GateConfig:
    """Read and validate gate.yaml (safe loader); ``None`` gives the defaults."""
    if path is None:
        return parse_config(DEFAULT_CONFIG, "(defaults)")
    if path.is_dir():
        raise _fail(str(path), "is a folder; --config takes a gate.yaml file")
    return parse_config(read_yaml(path), str(path))


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
        raise ToolError(f"{side} report: {parent}.samples must be a list of numbers; regenerate the report with stallscope diagnose")
    return [float(v) for v in raw if math.isfinite(v)]


def evaluate_metric(rule: MetricRule, base: dict[str, Any], current: dict[str, Any], config: GateConfig, names: tuple[str, str] = ("baseline", "current")) -> RuleResult:
    """Judge one metric rule on two reports."""
    parent, _, statistic = rule.path.rpartition(".")
    sample_parent = bool(_STATISTIC.match(statistic)) and (
        parent == "summary.step_time_ms" or isinstance(resolve(base, f"{parent}.samples"), list) or isinstance(resolve(current, f"{parent}.samples"), list)
    )
    if sample_parent and rule.test != "threshold":
        return _evaluate_samples(rule, parent, statistic, base, current, config, names)
    return _evaluate_scalar(rule, base, current, names)


def _result(rule: MetricRule, kind: str, status: str, message: str, **kw: Any) -> RuleResult:
    return RuleResult(rule.name, kind, status, message, metric=rule.path, threshold=rule.threshold_text, **kw)


def _beyond(rule: MetricRule, worse_pct: float, worse_abs: float) -> bool:
    if rule.max_regression_pct is not None:
        return worse_pct > rule.max_regression_pct
    return worse_abs > float(rule.max_regression_abs or 0.0)


def _evaluate_samples(rule: MetricRule, parent: str, statistic: str, base: dict[str, Any], current: dict[str, Any], config: GateConfig, names: tuple[str, str]) -> RuleResult:
    from analyzers.gate.stats import compare_samples

    sides = [_samples(base, parent, names[0]), _samples(current, parent, names[1])]
    for side, samples in zip(names, sides):
        if samples is None:
            raise ToolError(f"{side} report has no per-step samples at {parent}.samples (rule {rule.name!r}); regenerate it with stallscope diagnose, which keeps them")
    b, c = sides
    test = rule.test or ("mann-whitney" if statistic in ("median", "mean") else "bootstrap")
    if min(len(b), len(c)) < config.min_samples:
        return _result(rule, "samples", "inconclusive", f"too few samples ({len(b)} vs {len(c)}, need {config.min_samples} per side); run more steps (stallscope profile times every step of the run)", test=test, n_base=len(b), n_current=len(c))
    cmp = compare_samples(b, c, statistic, test, rule.lower_is_better, config.alpha)
    worse_abs = (cmp.current_value - cmp.base_value) * (1 if rule.lower_is_better else -1)
    common = dict(test=test, base=cmp.base_value, current=cmp.current_value, change_pct=cmp.change_pct, ci_ratio=cmp.ci_ratio, n_base=cmp.n_base, n_current=cmp.n_current)
    better_abs, better_pct = -worse_abs, -cmp.worse_pct
    if _beyond(rule, cmp.worse_pct, worse_abs):
        if cmp.p_worse < config.alpha:
            return _result(rule, "samples", "regression", f"{statistic} {cmp.change_pct:+.2f}% (beyond {rule.threshold_text}, p={cmp.p_worse:.2g})", p_value=cmp.p_worse, **common)
        return _result(rule, "samples", "pass", f"{statistic} {cmp.change_pct:+.2f}% but not significant (p={cmp.p_worse:.2g} >= {config.alpha:g})", p_value=cmp.p_worse, **common)
    if _beyond(rule, better_pct, better_abs) and cmp.p_better < config.alpha:
        return _result(rule, "samples", "improvement", f"{statistic} {cmp.change_pct:+.2f}% (better, p={cmp.p_better:.2g})", p_value=cmp.p_better, **common)
    return _result(rule, "samples", "pass", f"{statistic} {cmp.change_pct:+.2f}% (within {rule.threshold_text})", p_value=cmp.p_worse, **common)


def _evaluate_scalar(rule: MetricRule, base: dict[str, Any], current: dict[str, Any], names: tuple[str, str]) -> RuleResult:
    values = [resolve(base, rule.path), resolve(current, rule.path)]
    if values[0] is _MISSING and values[1] is _MISSING:
        if not rule.required:
            return _result(rule, "threshold", "skipped", f"{rule.path} is in neither report (required: false)", test="threshold")
        known = _numbers_in(base) + _numbers_in(current)
        close = difflib.get_close_matches(rule.path, known, n=1)
        hint = f"did you mean {close[0]}?" if close else "check the path against the report"
        raise ToolError(f"gate rule {rule.name!r}: metric path {rule.path} is in neither report; {hint}")
    for side, value in zip(names, values):
        if value is _MISSING:
            return _result(rule, "threshold", "inconclusive", f"{rule.path} is missing from the {side} report", test="threshold")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ToolError(f"gate rule {rule.name!r}: {rule.path} in the {side} report is not a number ({type(value).__name__}); point the rule at a number")
    b, c = float(values[0]), float(values[1])
    sign = 1.0 if rule.lower_is_better else -1.0
    worse_abs = (c - b) * sign
    change = (c / b - 1.0) * 100.0 if b else (0.0 if c == b else math.inf)
    worse_pct = change * sign if b else (math.inf if worse_abs > 0 else -math.inf if worse_abs < 0 else 0.0)
    common = dict(test="threshold", base=b, current=c, change_pct=change)
    delta = f"{c - b:+.4g}" if rule.max_regression_abs is not None else f"{change:+.2f}%"
    if _beyond(rule, worse_pct, worse_abs):
        return _result(rule, "threshold", "regression", f"{delta} (beyond {rule.threshold_text}; single numbers, no samples)", **common)
    if _beyond(rule, -worse_pct, -worse_abs):
        return _result(rule, "threshold", "improvement", f"{delta} (better)", **common)
    return _result(rule, "threshold", "pass", f"{delta} (within {rule.threshold_text})", **common)


def _findings_of(report: dict[str, Any], side: str) -> list[Any]:
    found = report.get("findings")
    if found is None:
        return []
    if not isinstance(found, list):
        raise ToolError(f"{side} report: findings must be a list, got {type(found).__name__}; regenerate the report with stallscope diagnose")
    return found


def evaluate_findings(rule: FindingRule, base: dict[str, Any], current: dict[str, Any]) -> RuleResult:
    """Fail when the current report has a finding the baseline lacks, at or above the severity."""
    if rule.fail_on_new is None:
        return RuleResult(rule.name, "findings", "skipped", "finding rule turned off (fail_on_new: off)")
    base_ids = {str(f.get("id")) for f in _findings_of(base, "baseline") if isinstance(f, dict)}
    floor = SEVERITY_RANK[rule.fail_on_new]
    new, allowed = [], []
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
    return RuleResult(rule.name, "findings", "pass", f"no new finding at or above {rule.fail_on_new}{note}", new_findings=[])
