"""The runs on each side of a gate: one report, a folder of reports, or the rounds of ``gate ab``.

A side with several runs lets the gate measure between-run variance (:mod:`analyzers.gate.variance`).
A *baseline folder* is a directory of report files (``stallscope diagnose -o``), one per run;
``--update-baseline`` with such a folder adds CURRENT as a new ``run-<UTC time>.yaml`` and keeps
the newest ``baseline_runs`` (gate.yaml, default 20) of the files it named that way. For the
scalar rules and findings a side is pooled into one report (:func:`pool_reports`).
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from stallscope.analyzers.gate.fingerprint import clocks_from_run
from stallscope.analyzers.inputs import is_report_file, open_report
from stallscope.analyzers.stats import summary
from stallscope.profiler import runformat
from stallscope.profiler.common import ToolError, atomic_write_bytes, write_yaml

__all__ = ["add_to_baseline_folder", "is_report_folder", "load_report", "load_side", "pool_reports", "trimmed"]

_RUN_PREFIX = "run-"


def load_report(target: Path, side: str) -> dict[str, Any]:
    """The report of ``target`` (:func:`open_report`, any schema version: the gate compares
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


def _report_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_report_file(p))


def is_report_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of report files (a multi-run side), not a run directory."""
    path = Path(path)
    return path.is_dir() and not runformat.looks_like_run_dir(path) and bool(_report_files(path))


def load_side(target: Path, side: str) -> list[dict[str, Any]]:
    """The runs of one side: every report of a report folder (newest name first), else one report."""
    target = Path(target)
    if not is_report_folder(target):
        return [load_report(target, side)]
    return [load_report(p, f"{side} {target}:") for p in reversed(_report_files(target))]


def trimmed(report: dict[str, Any], warmup: int) -> dict[str, Any]:
    """``report`` with the first ``warmup`` per-step samples of ``summary.step_time_ms`` dropped."""
    step = (report.get("summary") or {}).get("step_time_ms")
    if warmup <= 0 or not isinstance(step, dict) or not isinstance(step.get("samples"), list):
        return report
    out = dict(report)
    out["summary"] = dict(report["summary"])
    out["summary"]["step_time_ms"] = dict(step, samples=step["samples"][warmup:])
    return out


def _median_scalars(reports: list[dict], node: Any, path: tuple[str, ...]) -> Any:
    """The first report's tree with every number replaced by its median over the runs."""
    if isinstance(node, dict):
        return {k: _median_scalars(reports, v, (*path, k)) for k, v in node.items()}
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        values = []
        for rep in reports:
            cur: Any = rep
            for key in path:
                cur = cur.get(key) if isinstance(cur, dict) else None
            if isinstance(cur, (int, float)) and not isinstance(cur, bool):
                values.append(float(cur))
        return float(np.median(values)) if values else node
    return node


def pool_reports(reports: list[dict], warmup: int, head_side: bool) -> dict:
    """Merge one side's per-run reports into one report with pooled per-step samples.

    Scalars are the median over runs; findings: the union on the base side, on the head side
    only those seen in more than half of the runs (a flickering finding does not fail the gate).
    """
    if not reports:
        raise ToolError("no runs to pool; --rounds must be at least 1")
    pooled = copy.deepcopy(reports[0])
    pooled["summary"] = _median_scalars(reports, reports[0].get("summary", {}), ())
    chunks = []
    for rep in reports:
        samples = ((rep.get("summary") or {}).get("step_time_ms") or {}).get("samples")
        if not isinstance(samples, list):
            raise ToolError(
                f"report of {rep.get('source', 'a run')} has no per-step samples (summary.step_time_ms.samples); the profiler found no steps"
            )
        chunks.append(np.asarray(samples[warmup:], dtype=np.float64))
    samples = np.concatenate(chunks) if chunks else np.zeros(0)
    step = dict(pooled["summary"].get("step_time_ms") or {})
    step["samples"] = [float(v) for v in samples]
    if samples.size:
        step.update(summary(samples))
    pooled["summary"]["step_time_ms"] = step
    pooled["summary"]["steps"] = int(samples.size)
    seen: dict[str, list[dict]] = {}
    for rep in reports:
        for finding in rep.get("findings") or []:
            if isinstance(finding, dict):
                seen.setdefault(str(finding.get("id")), []).append(finding)
    keep = (lambda n: n * 2 > len(reports)) if head_side else (lambda n: n >= 1)
    pooled["findings"] = [found[0] for found in seen.values() if keep(len(found))]
    return pooled


def add_to_baseline_folder(current: Path, folder: Path, keep: int) -> Path:
    """Write CURRENT's report into a baseline folder as a new run; drop the oldest beyond ``keep``."""
    report = load_report(current, "current")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    suffix = ".json" if current.is_file() and current.suffix.lower() == ".json" else ".yaml"
    target = folder / f"{_RUN_PREFIX}{stamp}{suffix}"
    if suffix == ".json":
        written = atomic_write_bytes(target, json.dumps(report, indent=1).encode("utf-8"))
    else:
        written = write_yaml(target, report)
    ours = [p for p in _report_files(folder) if p.name.startswith(_RUN_PREFIX)]
    for old in ours[: max(0, len(ours) - keep)]:
        old.unlink()
    return written
