"""``stallscope gate``: load two reports, judge every rule, write the verdict everywhere asked.

BASE and CURRENT are report files (YAML or JSON, as ``stallscope diagnose -o`` writes them) or
run directories, which are diagnosed on the spot with :func:`analyzers.report.build_report`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from stallscope.profiler.common import ToolError, atomic_write_bytes, read_yaml, write_yaml

__all__ = ["SUPPORTED_REPORT_SCHEMA", "gate_command", "judge", "load_report", "update_baseline"]

SUPPORTED_REPORT_SCHEMA = 1


def load_report(target: Path, side: str) -> dict[str, Any]:
    """Read a report file, or diagnose a run directory, and check it is a report we can gate."""
    if not target.exists():
        raise ToolError(f"{side} {target}: no such file or folder; pass a report (.yaml/.json) or a run directory")
    if target.is_dir():
        try:
            from stallscope.analyzers.report import build_report
        except ImportError as exc:
            raise ToolError(f"{side} {target}: cannot diagnose run directories here ({exc}); pass a report file from stallscope diagnose -o") from None
        report: Any = build_report(target)
        if isinstance(report, dict) and isinstance(report.get("environment"), dict):
            from stallscope.analyzers.gate.fingerprint import clocks_from_run

            clocks = clocks_from_run(target)
            if clocks:
                report["environment"].setdefault("clocks", clocks)
    elif target.suffix == ".json":
        try:
            report = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ToolError(f"{side} {target}: not a readable JSON report ({exc.__class__.__name__}); regenerate it with stallscope diagnose") from None
    else:
        report = read_yaml(target)
    if hasattr(report, "to_dict") and not isinstance(report, dict):
        report = report.to_dict()
    if not isinstance(report, dict) or "schema_version" not in report or not isinstance(report.get("summary"), dict) or report.get("kind", "stallscope-report") != "stallscope-report":
        raise ToolError(f"{side} {target}: not a stallscope report (needs schema_version and summary); make one with stallscope diagnose RUN -o report.yaml")
    return report


def _check_schemas(base: dict[str, Any], current: dict[str, Any], names: tuple[str, str]) -> None:
    vb, vc = base.get("schema_version"), current.get("schema_version")
    if vb != vc:
        raise ToolError(f"reports have different schema versions ({names[0]}: {vb}, {names[1]}: {vc}); regenerate the baseline with this stallscope (stallscope gate --update-baseline)")
    if vb != SUPPORTED_REPORT_SCHEMA:
        raise ToolError(f"report schema_version {vb!r} is not supported (this stallscope reads {SUPPORTED_REPORT_SCHEMA}); upgrade stallscope or regenerate the reports")


def judge(base: dict[str, Any], current: dict[str, Any], config: Any, *, baseline_name: str, current_name: str, allow_env_change: bool = False, mode: str = "reports", extra: Optional[dict[str, Any]] = None) -> Any:
    """Evaluate every rule of ``config`` (a :class:`GateConfig`) on two report dicts: a Verdict."""
    from stallscope.analyzers.gate.fingerprint import compare_environments
    from stallscope.analyzers.gate.evaluate import evaluate_findings, evaluate_metric
    from stallscope.analyzers.gate.verdict import Verdict

    names = ("baseline", "current")
    for side, report in zip(names, (base, current)):
        if not isinstance(report, dict) or not isinstance(report.get("summary"), dict):
            raise ToolError(f"{side} report has no summary mapping; regenerate it with stallscope diagnose")
    _check_schemas(base, current, names)
    results = [evaluate_metric(rule, base, current, config, names) for rule in config.rules]
    results.append(evaluate_findings(config.findings, base, current))
    env = compare_environments(base.get("environment"), current.get("environment"), allow_env_change)
    return Verdict(results, env, baseline_name, current_name, config.source, config.alpha, mode, extra or {})


def emit(verdict: Any, output: Optional[Path], junit: Optional[Path], quiet: bool = False) -> int:
    """Show the verdict, write the files asked for and the GitHub step summary; the exit code."""
    if not quiet:
        from rich.console import Console

        import sys

        Console(width=None if sys.stdout.isatty() else 140).print(verdict)
    if output is not None:
        verdict.write_yaml(output)
    if junit is not None:
        verdict.write_junit(junit)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            verdict.append_step_summary(Path(summary))
        except OSError as exc:
            raise ToolError(f"GITHUB_STEP_SUMMARY={summary}: cannot append ({exc.__class__.__name__}); check the path") from None
    return int(verdict.exit_code)


def update_baseline(current: Path, baseline: Path) -> Path:
    """Accept CURRENT as the new baseline: validated, then written atomically to BASELINE."""
    report = load_report(current, "current")
    if current.is_file() and current.suffix == baseline.suffix:
        return atomic_write_bytes(baseline, current.read_bytes())
    if baseline.suffix == ".json":
        return atomic_write_bytes(baseline, json.dumps(report, indent=1).encode("utf-8"))
    return write_yaml(baseline, report)


def gate_command(
    current: Path,
    baseline: Path,
    config: Optional[Path] = None,
    output: Optional[Path] = None,
    junit: Optional[Path] = None,
    allow_env_change: bool = False,
    update: bool = False,
    quiet: bool = False,
) -> int:
    """Compare CURRENT with BASELINE under gate.yaml; return 0 pass, 1 regression, 3 inconclusive.

    With ``update``, CURRENT becomes the baseline (atomic copy) and the exit code is 0.
    """
    from stallscope.analyzers.gate.rules import load_config

    if update:
        written = update_baseline(current, baseline)
        if not quiet:
            print(f"stallscope gate: baseline updated: {written} (from {current})")
        return 0
    cfg = load_config(config)
    base_report = load_report(baseline, "baseline")
    current_report = load_report(current, "current")
    verdict = judge(base_report, current_report, cfg, baseline_name=str(baseline), current_name=str(current), allow_env_change=allow_env_change)
    return emit(verdict, output, junit, quiet)
