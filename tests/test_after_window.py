"""The window's after-effect: light steps after the trace window against those before it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import yaml

from stallscope.analyzers.overhead import MIN_STEPS, after_window, describe
from stallscope.profiler.patchphases import BEFORE_PATCHES, phase_of, read_phases


def _steps(before_ms: list[float], window: int, after_ms: list[float]) -> dict[str, np.ndarray]:
    """steps.csv columns: step 0 (start-up), the light steps, a warm-up step, the window, the
    export step, then the light steps after it."""
    wall = [500.0, *before_ms, 40.0] + [45.0] * window + [900.0, *after_ms]
    flags = [0] * (len(before_ms) + 2) + [1] * window + [0] * (len(after_ms) + 1)
    n = len(wall)
    return {
        "step": np.arange(n),
        "wall_ms": np.array(wall),
        "gpu_ms": np.full(n, np.nan),
        "in_window": np.array(flags, dtype=float),
    }


def test_a_slower_loop_after_the_window_is_named_with_its_interval():
    rng = np.random.default_rng(0)
    before = list(30 + rng.normal(0, 0.3, 12))
    after = list(36 + rng.normal(0, 0.3, 30))  # +20 %
    fig = after_window(_steps(before, 5, after))
    assert 18 < fig["after_window_pct"] < 22 and fig["slowed"]
    lo, hi = fig["after_window_ci95_pct"]
    assert lo > 1 and lo <= fig["after_window_pct"] <= hi
    assert (fig["before_steps"], fig["after_steps"]) == (12, 30)  # start-up, warm-up, export left out
    assert "+20" in describe(fig) or "+19" in describe(fig) or "+21" in describe(fig)


def test_the_same_loop_is_not_called_slowed():
    rng = np.random.default_rng(1)
    fig = after_window(_steps(list(30 + rng.normal(0, 0.5, 12)), 5, list(30 + rng.normal(0, 0.5, 30))))
    lo, hi = fig["after_window_ci95_pct"]
    assert abs(fig["after_window_pct"]) < 2 and lo < 1 and not fig["slowed"] and describe(fig) is None


def test_too_few_steps_say_why():
    fig = after_window(_steps([30.0] * (MIN_STEPS - 1), 3, [30.0] * 10))
    assert fig["after_window_pct"] is None and "--skip" in fig["why"]


TARGET = """\
import torch
x = torch.randn(128, 128)
m = torch.nn.Linear(128, 128)
opt = torch.optim.SGD(m.parameters(), lr=0.01)
for _ in range(24):
    m(x).sum().backward()
    opt.step()
    opt.zero_grad()
"""


def test_profile_writes_after_window_pct_into_meta(tmp_path):
    (tmp_path / "t.py").write_text(TARGET)
    run = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "stallscope.cli",
            "profile",
            "-q",
            "--no-diagnose",
            "-o",
            str(run),
            "--skip",
            "6",
            "--steps",
            "3",
            "--",
            sys.executable,
            "t.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    over = yaml.safe_load((run / "meta.yaml").read_text())["overhead"]
    assert over["before_steps"] == 4 and over["after_steps"] >= 10
    assert isinstance(over["after_window_pct"], float) and len(over["after_window_ci95_pct"]) == 2
    # a run whose later steps were slowed: the report's step time says it carries that
    meta = yaml.safe_load((run / "meta.yaml").read_text())
    meta["overhead"].update(after_window_pct=12.5, after_window_ci95_pct=[10.0, 15.0], slowed=True)
    (run / "meta.yaml").write_text(yaml.safe_dump(meta))
    rep = tmp_path / "r.yaml"
    d = subprocess.run(
        [sys.executable, "-m", "stallscope.cli", "diagnose", str(run), "-o", str(rep)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert d.returncode == 0, d.stderr[-2000:]
    report = yaml.safe_load(rep.read_text())
    assert report["summary"]["step_time_ms"]["after_window_pct"] == 12.5
    assert any("after the trace window ran 12.5 % slower" in n for n in report["notices"])


def test_after_auto_patch_both_sides_come_from_the_window_phase():
    """A patch that halves the step from step 30 on must not read as a -50 % after-effect, and the
    window's own slowdown is taken against light steps of its phase."""
    rng = np.random.default_rng(2)
    steps = _steps(list(30 + rng.normal(0, 0.3, 12)), 5, list(30 + rng.normal(0, 0.3, 40)))
    idx = steps["step"]
    steps["wall_ms"] = np.where(idx >= 30, steps["wall_ms"] / 2, steps["wall_ms"])
    mixed = after_window(steps)
    assert mixed["after_window_pct"] < -30  # what a figure across phases says
    phases = read_phases(
        {"phases": [{"name": BEFORE_PATCHES, "first_step": 0}, {"name": "with flashkat", "first_step": 30}]}
    )
    fig = after_window(steps, phases)
    assert abs(fig["after_window_pct"]) < 2 and not fig["slowed"]
    assert fig["phase"] == "before patches (steps 0-29)"
    assert fig["after_steps"] == 30 - 20  # steps 20..29: after the export step, before the patch
    assert 40 < fig["window_slowdown_pct"] < 60  # 45 ms window steps vs ~30 ms light steps


def test_malformed_phases_read_as_none():
    for bad in (
        None,
        [],
        {"phases": "x"},
        {"phases": [{"name": "a", "first_step": -1}]},
        {"phases": [{"name": "a", "first_step": 5}, {"name": "b", "first_step": 5}]},
        {"phases": [{"name": 3, "first_step": 0}]},
        {"phases": [{"name": "a", "first_step": True}]},
        {"phases": [{"name": "a", "first_step": i} for i in range(2000)]},
    ):
        assert read_phases(bad) == []
    ph = read_phases({"phases": [{"name": "before patches", "first_step": 0}, {"name": "trying x", "first_step": 9}]})
    assert [p.last_step for p in ph] == [8, None]
    assert phase_of(ph, 8).name == "before patches" and phase_of(ph, 9).name == "trying x"
