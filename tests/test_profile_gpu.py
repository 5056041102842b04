"""`stallscope profile` on a CUDA GPU: GPU step times, NVML samples on the step clock, kernels in the trace."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import yaml

from test_profile import WL, assert_loadable, profile, steps_csv, trace

pytestmark = pytest.mark.gpu


def test_cuda_training_run(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    out = tmp_path / "run"
    res = profile(out, [sys.executable, str(WL / "train_cuda.py"), "40"], "--skip", "5", "--steps", "3", "--sample-hz", "50")
    assert res.returncode == 0, res.stderr
    m = assert_loadable(out)
    gpu = m["per_rank"][0]["gpu"]
    assert gpu and gpu["name"] and gpu["uuid"] and m["per_rank"][0]["driver"]
    rows = steps_csv(out / "rank0")
    assert len(rows) == 40
    gpu_ms = [float(r["gpu_ms"]) for r in rows[1:] if r["gpu_ms"]]
    assert len(gpu_ms) == 39 and all(g > 0 for g in gpu_ms)  # CUDA events read for every step after the first
    with (out / "rank0" / "nvml.csv").open(newline="") as fh:
        nvml = list(csv.DictReader(fh))
    assert nvml, "no NVML samples"
    t0, t1 = int(rows[0]["start_ns"]), int(rows[-1]["end_ns"])
    assert any(t0 <= int(r["t_ns"]) <= t1 for r in nvml), "NVML samples not on the step clock"
    assert all(r["sm_clock_mhz"] and r["mem_used_mb"] for r in nvml)
    events = trace(out / "rank0")["traceEvents"]
    assert sum(e.get("cat") == "kernel" for e in events) > 0
    names = {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")}
    assert names == {"ProfilerStep#5", "ProfilerStep#6", "ProfilerStep#7"}
    info = yaml.safe_load((out / "rank0" / "rank.yaml").read_text())
    assert info["clock"]["method"] in ("baseTimeNanoseconds", "marker")


def test_cuda_graph_capture_of_a_whole_step_is_not_disturbed(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    out = tmp_path / "run"
    res = profile(out, [sys.executable, str(WL / "train_cuda_graph.py")], "--skip", "1", "--steps", "2", "--sample-hz", "200")
    assert res.returncode == 0, res.stderr
    assert "GRAPH_DONE True" in res.stdout
    assert_loadable(out)
