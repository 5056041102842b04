"""`stallscope profile` with other launchers and unusual targets: torchrun, the target's own
profilers, the in-process seams, no NVML, signals. Real subprocess runs (CPU, gloo)."""
from __future__ import annotations

import signal
import sys

import pytest
import yaml

from test_profile import TORCHRUN, WL, assert_loadable, env_for, free_port, interrupted, profile, steps_csv, trace

RUNS = {
    "torchrun": lambda out: profile(out, [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), str(WL / "ddp_tiny.py")],
                                    "--skip", "1", "--steps", "2"),
    "own_profiler": lambda out: profile(out, [sys.executable, str(WL / "own_profiler.py")], "--skip", "1", "--steps", "2"),
    "seams": lambda out: profile(out, [sys.executable, str(WL / "seams.py")], "--skip", "2", "--steps", "2"),
    "nvml_fake": lambda out: profile(out, [sys.executable, str(WL / "train_tiny.py"), "--steps", "3"],
                                     env=env_for(str(WL / "fake_nvml"))),
    "sigint": lambda out: interrupted(out, signal.SIGINT),
    "sigterm": lambda out: interrupted(out, signal.SIGTERM),
    "workers": lambda out: profile(out, [sys.executable, str(WL / "workers_tiny.py")], "--skip", "2", "--steps", "2",
                                   "--sample-hz", "20"),
    "legacy_profiler": lambda out: profile(out, [sys.executable, str(WL / "legacy_profiler.py")], "--skip", "2", "--steps", "3"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    base = tmp_path_factory.mktemp("runs")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(fn, base / name) for name, fn in RUNS.items()}
        return {name: (base / name, f.result()) for name, f in futures.items()}


def test_torchrun_two_ranks_with_gloo(runs: dict) -> None:
    run, res = runs["torchrun"]
    assert res.returncode == 0, res.stderr
    m = assert_loadable(run)
    assert m["ranks"] == [0, 1] and m["world_size"] == 2
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["rank0", "rank1"]  # the launcher is not a rank
    for r in (0, 1):
        assert len(steps_csv(run / f"rank{r}")) == 6
        assert m["per_rank"][r]["local_rank"] == r
    assert m["per_rank"][0]["pid"] != m["per_rank"][1]["pid"]
    clocks = [yaml.safe_load((run / f"rank{r}" / "rank.yaml").read_text())["clock"] for r in (0, 1)]
    assert clocks[0]["rank_offset_ns"] == 0  # rank 0 is the reference
    assert isinstance(clocks[1]["rank_offset_ns"], int) and abs(clocks[1]["rank_offset_ns"]) < 10**9  # one host


def test_target_with_its_own_torch_profiler(runs: dict) -> None:
    run, res = runs["own_profiler"]
    assert res.returncode == 0, res.stderr
    assert "OWN_PROFILER_DONE True" in res.stdout  # its profiler kept working
    m = assert_loadable(run)
    rows = steps_csv(run / "rank0")
    assert len(rows) == 6 and {r["source"] for r in rows} == {"profiler_step"}
    assert any("own torch.profiler" in n for n in m["notices"])


def test_target_entering_the_legacy_profiler_mid_window(runs: dict) -> None:
    run, res = runs["legacy_profiler"]
    assert res.returncode == 0, res.stderr
    assert "LEGACY_OK True" in res.stdout  # the target's profiler got Kineto
    m = assert_loadable(run)
    names = {e["name"] for e in trace(run / "rank0")["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")}
    # the window ended where the target's profiler began, inside step 3 (a partial step, still in_window)
    assert names == {"ProfilerStep#2", "ProfilerStep#3"}
    assert [int(r["in_window"]) for r in steps_csv(run / "rank0")] == [0, 0, 1, 1, 0, 0]
    assert any("own torch.profiler" in n for n in m["notices"])


def test_no_nvml_one_notice_no_crash(runs: dict) -> None:
    run, res = runs["nvml_fake"]  # a pynvml whose nvmlInit fails, first on PYTHONPATH
    assert res.returncode == 0, res.stderr
    m = assert_loadable(run)
    nvml = [n for n in m["notices"] if "NVML" in n]
    assert nvml == ["NVML unavailable (Driver Not Loaded): no GPU samples; nvml.csv not written"]
    assert res.stderr.count("NVML unavailable") == 1
    assert not (run / "rank0" / "nvml.csv").exists()
    assert len(steps_csv(run / "rank0")) == 3


@pytest.mark.parametrize("name, code, signame", [("sigint", 130, "SIGINT"), ("sigterm", 143, "SIGTERM")])
def test_signal_mid_run_leaves_loadable_run(runs: dict, name: str, code: int, signame: str) -> None:
    run, res = runs[name]
    assert res.returncode == code, res.stdout[:1500] + "\n---\n" + res.stderr
    m = assert_loadable(run)
    assert m["exit"]["signal"] == signame and m["exit"]["status"] == "signal" and m["exit"]["code"] == code
    rows = steps_csv(run / "rank0")
    assert 5 <= len(rows) < 200
    assert [int(r["step"]) for r in rows] == list(range(len(rows)))
    assert (run / "rank0" / "trace.json.gz").exists()


def test_step_listener_roots_and_dataloaders_seams(runs: dict) -> None:
    run, res = runs["seams"]
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "EVENTS [0, 1, 2, 3, 4, 5] [False, False, True, True, False, False]" in out
    assert "WAITS_POSITIVE True" in out
    assert "ROOTS ['Sequential'] True" in out
    assert "LOADERS 1 True" in out


def test_dataloader_workers_in_host_samples(runs: dict) -> None:
    import csv

    run, res = runs["workers"]
    assert res.returncode == 0, res.stderr
    assert "WORKERS_DONE" in res.stdout
    assert_loadable(run)
    assert len(steps_csv(run / "rank0")) == 24
    with (run / "rank0" / "host.csv").open(newline="") as fh:
        host = list(csv.DictReader(fh))
    assert max(int(h["workers"]) for h in host) == 2  # the loader's two worker processes, no more
    assert max(float(h["workers_cpu_pct"]) for h in host) > 0
    assert not [p for p in run.iterdir() if p.name.startswith(("rank1", "extra"))]  # workers are not ranks


def test_torch_compile_worker_is_not_a_rank(tmp_path) -> None:
    """Inductor's compile workers import torch in a fresh interpreter: they are torch's helpers,
    not a second process claiming the rank (no extra-processes folder, no notice about it)."""
    run = tmp_path / "run"
    res = profile(run, [sys.executable, str(WL / "compile_worker_child.py")], "--skip", "1", "--steps", "2")
    assert res.returncode == 0, res.stderr
    assert "WORKER_RC 0" in res.stdout  # the worker really started and imported torch
    m = assert_loadable(run)
    assert not (run / "extra-processes").exists()
    assert not any("claimed by more than one process" in n for n in m["notices"]), m["notices"]
    assert len(steps_csv(run / "rank0")) == 8
