"""gpu-health analyzer: NVML clock-event reasons decoded and graded. The GPU machine does not
throttle on demand, so the samples here are written out by hand in nvml.csv's format, with the
NVML reason bit values (0x20 SW thermal, 0x4 SW power cap) and a real CPU trace for the steps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stallscope.analyzers.base import Severity
from tests.analyzer_traces import context, record, run


def _ctx(tmp_path, reasons, sm_clock, util=95.0):
    ctx = context(
        record(tmp_path / "t.json", lambda i: torch.mm(torch.randn(64, 64), torch.randn(64, 64)), stacks=False)
    )
    n = len(reasons)
    ctx.ranks[0].nvml = {
        "t_ns": np.arange(n, dtype=np.float64) * 4e7,
        "gpu_util_pct": np.full(n, util),
        "sm_clock_mhz": np.asarray(sm_clock, dtype=np.float64),
        "sm_clock_max_mhz": np.full(n, 1980.0),
        "temp_c": np.full(n, 88.0),
        "clock_event_reasons": np.asarray(reasons, dtype=object),
    }
    return ctx


def test_thermal_throttling_while_busy_is_found(tmp_path):
    ctx = _ctx(tmp_path, ["0x20"] * 8 + ["0x0"] * 2, [1400.0] * 8 + [1980.0] * 2)
    found = run("gpu-health", ctx)
    assert len(found) == 1
    f = found[0]
    assert f.id == "gpu-throttled" and f.where["reasons"] == ["sw_thermal"]
    assert f.evidence["thermal_or_hw_throttled_pct_of_busy"] == 80.0
    assert f.severity.rank >= Severity.MEDIUM.rank


def _device_busy(ctx, share: float):
    """The same steps with the device busy for ``share`` of each (known by construction)."""
    rd = ctx.ranks[0]
    rd.breakdown = [
        dataclasses.replace(b, compute_ms=share * b.wall_ms, memory_ms=0.0, host_other_ms=(1 - share) * b.wall_ms)
        for b in rd.breakdown
    ]
    return ctx


def test_throttling_costs_only_while_the_device_is_busy(tmp_path):
    reasons, clocks = ["0x20"] * 8 + ["0x0"] * 2, [1400.0] * 8 + [1980.0] * 2
    (full,) = run("gpu-health", _device_busy(_ctx(tmp_path, reasons, clocks), 1.0))
    (half,) = run("gpu-health", _device_busy(_ctx(tmp_path, reasons, clocks), 0.5))
    # busy throughout, 80 % of the time at 1400 of 1980 MHz: the step is 23.4 % slower than at full clocks
    assert full.impact.step_time_pct == pytest.approx(100 * 0.8 * (1 - 1400 / 1980), rel=1e-6)
    assert half.impact.step_time_pct == pytest.approx(full.impact.step_time_pct / 2, rel=1e-6)
    (deeper,) = run("gpu-health", _device_busy(_ctx(tmp_path, reasons, [1000.0] * 8 + [1980.0] * 2), 1.0))
    assert deeper.impact.step_time_pct > full.impact.step_time_pct


def test_power_cap_is_at_most_low(tmp_path):
    found = run("gpu-health", _ctx(tmp_path, ["0x4"] * 10, [1700.0] * 10))
    assert len(found) == 1 and found[0].id == "gpu-power-capped" and found[0].severity.rank <= Severity.LOW.rank


def test_full_clocks_and_idle_throttling_are_healthy(tmp_path):
    assert run("gpu-health", _ctx(tmp_path, ["0x0"] * 10, [1980.0] * 10)) == []
    assert run("gpu-health", _ctx(tmp_path, ["0x20"] * 10, [800.0] * 10, util=5.0)) == []  # idle: costs nothing


def test_ecc_errors_growing_during_the_run_are_high(tmp_path):
    ctx = _ctx(tmp_path, ["0x0"] * 4, [1980.0] * 4)
    ctx.ranks[0].nvml["ecc_uncorrected"] = np.asarray([0.0, 0.0, 1.0, 1.0])
    found = [f for f in run("gpu-health", ctx) if f.id == "gpu-hardware-errors"]
    assert len(found) == 1 and found[0].severity == Severity.HIGH
    assert found[0].evidence["ecc_uncorrected_increase"] == 1.0
    ctx.ranks[0].nvml["ecc_uncorrected"] = np.asarray([3.0, 3.0, 3.0, 3.0])  # old errors, none new
    assert not [f for f in run("gpu-health", ctx) if f.id == "gpu-hardware-errors"]
