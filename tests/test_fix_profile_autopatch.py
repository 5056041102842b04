"""`stallscope profile --auto-patch` through the real profiler bootstrap, on the CPU.

The workload's DataLoader is single-process with costly, deterministic samples over several
epochs: ``dataloader-workers`` must be applied at a step boundary, take effect at the next
epoch, be measured faster and kept; the CUDA-only fixes are skipped with their reason; the
program's result is the same as without stallscope.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

from stallscope.profiler.command import RunSummary
from stallscope.profiler.common import read_yaml

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = [sys.executable, str(ROOT / "bench" / "workloads" / "slow_loader_epochs.py"), "--epochs", "5"]


def test_profile_auto_patch_keeps_dataloader_workers(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "stallscope.cli",
        "profile",
        "--auto-patch",
        "--patch-steps",
        "8",
        "--skip",
        "2",
        "--steps",
        "2",
        "--no-diagnose",
        "-q",
        "-o",
        str(run),
        "--",
        *WORKLOAD,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    plain = subprocess.run(WORKLOAD, capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split()[:2] == plain.stdout.split()[:2]  # same final loss sum, bit for bit

    doc = read_yaml(run / "rank0" / "patches.yaml")
    assert doc["kind"] == "stallscope-patches" and doc["phase"] == "done"
    fixes = {e["id"]: e for e in doc["fixes"]}
    workers = fixes["dataloader-workers"]
    assert workers["decision"] == "kept", workers["why"]
    assert workers["parity"]["passed"] and workers["speedup"] > 1.2
    assert len(workers["before"]["samples_ms"]) == 8 and len(workers["after"]["samples_ms"]) == 8
    for cuda_only in ("flashkat", "tf32", "pin-memory", "cudnn-benchmark"):
        assert fixes[cuda_only]["decision"] == "skipped" and "CUDA" in fixes[cuda_only]["why"]
    assert "workers 1" in out.stdout or "workers 0" not in out.stdout

    # every step belongs to one phase, and the figures say which they describe
    names = [p["name"] for p in doc["phases"]]
    assert names == ["before patches", "trying dataloader-workers", "with dataloader-workers"], doc["phases"]
    firsts = [p["first_step"] for p in doc["phases"]]
    assert firsts[0] == 0 and firsts == sorted(set(firsts))
    meta = read_yaml(run / "meta.yaml")
    assert meta["overhead"]["phase"].startswith("before patches (steps 0-")

    console = Console(record=True, width=200)
    console.print(RunSummary(run, meta))
    text = console.export_text()
    assert "median step ms (all phases)" in text and "with dataloader-workers (steps" in text
    assert "auto-patch: dataloader-workers kept: faster" in text and "not tried: " in text

    report_path = tmp_path / "report.yaml"
    d = subprocess.run(
        [sys.executable, "-m", "stallscope.cli", "diagnose", str(run), "-o", str(report_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert d.returncode == 0, d.stderr[-2000:]
    summary = read_yaml(report_path)["summary"]
    assert "before patches" in summary["step_time_ms"]["source"]
    by_phase = {p["phase"].split(" (")[0]: p for p in summary["phases"]}
    assert set(by_phase) == set(names)
    # the kept fix made the steps faster (speedup > 1.2 above): the per-phase medians show it
    assert by_phase["with dataloader-workers"]["median"] < by_phase["before patches"]["median"]
