"""The CPU subset of the planted-bottleneck scenario suite, end to end: each scenario is run
under ``stallscope profile`` (with Python stacks), diagnosed, and its top finding checked.

GPU-only patterns (atomics, pageable copies, syncs, TF32, capacity, launch gaps) run on the GPU
machine with ``bench/scenarios/run.py``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CPU_SUBSET = ["pil_preprocess_workers0", "bleu_in_loop", "unfused_attention_sampling", "healthy_bf16_transformer"]


@pytest.mark.slow
def test_cpu_scenarios_are_diagnosed_right(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # run.py and its children import the installed stallscope
    env.pop("OUT", None)
    cmd = [sys.executable, str(ROOT / "bench" / "scenarios" / "run.py"), "--device", "cpu", "--only", ",".join(CPU_SUBSET),
           "--steps", "5", "--window", "1,3", "--stack", "--timeout", "150", "--budget", "420", "--results", str(tmp_path)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    doc = yaml.safe_load((tmp_path / "scenarios.yaml").read_text())
    rows = doc["scenarios"]
    assert set(rows) == set(CPU_SUBSET), p.stdout + p.stderr
    for name, row in rows.items():
        assert row.get("pass"), f"{name}: {row.get('why') or row.get('error')}\n{p.stdout[-2000:]}"
        if row["expected"] != "healthy":
            assert row["top_finding"]["category"] == row["expected"]
    assert doc["planted_correct"] == 3 and doc["healthy_clean"] == 1
    assert p.returncode == 0


def test_every_scenario_declares_what_it_plants():
    sys.path.insert(0, str(ROOT / "bench" / "scenarios"))
    from run import CATEGORIES_OK, discover  # type: ignore[import-not-found]

    found = discover()
    assert len([s for s in found if s["expected"] != "healthy"]) >= 10
    assert len([s for s in found if s["expected"] == "healthy"]) >= 2
    for s in found:
        assert s["expected"] in CATEGORIES_OK, s
        text = s["path"].read_text()
        assert "import stallscope" not in text and "from stallscope" not in text
        assert "from analyzers" not in text and "import profiler" not in text


def test_judge_rules():
    sys.path.insert(0, str(ROOT / "bench" / "scenarios"))
    from run import judge, top_finding  # type: ignore[import-not-found]

    low_fast = {"id": "a", "category": "host-bound", "severity": "low"}
    high_slow = {"id": "b", "category": "memory-capacity", "severity": "high"}
    assert top_finding([low_fast, high_slow]) is high_slow
    assert judge("memory-capacity", [low_fast, high_slow]) == (True, "")
    assert judge("host-bound", [low_fast, high_slow])[0] is False
    assert judge("healthy", [low_fast]) == (True, "")
    assert judge("healthy", [high_slow])[0] is False
    assert judge("precision", []) == (False, "no finding")
