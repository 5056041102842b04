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


def _trace_alone(name: str):  # type: ignore[no-untyped-def]
    """The run's trace without its telemetry: nothing untraced to compare with."""
    ctx = _ctx(name)
    ctx.ranks[0].telemetry = {}
    return ctx


def test_host_that_keeps_pace_keeps_what_the_profiler_did_not_add():
    ctx = _ctx("pageable_float32_copies")
    found = run("host-bound", ctx)
    assert len(found) == 1
    f = found[0]
    added = f.evidence["profiler_added_ms_per_step"]
    assert added > 0 and "host_ahead" not in f.evidence
    trace_idle = f.evidence["trace_host_idle_pct"]
    assert 0 < f.impact.step_time_pct < trace_idle
    (alone,) = run("host-bound", _trace_alone("pageable_float32_copies"))
    assert (
        0 < f.impact.est_saving_ms_per_step < alone.impact.est_saving_ms_per_step
    )  # part of the idle was the profiler's
    assert f.severity.rank < alone.severity.rank


# The same recorded run with its untraced steps rewritten, so that what they say is known by
# construction: as slow as the traced steps (the profiler cost nothing), faster by twice the
# trace's host idle (all of it was the profiler's), far ahead of the GPU, or too few to compare.


def _per_step(name: str) -> tuple[float, float]:
    """(mean traced step, mean host idle in it), in ms: the inputs the rewrites are built from."""
    bd = _ctx(name).ranks[0].breakdown
    return sum(b.wall_ms for b in bd) / len(bd), sum(b.launch_overhead_ms + b.host_other_ms for b in bd) / len(bd)


def _untraced_rewritten(name: str, host_ms: float, gpu_ms: float, keep_steps: int | None = None):  # type: ignore[no-untyped-def]
    ctx = _ctx(name)
    rd = ctx.ranks[0]
    rows = np.flatnonzero(rd.untraced_step_mask())
    assert rows.size >= 3
    rd.telemetry["wall_ms"][rows] = host_ms
    rd.telemetry["gpu_ms"][rows] = gpu_ms
    if keep_steps is not None:
        rd.telemetry["wall_ms"][rows[keep_steps:]] = np.nan  # unmeasured steps do not count
    return ctx


def test_untraced_steps_as_slow_as_the_traced_ones_keep_the_whole_trace_idle():
    step_ms, _ = _per_step("pageable_float32_copies")
    (alone,) = run("host-bound", _trace_alone("pageable_float32_copies"))
    assert alone.severity.rank >= Severity.MEDIUM.rank  # what the trace alone says: a finding of note
    (f,) = run("host-bound", _untraced_rewritten("pageable_float32_copies", step_ms, step_ms))
    assert f.evidence["profiler_added_ms_per_step"] == pytest.approx(0.0, abs=1e-9)
    assert f.impact.est_saving_ms_per_step == pytest.approx(alone.impact.est_saving_ms_per_step, rel=1e-9)
    assert f.severity == alone.severity


def test_host_idle_that_the_profiler_added_is_not_a_finding():
    step_ms, idle_ms = _per_step("pageable_float32_copies")
    untraced = step_ms - 2 * idle_ms  # the profiler added more than all of the trace's host idle
    assert untraced > 0
    assert run("host-bound", _untraced_rewritten("pageable_float32_copies", untraced, untraced)) == []


def test_host_far_ahead_of_the_gpu_untraced_is_info_with_no_saving():
    step_ms, _ = _per_step("pageable_float32_copies")
    (f,) = run("host-bound", _untraced_rewritten("pageable_float32_copies", 0.5 * step_ms, step_ms))
    assert f.evidence["host_ahead"] is True
    assert f.severity == Severity.INFO and f.impact.est_saving_ms_per_step == 0
    assert "profiler" in f.title


def test_too_few_untraced_steps_leave_the_trace_as_it_is():
    step_ms, _ = _per_step("pageable_float32_copies")
    (alone,) = run("host-bound", _trace_alone("pageable_float32_copies"))
    # far ahead of the GPU, but in two steps only: not enough to overrule the trace
    (f,) = run("host-bound", _untraced_rewritten("pageable_float32_copies", 0.5 * step_ms, step_ms, keep_steps=2))
    assert f.evidence["untraced_steps"] == 2 and "host_ahead" not in f.evidence
    assert f.impact.est_saving_ms_per_step == pytest.approx(alone.impact.est_saving_ms_per_step, rel=1e-9)
    assert f.severity == alone.severity


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
    assert report["summary"]["step_time_ms"]["median"] == pytest.approx(
        float(np.median(np.maximum(wall, gpu))), rel=1e-3
    )
