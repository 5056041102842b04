"""``stallscope gate ab``: run base and head interleaved (A B A B ...) in one job, then gate.

On a shared CI machine the machine drifts between jobs (clocks, neighbours, thermal state);
two runs minutes apart in one job see the same machine. Each round runs the base command, then
the head command, each under ``stallscope profile --no-diagnose`` (a subprocess, so this module
does not depend on the profiler's internals), diagnoses each run directory, and drops each
run's first ``warmup`` steps. Rules on per-step samples test at the run level, each round's
run being one replicate, so the verdict measures between-run variance from the rounds
(:mod:`analyzers.gate.variance`; with one round it falls back to an assumed run-to-run CV).
Scalars (breakdown shares, peak memory) are the median over rounds. Findings: the base side is
the union over its rounds, the head side keeps findings seen in more than half of its rounds,
so a finding that flickers does not fail the gate.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

from stallscope.analyzers.gate.command import emit, judge, load_report
from stallscope.analyzers.gate.rules import load_config
from stallscope.analyzers.gate.runs import pool_reports, trimmed
from stallscope.profiler.common import ToolError, check_outputs

__all__ = ["ab_command", "pool_reports", "profile_run", "run_rounds"]

Runner = Callable[[Sequence[str], Path, Path], dict]


def _split(cmd: str, option: str) -> list[str]:
    try:
        argv = shlex.split(cmd)
    except ValueError as exc:
        raise ToolError(f"{option} {cmd!r}: cannot split into arguments ({exc}); check the quoting") from None
    if not argv:
        raise ToolError(f"{option} is empty; give the command to run, e.g. {option} 'python train.py'")
    return argv


def profile_run(cmd: Sequence[str], run_dir: Path, log: Path, profile_args: Sequence[str] = ()) -> dict:
    """Run CMD under ``stallscope profile --no-diagnose`` in a subprocess and diagnose the run."""
    argv = [
        sys.executable,
        "-m",
        "stallscope.cli",
        "profile",
        "--no-diagnose",
        "--quiet",
        *profile_args,
        "-o",
        str(run_dir),
        "--",
        *cmd,
    ]
    with open(log, "wb") as fh:
        code = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise ToolError(
            f"{shlex.join(cmd)} exited {code} under stallscope profile ({tail[0][:200]}); full log: {log}", 2
        )
    return load_report(run_dir, f"run {run_dir.name}")


def run_rounds(
    base_cmd: Sequence[str],
    head_cmd: Sequence[str],
    rounds: int,
    workdir: Path,
    runner: Runner,
    announce: Callable[[str], None] = lambda s: None,
) -> tuple[list[dict], list[dict]]:
    """Run A B A B ... ``rounds`` times; return the per-round reports of each side."""
    base: list[dict] = []
    head: list[dict] = []
    for i in range(1, rounds + 1):
        for label, cmd, bucket in (("base", base_cmd, base), ("head", head_cmd, head)):
            run_dir = workdir / f"{label}-{i}"
            announce(f"round {i}/{rounds}: {label}: {shlex.join(cmd)}")
            bucket.append(runner(cmd, run_dir, workdir / f"{label}-{i}.log"))
    return base, head


def ab_command(
    base_cmd: str,
    head_cmd: str,
    rounds: int = 3,
    warmup: int = 2,
    config: Optional[Path] = None,
    output: Optional[Path] = None,
    junit: Optional[Path] = None,
    workdir: Optional[Path] = None,
    profile_args: str = "",
    quiet: bool = False,
    runner: Optional[Runner] = None,
) -> int:
    """Paired gate: exit 0 pass, 1 regression, 3 inconclusive (2 for usage or a failed run)."""

    if rounds < 1:
        raise ToolError(f"--rounds must be at least 1, got {rounds}")
    if warmup < 0:
        raise ToolError(f"--warmup must be >= 0, got {warmup}")
    check_outputs({"--output": output, "--junit": junit}, (config,))
    cfg = load_config(config)
    base_argv, head_argv = _split(base_cmd, "--base-cmd"), _split(head_cmd, "--head-cmd")
    extra_args = _split(profile_args, "--profile-args") if profile_args.strip() else []
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = workdir or Path("stallscope-runs") / f"gate-ab-{stamp}"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolError(
            f"--workdir {workdir}: cannot create ({exc.__class__.__name__}); pick a writable folder"
        ) from None
    run = runner or (lambda cmd, run_dir, log: profile_run(cmd, run_dir, log, extra_args))
    say = (lambda s: None) if quiet else (lambda s: print(f"stallscope gate ab: {s}", file=sys.stderr, flush=True))
    base_reports, head_reports = run_rounds(base_argv, head_argv, rounds, workdir, run, say)
    base, head = pool_reports(base_reports, warmup, False), pool_reports(head_reports, warmup, True)
    extra = {
        "rounds": rounds,
        "order": " ".join("AB" for _ in range(rounds)),
        "warmup_steps_dropped_per_run": warmup,
        "base_cmd": base_cmd,
        "head_cmd": head_cmd,
        "workdir": str(workdir),
        "base_round_medians_ms": [_round_median(r, warmup) for r in base_reports],
        "head_round_medians_ms": [_round_median(r, warmup) for r in head_reports],
    }
    verdict = judge(
        base,
        head,
        cfg,
        baseline_name=f"base: {base_cmd}",
        current_name=f"head: {head_cmd}",
        mode="paired",
        extra=extra,
        runs=([trimmed(r, warmup) for r in base_reports], [trimmed(r, warmup) for r in head_reports]),
        rounds=True,
    )
    return emit(verdict, output, junit, quiet)


def _round_median(report: dict, warmup: int) -> Optional[float]:
    samples = ((report.get("summary") or {}).get("step_time_ms") or {}).get("samples") or []
    rest = samples[warmup:]
    return round(float(np.median(rest)), 4) if rest else None
