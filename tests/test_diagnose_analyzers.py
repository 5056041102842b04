"""The two analyzers shipped with diagnose: input-pipeline and host-bound, on traces whose
answer is known from how they were made."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from stallscope.analyzers.builtin.host_bound import HostBound
from stallscope.analyzers.builtin.input_pipeline import InputPipeline
from stallscope.analyzers.context import load_context
from tests.diagnose_traces import STEPS_DATA_WAIT_FLOOR_MS, cpu_plain_trace, cpu_steps_trace, gpu_fixture


def _launch_bound_trace(path: Path, kernel_us: float, period_us: float, n: int = 200) -> Path:
    """One step in which the CPU launches ``n`` kernels back to back, one every ``period_us``."""
    T = 10_000.0
    ev = [{"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#0", "pid": 1, "tid": 1, "ts": T, "dur": n * period_us}]
    for i in range(n):
        t = T + i * period_us
        ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": t,
                   "dur": period_us * 0.8, "args": {"correlation": i + 1}})
        ev.append({"ph": "X", "cat": "kernel", "name": "tiny_add_kernel", "pid": 0, "tid": 7, "ts": t + period_us * 0.9,
                   "dur": kernel_us, "args": {"correlation": i + 1, "stream": 7, "device": 0}})
    path.write_text(json.dumps({"traceEvents": ev}))
    return path


def test_host_bound_flags_kernels_shorter_than_their_launch(tmp_path: Path) -> None:
    ctx = load_context(_launch_bound_trace(tmp_path / "t.json", kernel_us=2.0, period_us=6.0))
    (f,) = HostBound().analyze(ctx)
    assert f.category == "host-bound" and f.severity.value == "high"
    assert f.evidence["median_kernel_us"] == pytest.approx(2.0)
    assert f.evidence["launch_cost_us"] == pytest.approx(4.8)
    assert f.evidence["kernels_shorter_than_launch_pct"] == pytest.approx(100.0)
    assert f.impact.step_time_pct == pytest.approx(100.0 * 4.0 / 6.0, abs=1.0)


def test_host_bound_quiet_when_the_gpu_is_busy(tmp_path: Path) -> None:
    ctx = load_context(_launch_bound_trace(tmp_path / "t.json", kernel_us=60.0, period_us=60.0))
    assert HostBound().analyze(ctx) == []


def test_input_pipeline_grades_the_slow_loader() -> None:
    # the loader sleeps in every sample: >= STEPS_DATA_WAIT_FLOOR_MS of data wait per step, which
    # dominates the ~1 ms of compute by construction, so the share is far above the 20 % "high" cut
    (f,) = InputPipeline().analyze(load_context(cpu_steps_trace()))
    assert f.id == "input-pipeline-data-wait" and f.severity.value == "high"
    assert f.impact.est_saving_ms_per_step >= 0.98 * STEPS_DATA_WAIT_FLOOR_MS
    fast = InputPipeline().analyze(load_context(cpu_plain_trace()))  # no sleep in the loader
    assert not fast or fast[0].impact.step_time_pct < f.impact.step_time_pct


def test_gpu_fixture_tiny_kernels_host_bound() -> None:
    path = gpu_fixture("tiny_kernels.pt.trace.json.gz")
    if path is None:
        pytest.skip("GPU fixture tiny_kernels.pt.trace.json.gz not recorded yet")
    findings = HostBound().analyze(load_context(path))
    assert findings and findings[0].severity.value in ("medium", "high")
