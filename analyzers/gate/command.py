"""``stallscope gate``: load two sides, judge every rule, write the verdict everywhere asked.

BASE and CURRENT are whatever :func:`analyzers.inputs.open_report` opens: report files (YAML or
JSON, as ``stallscope diagnose -o`` writes them), run directories or traces, diagnosed on the
spot; or a folder of report files, one per run (:mod:`analyzers.gate.runs`), which lets the
gate measure between-run variance.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from stallscope.analyzers.gate.evaluate import evaluate_findings, evaluate_metric
from stallscope.analyzers.gate.fingerprint import compare_environments
from stallscope.analyzers.gate.rules import GateConfig, load_config
from stallscope.analyzers.gate.runs import (
    add_to_baseline_folder,
    load_report,
    load_side,
    pool_reports,
)
from stallscope.analyzers.gate.verdict import Verdict
from stallscope.analyzers.report import SCHEMA_VERSION as SUPPORTED_REPORT_SCHEMA
from stallscope.profiler import runformat
from stallscope.profiler.common import ToolError, atomic_write_bytes, check_outputs, write_yaml

__all__ = ["SUPPORTED_REPORT_SCHEMA", "emit", "gate_command", "judge", "load_report", "update_baseline"]


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
    runs: Optional[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = None,
    rounds: bool = False,
) -> Verdict:
    """Evaluate every rule of ``config`` on two report dicts (each side pooled over its runs).

    ``runs``: each side's per-run reports when a side has several; rules on per-step samples
    then measure between-run variance (``rounds``: they are the interleaved rounds of gate ab).
    """
    names = ("baseline", "current")
    every = [(side, r) for side, reports in zip(names, runs or ([base], [current]), strict=True) for r in reports]
    for side, report in [*zip(names, (base, current), strict=True), *every]:
        if not isinstance(report, dict) or not isinstance(report.get("summary"), dict):
            raise ToolError(f"{side} report has no summary mapping; regenerate it with stallscope diagnose")
    for side, report in every:
        _check_schemas(base, report, ("baseline", side))
    _check_schemas(base, current, names)
    results = [evaluate_metric(rule, base, current, config, names, runs, rounds) for rule in config.rules]
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


def update_baseline(current: Path, baseline: Path, keep: int = 20) -> Path:
    """Accept CURRENT as the new baseline: validated, then written atomically to BASELINE; into
    a baseline folder (an existing directory that is not a run directory) as one more run,
    keeping the newest ``keep`` runs."""
    if baseline.is_dir() and not runformat.looks_like_run_dir(baseline):
        return add_to_baseline_folder(current, baseline, keep)
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
        keep = load_config(config).baseline_runs
        written = update_baseline(current, baseline, keep)
        if not quiet:
            print(f"stallscope gate: baseline updated: {written} (from {current})")
        return 0
    cfg = load_config(config)
    base_runs, current_runs = load_side(baseline, "baseline"), load_side(current, "current")
    several = len(base_runs) > 1 or len(current_runs) > 1
    verdict = judge(
        pool_reports(base_runs, 0, False) if len(base_runs) > 1 else base_runs[0],
        pool_reports(current_runs, 0, True) if len(current_runs) > 1 else current_runs[0],
        cfg,
        baseline_name=str(baseline),
        current_name=str(current),
        allow_env_change=allow_env_change,
        runs=(base_runs, current_runs) if several else None,
    )
    return emit(verdict, output, junit, quiet)
