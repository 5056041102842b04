"""The gate's verdict and its four faces: console (``__rich__``), YAML, JUnit XML, markdown.

Exit codes: 0 pass, 1 regression, 3 inconclusive (too few samples, a missing metric on one
side, a different environment without ``--allow-env-change``, or a change beyond the threshold
that one run a side cannot separate from run-to-run noise), 2 usage or tool error (raised as
:class:`profiler.common.ToolError` before a verdict exists).

A regression wins over inconclusive rules (a rule that fails, fails), except when the
environments differ: then nothing measured can be blamed on the code, and the verdict is
inconclusive unless the change is allowed.

Every face names the variance model the rules on per-step samples were judged under
(:mod:`analyzers.gate.variance`): measured between runs, or assumed because one run per side
cannot show it.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from stallscope.analyzers.gate.fingerprint import EnvironmentCheck
from stallscope.analyzers.gate.results import RuleResult
from stallscope.analyzers.gate.variance import ASSUMED_RUN_CV
from stallscope.profiler.common import __version__, atomic_write_text, write_yaml

__all__ = ["EXIT_INCONCLUSIVE", "EXIT_PASS", "EXIT_REGRESSION", "Verdict"]

EXIT_PASS, EXIT_REGRESSION, EXIT_INCONCLUSIVE = 0, 1, 3
VERDICT_SCHEMA_VERSION = 1
_STYLE = {
    "pass": "green",
    "improvement": "bold green",
    "regression": "bold red",
    "inconclusive": "yellow",
    "skipped": "dim",
}
_MARK = {"pass": "✅", "improvement": "🚀", "regression": "❌", "inconclusive": "⚠️", "skipped": "⏭️"}


@dataclass
class Verdict:
    """All rule results for one comparison, plus the environment check."""

    results: list[RuleResult]
    environment: EnvironmentCheck
    baseline: str
    current: str
    config: str = "(defaults)"
    alpha: float = 0.01
    mode: str = "reports"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def env_blocks(self) -> bool:
        return not self.environment.matches and not self.environment.allowed

    @property
    def status(self) -> str:
        """pass, regression or inconclusive."""
        if self.env_blocks:
            return "inconclusive"
        if any(r.status == "regression" for r in self.results):
            return "regression"
        if any(r.status == "inconclusive" for r in self.results):
            return "inconclusive"
        return "pass"

    @property
    def exit_code(self) -> int:
        return {"pass": EXIT_PASS, "regression": EXIT_REGRESSION, "inconclusive": EXIT_INCONCLUSIVE}[self.status]

    def reason(self) -> str:
        """One line that says why the verdict is what it is."""
        if self.env_blocks:
            return (
                "environment differs ("
                + "; ".join(self.environment.differences)
                + "); rerun on the baseline's machine or pass --allow-env-change"
            )
        failed = [r.name for r in self.results if r.status == "regression"]
        if failed:
            return "regression in " + ", ".join(failed)
        unsure = [r for r in self.results if r.status == "inconclusive"]
        if unsure:
            names = ", ".join(r.name for r in unsure)
            if any(r.variance_model == ASSUMED_RUN_CV for r in unsure):
                more = "run more rounds" if self.mode == "paired" else "store a baseline folder or use gate ab"
                return f"inconclusive: {names} (too few runs to separate the change from run-to-run noise; {more})"
            return "inconclusive: " + names
        return "no rule regressed"

    def environment_result(self) -> RuleResult:
        env = self.environment
        if env.matches:
            compared = sorted(set(env.base) & set(env.current))
            msg = ("same " + ", ".join(compared)) if compared else "; ".join(env.notes)
        else:
            msg = "; ".join(env.differences) + (" (allowed by --allow-env-change)" if env.allowed else "")
        return RuleResult("environment", "environment", env.status, msg)

    def all_results(self) -> list[RuleResult]:
        return [self.environment_result(), *self.results]

    def paired_line(self) -> str:
        """Paired mode in one line: rounds and each round's median step time per side."""
        x = self.extra
        fmt = lambda values: ", ".join("-" if v is None else f"{v:.4g}" for v in values or [])  # noqa: E731
        return (
            f"Paired: {x.get('rounds')} rounds ({x.get('order')}), first {x.get('warmup_steps_dropped_per_run')} steps of each run dropped; "
            f"median step ms per round: base [{fmt(x.get('base_round_medians_ms'))}], head [{fmt(x.get('head_round_medians_ms'))}]"
        )

    def variance_model(self) -> str:
        """The variance model(s) of the rules on per-step samples, "none" without such rules."""
        models = list(dict.fromkeys(r.variance_model for r in self.results if r.variance_model))
        return ", ".join(models) or "none"

    def variance_line(self) -> str:
        """One line that says how between-run variance was handled."""
        texts = list(dict.fromkeys(r.variance for r in self.results if r.variance))
        return "; ".join(texts) or "no rule on per-step samples"

    def to_dict(self) -> dict[str, Any]:
        """The YAML verdict (``--output``)."""
        return {
            "schema_version": VERDICT_SCHEMA_VERSION,
            "tool": {"name": "stallscope", "version": __version__},
            "verdict": self.status,
            "exit_code": self.exit_code,
            "reason": self.reason(),
            "mode": self.mode,
            "baseline": self.baseline,
            "current": self.current,
            "config": self.config,
            "alpha": self.alpha,
            "variance_model": self.variance_model(),
            "variance": self.variance_line(),
            **({"paired": self.extra} if self.extra else {}),
            "environment": self.environment.to_dict(),
            "rules": [r.to_dict() for r in self.results],
        }

    def write_yaml(self, path: Path) -> Path:
        return write_yaml(path, self.to_dict())

    def to_junit(self) -> str:
        """JUnit XML: one testcase per rule; a regression is a failure, inconclusive is skipped."""
        cases = self.all_results()
        failures = sum(r.status == "regression" for r in cases)
        skipped = sum(r.status in ("inconclusive", "skipped") for r in cases)
        counts = {
            "tests": str(len(cases)),
            "failures": str(failures),
            "errors": "0",
            "skipped": str(skipped),
            "time": "0",
        }
        root = ET.Element("testsuites", {"name": "stallscope gate", **counts})
        suite = ET.SubElement(root, "testsuite", {"name": "stallscope gate", **counts})
        props = ET.SubElement(suite, "properties")
        for name, value in (
            ("verdict", self.status),
            ("baseline", self.baseline),
            ("current", self.current),
            ("config", self.config),
            ("variance_model", self.variance_model()),
            ("variance", self.variance_line()),
        ):
            ET.SubElement(props, "property", {"name": name, "value": value})
        for r in cases:
            case = ET.SubElement(
                suite, "testcase", {"classname": f"stallscope.gate.{r.kind}", "name": r.name, "time": "0"}
            )
            if r.status == "regression":
                ET.SubElement(case, "failure", {"message": r.message, "type": "PerformanceRegression"}).text = _detail(
                    r
                )
            elif r.status in ("inconclusive", "skipped"):
                ET.SubElement(case, "skipped", {"message": f"{r.status}: {r.message}"})
            else:
                ET.SubElement(case, "system-out").text = f"{r.status}: {r.message}"
        ET.indent(root)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

    def write_junit(self, path: Path) -> Path:
        return atomic_write_text(path, self.to_junit())

    def to_markdown(self) -> str:
        """GitHub-flavoured markdown for ``$GITHUB_STEP_SUMMARY``."""
        head = {"pass": "✅ pass", "regression": "❌ regression", "inconclusive": "⚠️ inconclusive"}[self.status]
        lines = [
            f"### stallscope gate: {head}",
            "",
            f"{_md(self.reason())}",
            "",
            f"Baseline `{self.baseline}` vs current `{self.current}` ({self.mode}; config {_md(self.config)}; alpha {self.alpha:g}).",
            "",
            "| Rule | Baseline | Current | Change | Threshold | p-value | Result |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.all_results():
            lines.append(
                f"| {_md(r.name)} | {_num(r.base)} | {_num(r.current)} | {_pct(r.change_pct)} | {_md(r.threshold) or '-'} "
                f"| {_p(r.p_value)} | {_MARK[r.status]} {r.status}: {_md(r.message)} |"
            )
        lines += ["", f"Variance ({self.variance_model()}): {_md(self.variance_line())}."]
        if self.extra:
            lines += ["", _md(self.paired_line())]
        if self.environment.notes:
            lines += ["", "Notes: " + _md("; ".join(self.environment.notes))]
        return "\n".join(lines) + "\n"

    def append_step_summary(self, path: Path) -> None:
        """Append the markdown to the GitHub step summary file (GitHub appends too)."""
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(self.to_markdown())

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(title="stallscope gate", title_justify="left", expand=False)
        table.add_column("rule", no_wrap=True, max_width=34, overflow="ellipsis")
        for col in ("baseline", "current", "change", "threshold", "p"):
            table.add_column(col, justify="right", no_wrap=True)
        table.add_column("result", no_wrap=True)
        table.add_column("why", ratio=1, min_width=20)
        for r in self.all_results():
            table.add_row(
                r.name,
                _num(r.base),
                _num(r.current),
                _pct(r.change_pct),
                r.threshold or "-",
                _p(r.p_value),
                Text(r.status, style=_STYLE[r.status]),
                r.message,
            )
        style = {"pass": "bold green", "regression": "bold red", "inconclusive": "bold yellow"}[self.status]
        line = Text.assemble(
            ("verdict: ", "bold"), (self.status, style), f"  (exit {self.exit_code}) - {self.reason()}"
        )
        variance = Text(f"variance ({self.variance_model()}): {self.variance_line()}", style="dim")
        parts: list[Any] = [table, variance, line]
        if self.extra:
            parts.insert(1, Text(self.paired_line(), style="dim"))
        return Group(*parts)


def _detail(r: RuleResult) -> str:
    bits = [f"{k}={v}" for k, v in r.to_dict().items() if k not in ("name", "kind", "status")]
    return "\n".join(bits)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _num(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:+.2f}%"


def _p(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2g}"
