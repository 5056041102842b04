"""End to end on the CPU: real `stallscope profile` runs, diagnosed on demand, gated in paired and report mode."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TRAIN = """
import sys, time, torch
torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(16, 32), torch.randint(0, 4, (16,))
pause = float(sys.argv[1])
for _ in range(36):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    time.sleep(pause)  # dominates the step, so the shared test machine's noise stays small
    opt.step()
"""
# The CPU test machine is shared and noisy: a loose threshold here, the tight one is tested on the GPU.
GATE_YAML = {"min_samples": 20, "rules": [{"metric": "step_time_median", "max_regression_pct": 40}]}


def _stallscope(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stallscope.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})


def test_paired_mode_catches_a_real_slowdown_and_report_mode_reads_run_dirs(tmp_path: Path) -> None:
    pytest.importorskip("stallscope.analyzers.report")
    pytest.importorskip("stallscope.profiler.command")
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "gate.yaml").write_text(yaml.safe_dump(GATE_YAML))
    py = sys.executable
    res = _stallscope("gate", "ab", "--base-cmd", f"{py} train.py 0.04", "--head-cmd", f"{py} train.py 0.12", "--rounds", "1",
                      "--config", "gate.yaml", "--workdir", "runs", "-o", "verdict.yaml", "--junit", "gate.xml", cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    verdict = yaml.safe_load((tmp_path / "verdict.yaml").read_text())
    median = next(r for r in verdict["rules"] if r["name"] == "step_time_median")
    assert median["status"] == "regression" and median["change_pct"] > 100 and median["p_value"] < 1e-6
    assert median["n_base"] >= 20 and verdict["environment"]["status"] == "pass"
    assert (tmp_path / "runs" / "base-1" / "meta.yaml").exists() and (tmp_path / "runs" / "head-1" / "meta.yaml").exists()

    # Report mode on the run directories themselves (diagnosed on demand): same verdict, either way round.
    res = _stallscope("gate", "--baseline", "runs/base-1", "runs/head-1", "-c", "gate.yaml", "-q", cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    res = _stallscope("gate", "--baseline", "runs/head-1", "runs/base-1", "-c", "gate.yaml", "-o", "back.yaml", "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    back = yaml.safe_load((tmp_path / "back.yaml").read_text())
    assert next(r for r in back["rules"] if r["name"] == "step_time_median")["status"] == "improvement"

    # A baseline accepted from a run directory is a report file that gates the same way.
    res = _stallscope("gate", "--baseline", "baseline.yaml", "runs/base-1", "--update-baseline", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load((tmp_path / "baseline.yaml").read_text())["schema_version"] == 1
    res = _stallscope("gate", "--baseline", "baseline.yaml", "runs/head-1", "-c", "gate.yaml", "-q", cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr


def test_paired_mode_same_code_passes(tmp_path: Path) -> None:
    pytest.importorskip("stallscope.analyzers.report")
    pytest.importorskip("stallscope.profiler.command")
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "gate.yaml").write_text(yaml.safe_dump(GATE_YAML))
    cmd = f"{sys.executable} train.py 0.04"
    res = _stallscope("gate", "ab", "--base-cmd", cmd, "--head-cmd", cmd, "--rounds", "1", "-c", "gate.yaml", "--workdir", "runs", "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_paired_mode_failed_command_is_exit_2_with_the_log(tmp_path: Path) -> None:
    pytest.importorskip("stallscope.profiler.command")
    (tmp_path / "boom.py").write_text("raise SystemExit(5)\n")
    res = _stallscope("gate", "ab", "--base-cmd", f"{sys.executable} boom.py", "--head-cmd", f"{sys.executable} boom.py", "--workdir", "runs", "-q", cwd=tmp_path)
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()[-1]
    assert "exited 5 under stallscope profile" in line and "base-1.log" in line
