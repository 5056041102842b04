"""The data wait is graded from the telemetry of every step of every rank (issue 17).

A real 2-rank gloo DDP run on the CPU, recorded by `stallscope profile -- torchrun` with the
default window (5 steps after 5 skipped) by tests/test_straggler_telemetry.py's recorder: rank
1's Dataset sleeps 100 ms per batch, rank 0's loads at once. Rank 0's steady-state steps are as
long as rank 1's (it waits for rank 1 in the all-reduce), so only a per-rank figure tells the
data-bound rank from its peers; the straggler finding names the same time as its peers' wait,
and the accounting counts it once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stallscope.analyzers.base import Severity
from stallscope.analyzers.context import load_context
from stallscope.analyzers.model import AnalysisContext
from stallscope.analyzers.run import AnalyzerRun, run_analyzers
from tests.test_straggler_telemetry import STEPS, _record, pytestmark  # noqa: F401 - the same skip

IP = "input-pipeline-data-wait"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _record(tmp_path_factory.mktemp("slow-input"), "data")


@pytest.fixture(scope="module")
def analysed(run: Path) -> tuple[AnalysisContext, AnalyzerRun]:
    ctx = load_context(run)
    assert [r.rank for r in ctx.ranks] == [0, 1]
    return ctx, run_analyzers(ctx)


def test_the_data_bound_rank_is_named_from_every_steady_step_of_every_rank(
    analysed: tuple[AnalysisContext, AnalyzerRun],
) -> None:
    ctx, result = analysed
    f = next(f for f in result.findings if f.id == IP)
    ev = f.evidence
    assert ev["graded_from"] == "telemetry"
    assert f.where["ranks"] == [1]
    by_rank = ev["whole_run_data_wait_pct_by_rank"]
    assert set(by_rank) == {0, 1}
    # rank 1 sleeps ~100 ms of a ~105 ms step in its Dataset; rank 0 loads a batch in microseconds
    assert by_rank[1] > 50.0 and by_rank[0] < 10.0
    assert f.severity == Severity.HIGH
    # the steps after the window but the export step: neither step 0, nor the window, nor warm-up
    last = ctx.ranks[0].meta["rank"]["window"]["last_step"]
    assert ev["whole_run_steps"] == {0: STEPS - last - 2, 1: STEPS - last - 2}
    # the window pools both ranks' steps, which halves the data-bound rank's share; it gives the why
    assert ev["window_data_wait_pct"] < 0.75 * by_rank[1]
    assert "preprocessing in the main process" in f.where["causes"]


def test_the_straggler_and_its_data_wait_are_counted_once(analysed: tuple[AnalysisContext, AnalyzerRun]) -> None:
    _, result = analysed
    found = {f.id: f for f in result.findings}
    straggler, ip = found["comm-straggler"], found[IP]
    assert straggler.evidence["cause"] == "data" and straggler.where["ranks"] == [1]
    assert result.accounting is not None
    step = result.accounting.step_ms
    uncapped = [f.evidence.get("est_saving_uncapped_ms", f.impact.est_saving_ms_per_step) for f in (straggler, ip)]
    assert sum(uncapped) > 1.5 * step  # each alone is most of the step: the same time, named twice
    saved = straggler.impact.est_saving_ms_per_step + ip.impact.est_saving_ms_per_step
    assert saved <= max(straggler.impact.est_saving_ms_per_step, ip.impact.est_saving_ms_per_step) + 1e-6
    assert saved <= step
    lesser, larger = sorted((straggler, ip), key=lambda f: f.impact.est_saving_ms_per_step)
    assert lesser.evidence["shared_with"] == larger.id and "shared_with" not in larger.evidence
    assert larger.impact.est_saving_ms_per_step > 0.5 * step  # the time is still claimed, once


def test_the_same_traces_without_telemetry_are_graded_from_the_window(run: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for r in (0, 1):
        shutil.copy(run / f"rank{r}" / "trace.json.gz", plain / f"rank{r}.pt.trace.json.gz")
    ctx = load_context(plain)
    assert all(rd.telemetry is None for rd in ctx.ranks)
    f = next(f for f in run_analyzers(ctx, names=["input-pipeline"]).findings if f.id == IP)
    ev = f.evidence
    assert ev["graded_from"] == "trace-window" and "whole_run_data_wait_pct_by_rank" not in ev
    assert ev["data_wait_pct"] == ev["window_data_wait_pct"]
    assert f.where["ranks"] == [1]
