"""host-bound compares the trace with the steps the profiler did not trace (H200 run directories
recorded by ``bench/scenarios/run.py --keep-runs``: the scenarios healthy_cnn, before it moved to
NCHW, pageable_float32_copies, and healthy_cnn_compiled, the channels-last torch.compile version)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stallscope.analyzers.base import Severity
from stallscope.analyzers.builtin.host_bound import untraced_share
from stallscope.analyzers.context import load_context as load
from tests.analyzer_traces import run

RUNS = Path(__file__).parent / "fixtures" / "gpu" / "runs"


def _ctx(name: str):  # type: ignore[no-untyped-def]
    return load(RUNS / name)


def test_gaps_only_in_the_trace_are_not_a_host_bound_stall():
    ctx = _ctx("healthy_cnn")
    tel = ctx.ranks[0].telemetry
    out = (tel["in_window"] == 0) & (tel["step"] > 0)
    assert np.median(tel["wall_ms"][out]) < 0.6 * np.median(tel["gpu_ms"][out])  # the host is far ahead untraced
    found = run("host-bound", ctx)
    assert len(found) == 1
    f = found[0]
    assert f.evidence["trace_host_idle_pct"] > 20  # what the trace alone shows
    assert f.evidence["host_ahead"] is True
    assert f.severity == Severity.INFO and f.impact.est_saving_ms_per_step == 0
    assert "profiler" in f.title


def test_host_that_keeps_pace_keeps_what_the_profiler_did_not_add():
    ctx = _ctx("pageable_float32_copies")
    found = run("host-bound", ctx)
    assert len(found) == 1
    f = found[0]
    added = f.evidence["profiler_added_ms_per_step"]
    assert added > 0 and "host_ahead" not in f.evidence
    trace_idle = f.evidence["trace_host_idle_pct"]
    assert 0 < f.impact.step_time_pct < trace_idle
    rd = ctx.ranks[0]
    step_ms = sum(b.wall_ms for b in rd.breakdown) / len(rd.breakdown)
    idle_ms = sum(b.launch_overhead_ms + b.host_other_ms for b in rd.breakdown) / len(rd.breakdown)
    keep, _ = untraced_share(rd, step_ms, idle_ms)
    assert f.impact.est_saving_ms_per_step == pytest.approx(max(0.0, idle_ms - added), rel=1e-6)
    assert keep == pytest.approx(f.impact.est_saving_ms_per_step / idle_ms, rel=1e-6)


def test_a_plain_trace_has_nothing_to_compare_with():
    from tests.analyzer_traces import gpu_fixture

    ctx = gpu_fixture("sync_item_per_layer")
    keep, evidence = untraced_share(ctx.ranks[0], 10.0, 2.0)
    assert keep == 1.0 and evidence == {}


def test_warm_up_steps_before_the_window_are_not_the_steady_state():
    """The compiled CNN compiles and autotunes in its first steps (one takes 447 ms); compared
    with them, the trace's host time looked cheap and 5.6 % of GPU idle stayed a medium finding."""
    from stallscope.analyzers.run import run_analyzers

    ctx = _ctx("healthy_cnn_compiled")
    rd = ctx.ranks[0]
    tel = rd.telemetry
    steady = rd.untraced_step_mask()
    window = rd.meta["rank"]["window"]
    assert tel["step"][steady].min() > window["last_step"] + 1  # only steps after the window and its export
    warm = (tel["step"] > 0) & (tel["step"] < window["first_step"])
    assert tel["wall_ms"][warm].max() > 20 * np.median(tel["wall_ms"][steady])  # the warm-up is not steady
    found = run("host-bound", ctx)
    assert all(f.severity.rank <= Severity.LOW.rank for f in found)
    everything = run_analyzers(ctx, debug=True).findings
    assert [f.id for f in everything if f.severity.rank >= Severity.MEDIUM.rank] == []  # healthy reads healthy


def test_a_host_running_ahead_does_not_shorten_the_reported_step():
    """The compiled CNN's host issues a step in ~7.8 ms while the GPU takes 8.8 ms: the step time
    is the GPU's, not the host's."""
    from stallscope.analyzers.report import build_report

    report = build_report(RUNS / "healthy_cnn_compiled")
    rd = _ctx("healthy_cnn_compiled").ranks[0]
    steady = rd.untraced_step_mask()
    wall, gpu = rd.telemetry["wall_ms"][steady], rd.telemetry["gpu_ms"][steady]
    assert np.median(wall) < 0.95 * np.median(gpu)
    samples = report["summary"]["step_time_ms"]["samples"]
    assert samples == pytest.approx(list(np.maximum(wall, gpu)))
    assert report["summary"]["step_time_ms"]["median"] == pytest.approx(float(np.median(np.maximum(wall, gpu))), rel=1e-3)
