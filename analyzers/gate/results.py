"""The judgement of one gate rule, as every verdict face (console, YAML, JUnit, markdown) reads it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["RuleResult"]


@dataclass
class RuleResult:
    """The judgement of one rule: status is pass, improvement, regression, inconclusive or skipped.

    Rules on per-step samples also say which variance model judged them (``variance_model``,
    see :mod:`analyzers.gate.variance`, with ``variance`` the sentence behind it), how many runs
    each side had, the test's degrees of freedom, ``run_cv_pct`` (how much one run's statistic
    varies: measured between runs, or the assumed value), and ``flagged_from_pct``: the smallest
    change towards worse that this comparison could have called a regression (threshold included).
    """

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
    variance_model: str = ""
    variance: str = ""
    runs_base: Optional[int] = None
    runs_current: Optional[int] = None
    df: Optional[float] = None
    flagged_from_pct: Optional[float] = None
    run_cv_pct: Optional[float] = None

    @property
    def failed(self) -> bool:
        return self.status == "regression"

    def to_dict(self) -> dict[str, Any]:
        """The rule's entry in the YAML verdict."""
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
        if self.variance_model:
            out["variance_model"], out["variance"] = self.variance_model, self.variance
        if self.runs_base is not None:
            out["runs_base"], out["runs_current"] = self.runs_base, self.runs_current
        if self.df is not None:
            out["df"] = _round(self.df, 2)
        if self.flagged_from_pct is not None:
            out["flagged_from_pct"] = _round(self.flagged_from_pct, 2)
        if self.run_cv_pct is not None:
            out["run_cv_pct"] = _round(self.run_cv_pct, 3)
        if self.kind == "findings":
            out["new_findings"] = list(self.new_findings)
        return out


def _round(value: float, digits: int = 4) -> float:
    return float(round(value, digits)) if math.isfinite(value) else float(value)
