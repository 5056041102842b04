"""`stallscope gate ab` logic with an injected runner: order, pooling, verdicts (fast, no subprocesses)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from stallscope.analyzers.gate.paired import ab_command, pool_reports
from stallscope.analyzers.stats import median_rule_decisions
from stallscope.cli import app
from stallscope.profiler.common import ToolError
from tests.test_gate_cli import make_report


class FakeRunner:
    """Stands in for `stallscope profile` + diagnose: a report per run, slower when the command says so."""

    def __init__(
        self, head_factor: float = 1.0, drift_per_run: float = 0.0, run_cv: float = 0.0, seed: int = 0
    ) -> None:
        self.calls: list[str] = []
        self.reports: dict[str, dict] = {}
        self.head_factor, self.drift = head_factor, drift_per_run
        self.offsets = np.random.default_rng(seed).normal(0.0, run_cv, 64)  # each run's own offset

    def __call__(self, cmd: Sequence[str], run_dir: Path, log: Path) -> dict:
        self.calls.append(run_dir.name)
        slow = self.head_factor if "--head" in cmd else 1.0
        machine = (1.0 + self.drift * len(self.calls)) * math.exp(self.offsets[len(self.calls)])  # drift, run offset
        findings = (
            [{"id": "sync-item", "severity": "high", "category": "synchronization"}]
            if ("--head" in cmd and len(self.calls) == 2)
            else []
        )
        self.reports[run_dir.name] = make_report(20.0 * slow * machine, n=40, seed=len(self.calls), findings=findings)
        return self.reports[run_dir.name]


def test_runs_interleave_a_b_and_pool_samples(tmp_path: Path) -> None:
    runner = FakeRunner()
    out = tmp_path / "verdict.yaml"
    code = ab_command(
        "python train.py",
        "python train.py --head",
        rounds=3,
        warmup=5,
        output=out,
        workdir=tmp_path / "runs",
        quiet=True,
        runner=runner,
    )
    assert runner.calls == ["base-1", "head-1", "base-2", "head-2", "base-3", "head-3"]
    verdict = yaml.safe_load(out.read_text())
    assert code == 0 and verdict["verdict"] == "pass" and verdict["mode"] == "paired"
    median = next(r for r in verdict["rules"] if r["name"] == "step_time_median")
    assert median["n_base"] == median["n_current"] == 3 * (40 - 5)
    assert len(verdict["paired"]["base_round_medians_ms"]) == 3 and verdict["paired"]["rounds"] == 3
    assert verdict["paired"]["order"] == "AB AB AB"
    # The head saw a new high finding in one round of three only: a flicker, not a new finding.
    findings = next(r for r in verdict["rules"] if r["kind"] == "findings")
    assert findings["status"] == "pass"


def test_paired_markdown_shows_the_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code = ab_command(
        "python train.py",
        "python train.py --head",
        rounds=2,
        quiet=True,
        workdir=tmp_path / "runs",
        runner=FakeRunner(head_factor=1.2),
    )
    text = summary.read_text()
    assert code == 1 and "### stallscope gate: ❌ regression" in text
    assert "Paired: 2 rounds (AB AB)" in text and "head [" in text


def test_head_regression_is_caught_despite_machine_drift(tmp_path: Path) -> None:
    # 2 % drift per run would confound two separate jobs; interleaving keeps each pair close.
    code = ab_command(
        "python train.py",
        "python train.py --head",
        rounds=4,
        quiet=True,
        workdir=tmp_path,
        runner=FakeRunner(head_factor=1.06, drift_per_run=0.002),
    )
    assert code == 1
    code = ab_command(
        "python train.py",
        "python train.py --head",
        rounds=4,
        quiet=True,
        workdir=tmp_path / "b",
        runner=FakeRunner(head_factor=1.0, drift_per_run=0.002),
    )
    assert code == 0


def test_rounds_are_the_replicates_so_run_offsets_do_not_fail_the_same_code(tmp_path: Path) -> None:
    # 3 % run-to-run offsets and tight steps: the old rule (Mann-Whitney on the pooled steps)
    # called same-code runs significantly different whenever the offsets did not cancel.
    failed_old = failed_new = 0
    for seed in range(30):
        runner = FakeRunner(run_cv=0.03, seed=seed)
        out = tmp_path / f"v{seed}.yaml"
        code = ab_command(
            "python train.py",
            "python train.py --head",
            rounds=3,
            quiet=True,
            output=out,
            workdir=tmp_path / str(seed),
            runner=runner,
        )
        verdict = yaml.safe_load(out.read_text())
        median = next(r for r in verdict["rules"] if r["name"] == "step_time_median")
        assert median["variance_model"] == verdict["variance_model"] == "between-runs" and median["runs_base"] == 3
        assert "3+3 interleaved rounds" in median["variance"] and median["df"] == 4
        failed_new += code == 1
        pooled = [
            np.concatenate(
                [
                    r["summary"]["step_time_ms"]["samples"][2:]
                    for name, r in runner.reports.items()
                    if name.startswith(side)
                ]
            )
            for side in ("base", "head")
        ]
        failed_old += bool(median_rule_decisions(pooled[0], pooled[1], 3.0)[0][0])
    assert failed_new == 0 and failed_old >= 3, (failed_new, failed_old)


def test_one_round_falls_back_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "v.yaml"
    code = ab_command(
        "python train.py",
        "python train.py --head",
        rounds=1,
        quiet=True,
        output=out,
        workdir=tmp_path,
        runner=FakeRunner(head_factor=1.3),
    )
    verdict = yaml.safe_load(out.read_text())
    assert code == 1 and verdict["variance_model"] == "within-run-blocks+assumed-run-cv"
    assert "one run per side" in verdict["variance"]


def test_pool_reports_keeps_majority_findings_on_head_union_on_base() -> None:
    reports = [
        make_report(
            10.0,
            n=30,
            seed=i,
            findings=[{"id": "a", "severity": "high"}] + ([{"id": "b", "severity": "high"}] if i == 0 else []),
        )
        for i in range(3)
    ]
    head = pool_reports(reports, warmup=0, head_side=True)
    base = pool_reports(reports, warmup=0, head_side=False)
    assert [f["id"] for f in head["findings"]] == ["a"]
    assert sorted(f["id"] for f in base["findings"]) == ["a", "b"]
    assert len(head["summary"]["step_time_ms"]["samples"]) == 90
    assert head["summary"]["peak_memory_mb"] == 1000.0


def test_bad_usage_is_exit_2(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="--base-cmd is empty"):
        ab_command("  ", "python x.py", workdir=tmp_path, runner=FakeRunner())
    with pytest.raises(ToolError, match="cannot split"):
        ab_command("python 'x.py", "python x.py", workdir=tmp_path, runner=FakeRunner())
    res = CliRunner().invoke(
        app, ["gate", "ab", "--base-cmd", "python a.py", "--head-cmd", "python b.py", "--rounds", "0"]
    )
    assert res.exit_code == 2
    res = CliRunner().invoke(
        app, ["gate", "ab", "--base-cmd", "", "--head-cmd", "python b.py", "--workdir", str(tmp_path)]
    )
    assert res.exit_code == 2 and "--base-cmd is empty" in res.stderr
