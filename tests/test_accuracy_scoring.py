"""bench/accuracy.py scores labels against real diagnose reports: met and failed expectations, totals,
label errors, and the two automatic checks (silent empty report, figures out of bounds)."""

from __future__ import annotations

import gzip
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench import accuracy
from tests.analyzer_traces import record

ROOT = Path(__file__).resolve().parents[1]


def _step(i: int) -> None:
    import torch

    a = torch.randn(128, 128)
    for _ in range(4):
        a = torch.relu(a @ a) / 128.0
    time.sleep(0.05)  # host time the profiler does not see: steps of ~50 ms, most of it a fixed sleep


def _median_step_ms(trace: Path) -> float:
    """Median ProfilerStep#N duration read straight from the trace file (not from the tool)."""
    opener = gzip.open if trace.name.endswith(".gz") else open
    with opener(trace, "rt") as fh:
        events = json.load(fh)["traceEvents"]
    durs = [
        e["dur"] / 1000.0 for e in events if e.get("ph") == "X" and re.match(r"^ProfilerStep#\d+$", e.get("name", ""))
    ]
    assert durs, "the recorded trace has no ProfilerStep"
    return statistics.median(durs)


def _write_label(folder: Path, name: str, trace: str, expect: list[dict]) -> None:
    doc = {"name": name, "trace": trace, "evidence": "test", "verdict": "test", "expect": expect, "history": []}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(ROOT / "bench" / "accuracy.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=cwd)


def test_scoreboard_on_a_cpu_trace(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    trace = record(tmp_path / "traces" / "cpu.json", _step, steps=4, stacks=False)
    med = _median_step_ms(trace)
    labels = tmp_path / "labels"
    labels.mkdir()
    expect: list[dict] = [
        {"kind": "gpu_timeline", "value": False, "why": "CPU-only recording"},
        # wide: the scorer's range check is under test, not the step's precision; a loaded machine
        # stretches some of the 4 steps, and the report's step need not be the ProfilerStep median
        {"kind": "step_ms", "range": [0.5 * med, 2.0 * med], "why": "median ProfilerStep read from the file"},
        {"kind": "absent", "category": "communication", "min_severity": "low", "why": "no collectives"},
        {"kind": "notice", "any": ["GPU"], "why": "a CPU-only trace gets a notice naming the GPU"},
        {"kind": "gpu_timeline", "value": True, "why": "must fail"},
        {"kind": "step_ms", "range": [10 * med, 20 * med], "why": "must fail"},
        {"kind": "present", "category": "attention", "min_severity": "high", "why": "must fail"},
        {"kind": "notice", "any": ["zzz-no-such-notice"], "why": "must fail"},
        {"kind": "no_such_kind", "why": "must fail"},
        {"kind": "top_category", "category": "precision", "why": "must fail: no GPU kernels"},
    ]
    _write_label(labels, "cpu_loop", "traces/cpu.json", expect)
    _write_label(labels, "not_selected", "traces/cpu.json", [{"kind": "gpu_timeline", "value": False}])
    out = tmp_path / "results" / "acc.yaml"

    proc = _run("--labels", "labels", "--only", "cpu_loop", "--out", "results/acc.yaml", cwd=tmp_path)  # relative paths

    assert proc.returncode == 0, proc.stderr
    assert "[1/1] cpu_loop" in proc.stderr
    doc = yaml.safe_load(out.read_text())
    assert [p.name for p in out.parent.iterdir()] == ["acc.yaml"]  # the atomic write left no temporary file
    (row,) = doc["results"]
    assert row["name"] == "cpu_loop" and row["exit_code"] == 0 and row["group"] == "public" and not row["multi_rank"]
    met = [e["met"] for e in row["expectations"]]
    assert met == [True] * 4 + [False] * 6, row["expectations"]
    assert "unknown expectation kind" in row["expectations"][8]["detail"]
    assert row["silent_empty"] is False  # the CPU-only notice says why there are no GPU figures
    t = doc["totals"]
    assert (t["traces"], t["expectations"], t["expectations_met"], t["expectations_met_pct"]) == (1, 10, 4, 40.0)
    assert t["by_source"]["public"]["traces"] == 1 and t["by_source"]["h200"]["traces"] == 0
    assert t["out_of_bounds"] == int(row["out_of_bounds"]) and t["silent_empty"] == 0
    failed = [d for d in doc["disagreements"] if d["kind"] == "expectation"]
    assert len(failed) == 6 and all(d["trace"] == "cpu_loop" for d in failed)
    assert doc["label_dirs"] and doc["stallscope"]["commit"] is not None


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("name: x\nexpect: []\n", "needs name, trace and expect"),
        ("name: x\ntrace: t.json\nexpect: []\n", "does not exist"),
        ("name: x\ntrace: t.json\nexpect: [{kind: absent, category: slowness}]\n", "category must be one of"),
        ("name: x\ntrace: t.json\nexpect: [{kind: step_ms, range: [20, 10]}]\n", "range must be [lo, hi]"),
    ],
)
def test_bad_label_is_one_line_exit_2(tmp_path: Path, label: str, message: str) -> None:
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "broken.yaml").write_text(label)
    if message != "does not exist":
        (tmp_path / "t.json").write_text('{"traceEvents": []}')
    proc = _run("--labels", str(tmp_path / "labels"), "--out", str(tmp_path / "acc.yaml"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "acc.yaml").exists()


def test_categories_match_the_analyzers() -> None:
    from stallscope.analyzers.base import CATEGORIES

    assert accuracy.CATEGORIES == CATEGORIES


@pytest.mark.parametrize(
    ("report", "silent"),
    [
        ({"findings": [], "notices": [], "summary": {"breakdown_pct": {"compute_pct": 10.0}}}, True),
        ({"findings": [], "notices": [], "summary": {"breakdown_pct": {"compute_pct": 85.0}}}, False),
        ({"findings": [], "notices": ["no GPU events in the trace"], "summary": {"timeline": "cpu"}}, False),
        ({"findings": [], "notices": ["a damaged file"], "summary": {"timeline": "cpu"}}, True),
        ({"findings": [], "notices": ["no GPU events"], "source": {"steps_from": "whole-trace"}, "summary": {}}, True),
        ({"findings": [{"category": "host-bound", "severity": "low"}], "notices": [], "summary": {}}, False),
        ({"findings": [{"category": "host-bound", "severity": "info"}], "notices": [], "summary": {}}, True),
    ],
)
def test_silent_empty(report: dict, silent: bool) -> None:
    assert accuracy.silent_empty(report)[0] is silent


def test_out_of_bounds() -> None:
    clean = {
        "summary": {
            "step_time_ms": {"median": 100.0, "samples": [99.0, 101.0]},
            "breakdown_pct": {"compute_pct": 60.0},
        },
        "findings": [
            {
                "impact": {"step_time_pct": 30.0, "est_saving_ms_per_step": 30.0},
                "evidence": {"window_slowdown_pct": 250.0},
            }
        ],
        "top_kernels": [{"pct": 40.0}],
    }
    assert accuracy.out_of_bounds(clean, span_ms=500.0) == []
    assert any("longer than the trace span" in b for b in accuracy.out_of_bounds(clean, span_ms=50.0))
    over = {**clean, "per_rank": [{"breakdown_pct": {"idle_pct": 120.0}}]}
    assert any("per_rank[0].idle_pct" in b for b in accuracy.out_of_bounds(over, span_ms=None))
    greedy = {
        **clean,
        "findings": [{"impact": {"est_saving_ms_per_step": 80.0}}, {"impact": {"est_saving_ms_per_step": 70.0}}],
    }
    assert any("savings sum to 150" in b for b in accuracy.out_of_bounds(greedy, span_ms=None))
