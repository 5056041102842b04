"""`stallscope demo`: the bundled workload runs through `profile` and its bottleneck is real."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from test_profile import assert_loadable, stallscope, steps_csv, trace


@pytest.mark.slow
def test_demo_profiles_a_data_bound_workload(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = stallscope(["demo", "--out", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "demo: 24 steps on cpu" in res.stdout
    m = assert_loadable(out)
    assert m["exit"]["status"] == "ok" and m["command"][0] == sys.executable
    rows = steps_csv(out / "rank0")
    assert len(rows) == 24 and {r["source"] for r in rows} == {"optimizer"}
    wall = sum(float(r["wall_ms"]) for r in rows[1:])
    wait = sum(float(r["data_wait_ms"]) for r in rows[1:])
    # decode + augment of 32 JPEGs per step in the main process is the bottleneck
    assert wait / wall > 0.25
    names = {e["name"] for e in trace(out / "rank0")["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")}
    assert names == {f"ProfilerStep#{i}" for i in range(6, 11)}

    # the screen: one step-time median, the run's and the traced step counts, no GPU talk on a
    # CPU run, and the next commands to try
    screen = res.stdout + res.stderr
    assert len(re.findall(r"\bmedian\b \d", screen)) == 1, screen
    assert "24 in the run, 5 traced" in screen
    assert "GPU computes" not in screen and "gpu-preprocess" not in screen
    assert not re.search(r"\s(True|False)\s*$", screen, re.M)  # flags read yes/no, not Python
    tail = screen.strip().splitlines()[-3:]
    assert tail[0].startswith("next: stallscope report") and "--html" in tail[0]
    assert "stallscope profile --auto-patch -- " in tail[2] and "demo.py" in tail[2]


def test_group_rational_matches_its_formula() -> None:
    import torch

    from stallscope.profiler.demo import GroupRational

    layer = GroupRational(8, groups=4, m=5, n=4)
    with torch.no_grad():
        layer.numerator.copy_(torch.randn(4, 6))
        layer.denominator.copy_(torch.randn(4, 4))
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    layer = layer.double()
    y = layer(x)
    for c in range(8):
        g = c // 2
        a, b = layer.numerator[g], layer.denominator[g]
        xc = x[:, c]
        p = sum(a[i] * xc**i for i in range(6))
        q = sum(b[j] * xc ** (j + 1) for j in range(4))
        torch.testing.assert_close(y[:, c], p / (1 + q.abs()))
    y.sum().backward()
    assert layer.numerator.grad is not None and torch.isfinite(layer.denominator.grad).all()
