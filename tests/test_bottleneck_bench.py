"""Smoke runs of the Bottleneck Sampling benchmarks on the CPU (their --quick variants)."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(script: str, out: Path) -> str:
    env = dict(os.environ, OUT=str(out))  # the script imports the installed stallscope
    proc = subprocess.run([sys.executable, f"bench/{script}", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_speed_script_quick(tmp_path: Path) -> None:
    stdout = _run("bottleneck_speed_gpu.py", tmp_path)
    doc = yaml.safe_load((tmp_path / "bottleneck-sampling.yaml").read_text())
    for key in ("full_ms", "staged_ms", "speedup", "quality_ratio", "date", "torch", "command"):
        assert key in doc
    assert doc["quick"] is True and doc["full_ms"] > 0 and doc["staged_ms"] > 0
    assert doc["speedup"] == pytest.approx(doc["full_ms"] / doc["staged_ms"], rel=0.01)
    assert doc["schedules"]["tuned"]["quality_ratio"] >= 0.9 > doc["schedules"]["paper"]["quality_ratio"]
    names = {}
    for which in ("unpatched", "patched"):
        path = tmp_path / f"attention_{which}.json.gz"
        assert path.stat().st_size < 5 * 1024 * 1024
        events = json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
        names[which] = {e.get("name", "") for e in events}
        steps = {n for n in names[which] if n.startswith("ProfilerStep#")}
        assert len(steps) >= 20  # one per denoising step: the attention analyzer's iteration count
        assert any("scaled_dot_product_attention" in n for n in names[which])
    assert {"bottleneck_sampling.stage1", "bottleneck_sampling.stage2"} <= names["patched"]
    assert not any(n.startswith("bottleneck_sampling.stage") for n in names["unpatched"])
    assert "speedup" in stdout


def test_quality_script_quick(tmp_path: Path) -> None:
    _run("bottleneck_quality.py", tmp_path)
    doc = yaml.safe_load((tmp_path / "bottleneck-quality.yaml").read_text())
    rows = doc["monte_carlo"]["rows"]
    assert rows["full_50"]["quality_ratio_mc"] == 1.0
    assert rows["full_10"]["quality_ratio_exact"] < rows["full_25"]["quality_ratio_exact"] < 1.0
    assert rows["tuned_3+10+12"]["nfe"] == 25 and rows["tuned_3+10+12"]["quality_ratio_exact"] >= 0.9
    assert abs(rows["tuned_3+10+12"]["quality_ratio_exact"] - rows["tuned_3+10+12"]["quality_ratio_mc"]) < 0.1
    assert set(doc["spectra"]) >= {"full_50", "paper_4+13+8", "tuned_3+10+12"}
