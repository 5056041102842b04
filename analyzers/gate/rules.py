"""gate.yaml: the rules a report is held to, their validation, and how each rule is judged.

Schema (every key optional; without a file the defaults below apply)::

    schema_version: 1
    alpha: 0.01            # significance level of the one-sided tests
    min_samples: 20        # per side, for rules on per-step samples; fewer -> inconclusive
    run_to_run_cv_pct: 2.5 # assumed run-to-run CV when too few runs to measure it (one run per side)
    baseline_runs: 20      # how many runs --update-baseline keeps in a baseline folder
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

How each rule is judged on two reports lives in :mod:`analyzers.gate.evaluate`, the variance
models behind rules on per-step samples in :mod:`analyzers.gate.variance`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from stallscope.analyzers.gate.results import RuleResult
from stallscope.analyzers.gate.variance import DEFAULT_RUN_CV_PCT
from stallscope.profiler.common import ToolError, read_yaml

__all__ = [
    "ALIASES",
    "DEFAULT_CONFIG",
    "FindingRule",
    "GateConfig",
    "MetricRule",
    "RuleResult",
    "load_config",
    "normalize_path",
    "parse_config",
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
STATISTIC = re.compile(r"^(median|mean|p\d{1,2})$")
_CONFIG_KEYS = {"schema_version", "alpha", "min_samples", "run_to_run_cv_pct", "baseline_runs", "rules", "findings"}
_RULE_KEYS = {"metric", "name", "direction", "max_regression_pct", "max_regression_abs", "test", "required"}
_FINDING_KEYS = {"fail_on_new", "allow"}

DEFAULT_CONFIG: dict[str, Any] = {
    "schema_version": 1,
    "alpha": 0.01,
    "min_samples": 20,
    "run_to_run_cv_pct": DEFAULT_RUN_CV_PCT,
    "baseline_runs": 20,
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
    run_to_run_cv_pct: float = DEFAULT_RUN_CV_PCT
    baseline_runs: int = 20


def _fail(where: str, what: str) -> ToolError:
    return ToolError(f"{where}: {what}")


def _number(value: Any, where: str, key: str, minimum: float = 0.0, maximum: float = math.inf) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not math.isfinite(value))  # a huge int overflows isfinite
        or not minimum <= value <= maximum
    ):
        bounds = f">= {minimum:g}" if maximum == math.inf else f"in [{minimum:g}, {maximum:g}]"
        raise _fail(where, f"{key} must be a number {bounds}, got {value!r}; fix gate.yaml")
    return float(value)


def normalize_path(metric: str, where: str) -> str:
    """Turn an alias or a dotted path (optionally relative to ``summary``) into a root path."""
    if metric in ALIASES:
        return ALIASES[metric]
    parts = metric.split(".")
    if not metric or not all(_SEGMENT.match(p) for p in parts):
        raise _fail(
            where, f"metric {metric!r} is not an alias or a dotted report path; use e.g. summary.step_time_ms.median"
        )
    if parts[0] not in REPORT_KEYS:
        parts = ["summary", *parts]
    if parts[0] in ("schema_version", "tool", "source", "environment"):
        raise _fail(
            where, f"metric {metric!r} is not a performance number; pick a path under summary, top_kernels or per_rank"
        )
    if parts[:2] == ["summary", "step_time_ms"] and (len(parts) != 3 or not STATISTIC.match(parts[2])):
        raise _fail(
            where,
            f"metric {metric!r}: step_time_ms takes one of median, mean, p10..p99 (e.g. summary.step_time_ms.p90)",
        )
    if parts[:2] == ["summary", "breakdown_pct"] and (len(parts) != 3 or not parts[2].endswith("_pct")):
        raise _fail(
            where, f"metric {metric!r}: breakdown_pct entries end in _pct (e.g. summary.breakdown_pct.data_wait_pct)"
        )
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
        raise _fail(source, "must be a mapping with keys rules, findings, alpha, min_samples, run_to_run_cv_pct")
    unknown = set(data) - _CONFIG_KEYS
    if unknown:
        raise _fail(source, f"unknown key {sorted(map(str, unknown))[0]!r}; allowed: {', '.join(sorted(_CONFIG_KEYS))}")
    if data.get("schema_version", 1) != 1:
        raise _fail(source, f"schema_version {data.get('schema_version')!r} is not supported (this stallscope reads 1)")
    alpha = _number(data.get("alpha", DEFAULT_CONFIG["alpha"]), source, "alpha", 1e-9, 0.5)
    min_samples = data.get("min_samples", DEFAULT_CONFIG["min_samples"])
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 5:
        raise _fail(source, f"min_samples must be an integer >= 5, got {min_samples!r}")
    run_cv = _number(
        data.get("run_to_run_cv_pct", DEFAULT_CONFIG["run_to_run_cv_pct"]), source, "run_to_run_cv_pct", 0.0, 50.0
    )
    keep = data.get("baseline_runs", DEFAULT_CONFIG["baseline_runs"])
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= 1000:
        raise _fail(source, f"baseline_runs must be an integer in [1, 1000], got {keep!r}")
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
    return GateConfig(alpha, min_samples, rules, FindingRule(fail_on, list(allow)), source, run_cv, keep)


def load_config(path: Optional[Path]) -> GateConfig:
    """Read and validate gate.yaml (safe loader); ``None`` gives the defaults."""
    if path is None:
        return parse_config(DEFAULT_CONFIG, "(defaults)")
    if path.is_dir():
        raise _fail(str(path), "is a folder; --config takes a gate.yaml file")
    return parse_config(read_yaml(path), str(path))
