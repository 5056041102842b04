"""``stallscope gate``: load two reports, judge every rule, write the verdict everywhere asked.

BASE and CURRENT are whatever :func:`analyzers.inputs.open_report` opens: report files (YAML or
JSON, as ``stallscope diagnose -o`` writes them), run directories or traces, diagnosed on the
spot.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from stallscope.analyzers.gate.evaluate import evaluate_findings, evaluate_metric
from stallscope.analyzers.gate.fingerprint import clocks_from_run, compare_environments
from stallscope.analyzers.gate.rules import GateConfig, load_config
from stallscope.analyzers.gate.verdict import Verdict
from stallscope.analyzers.inputs import open_report
from stallscope.analyzers.report import SCHEMA_VERSION as SUPPORTED_REPORT_SCHEMA
from stallscope.profiler.common import ToolError, atomic_write_bytes, check_outputs, write_yaml

__all__ = ["SUPPORTED_REPORT_SCHEMA", "emit", "gate_command", "judge", "load_report", "update_baseline"]


def load_report(target: Path, side: str) -> dict[str, Any]:
    """The report of ``target`` (:func:`open_report`, any schema version: :func:`judge` compares
    them), errors prefixed with ``side``; a run directory's environment gains its NVML clocks."""
    target = Path(target)
    try:
        report, ctx = open_report(target, check_version=False)
    except ToolError as exc:
        raise ToolError(f"{side} {exc}", exc.exit_code) from None
    if ctx is not None and target.is_dir() and isinstance(report.get("environment"), dict):
        clocks = clocks_from_run(target)
        if clocks:
            report["environment"].setdefault("clocks", clocks)
    return report


def _check_schemas(base: dict[str, Any], current: dict[str, Any], names: tuple[str, str]) -> None:
    vb, vc = base.get("schema_version"), current.get("schema_version")
    if vb != vc:
        raise ToolError(
            f"reports have different schema versions ({names[0]}: {vb}, {names[1]}: {vc}); regenerate the baseline with this stallscope (stallscope gate --update-baseline)"
        )
    if vb != SUPPORTED_REPORT_SCHEMA:
        raise ToolError(
            f"report schema_version {vb!r} is not supported (this stallscope reads {SUPPORTED_REPORT_SCHEMA}); upgrade stallscope or regenerate the reports"
        )


def judge(
    base: dict[str, Any],
    current: dict[str, Any],
    config: GateConfig,
    *,
    baseline_name: str,
    current_name: str,
    allow_env_change: bool = False,
    mode: str = "reports",
    extra: Optional[dict[str, Any]] = None,
) -> Verdict:
    """Evaluate every rule of ``config`` on two report dicts."""
    names = ("baseline", "current")
    for side, report in zip(names, (base, current), strict=True):
        if not isinstance(report, dict) or not isinstance(report.get("summary"), dict):
            raise ToolError(f"{side} report has no summary mapping; regenerate it with stallscope diagnose")
    _check_schemas(base, current, names)
    results = [evaluate_metric(rule, base, current, config, names) for rule in config.rules]
    results.append(evaluate_findings(config.findings, base, current))
    env = compare_environments(base.get("environment"), current.get("environment"), allow_env_change)
    return Verdict(results, env, baseline_name, current_name, config.source, config.alpha, mode, extra or {})


def emit(verdict: Verdict, output: Optional[Path], junit: Optional[Path], quiet: bool = False) -> int:
    """Show the verdict, write the files asked for and the GitHub step summary; the exit code."""
    if not quiet:
        from rich.console import Console  # rich only for console output

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
            raise ToolError(
                f"GITHUB_STEP_SUMMARY={summary}: cannot append ({exc.__class__.__name__}); check the path"
            ) from None
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
    if not update:
        check_outputs({"--output": output, "--junit": junit}, (current, baseline, config))
    if update:
        written = update_baseline(current, baseline)
        if not quiet:
            print(f"stallscope gate: baseline updated: {written} (from {current})")
        return 0
    cfg = load_config(config)
    base_report = load_report(baseline, "baseline")
    current_report = load_report(current, "current")
    verdict = judge(
        base_report,
        current_report,
        cfg,
        baseline_name=str(baseline),
        current_name=str(current),
        allow_env_change=allow_env_change,
    )
    return emit(verdict, output, junit, quiet)
