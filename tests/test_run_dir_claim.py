"""A run directory belongs to one run: racing `prepare_run_dir` calls into the same empty
folder end with exactly one owner, and the loser removes nothing."""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from stallscope.profiler import runformat
from stallscope.profiler.common import ToolError
from stallscope.profiler.rundir import prepare_run_dir


def _race(out: str, barrier, results) -> None:
    barrier.wait()
    try:
        prepare_run_dir(Path(out))
        results.put("won")
    except ToolError as exc:
        results.put(f"lost: {exc}")


def test_two_runs_into_one_out_have_one_winner(tmp_path):
    ctx = mp.get_context("fork")
    for trial in range(12):
        out = tmp_path / f"run{trial}"
        if trial % 2:
            out.mkdir()  # an empty folder the user made, or none at all
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(str(out), barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        outcomes = sorted(results.get(timeout=5) for _ in procs)
        assert outcomes[0].startswith("lost: --out") and outcomes[1] == "won", outcomes
        assert out.is_dir() and (out / runformat.CLAIM).is_file()


def test_a_claimed_folder_is_refused_and_kept(tmp_path):
    out = tmp_path / "run"
    prepare_run_dir(out)
    (out / "rank0").mkdir()
    with pytest.raises(ToolError, match="not empty"):
        prepare_run_dir(out)
    assert (out / "rank0").is_dir() and (out / runformat.CLAIM).is_file()


def test_tasks_of_one_job_share_the_folder_without_a_claim(tmp_path):
    out = tmp_path / "run"
    prepare_run_dir(out, shared=True)
    (out / "rank0").mkdir()
    prepare_run_dir(out, shared=True)  # the next task of the same job
    assert not (out / runformat.CLAIM).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".stallscope-write-probe")]
