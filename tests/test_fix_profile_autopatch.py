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

from stallscope.profiler.common import read_yaml

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = [sys.executable, str(ROOT / "bench" / "workloads" / "slow_loader_epochs.py"), "--epochs", "5"]


def test_profile_auto_patch_keeps_dataloader_workers(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "stallscope.cli", "profile", "--auto-patch", "--patch-steps", "8", "--skip", "2",
           "--steps", "2", "--no-diagnose", "-q", "-o", str(run), "--", *WORKLOAD]
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
