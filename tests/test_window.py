"""Analyzers' step window covers the GPU work the steps launched: hand-built timelines whose
window is known by construction, and the real H200 trace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stallscope.analyzers.builtin._common import window_ns
from stallscope.analyzers.context import load_context
from stallscope.analyzers.model import GPU_KINDS
from tests.analyzer_traces import run

TRAIN = Path(__file__).resolve().parent / "fixtures" / "gpu" / "train.pt.trace.json.gz"
T = 1_000_000.0  # microseconds; an offset so the ns conversion sees large timestamps


def _x(name: str, cat: str, ts: float, dur: float, **args) -> dict:
    pid, tid = (0, 7) if cat == "kernel" else (100, 100)
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": T + ts, "dur": dur, "args": args}


def _trace(path: Path, kernels: list[tuple[float, float]], launched_at: list[float]) -> Path:
    """Two steps, [0, 100) and [100, 200) us; kernel i (an fp32 SIMT GEMM) launched at
    ``launched_at[i]`` runs ``kernels[i]`` = (start, duration)."""
    ev = [_x("ProfilerStep#1", "user_annotation", 0, 100), _x("ProfilerStep#2", "user_annotation", 100, 100)]
    for i, ((start, dur), launch) in enumerate(zip(kernels, launched_at, strict=True)):
        ev.append(_x("cudaLaunchKernel", "cuda_runtime", launch, 2, correlation=i + 1))
        ev.append(_x(f"volta_sgemm_128x64_nn_{i}", "kernel", start, dur, correlation=i + 1, stream=7, device=0))
    path.write_text(json.dumps({"schemaVersion": 1, "traceEvents": ev}))
    return path


def test_gpu_work_finishing_inside_the_steps_leaves_the_window_at_the_steps(tmp_path: Path) -> None:
    rd = load_context(_trace(tmp_path / "t.json", [(20, 30), (120, 50)], [10, 110])).ranks[0]
    assert window_ns(rd) == (200_000, 2)


def test_gpu_work_running_past_the_last_step_extends_the_window(tmp_path: Path) -> None:
    # the second step's kernel is queued behind the CPU and runs until 350 us
    rd = load_context(_trace(tmp_path / "t.json", [(20, 30), (180, 170)], [10, 150])).ranks[0]
    assert window_ns(rd) == (350_000, 2)


def test_gpu_work_launched_before_the_steps_does_not_extend_the_window(tmp_path: Path) -> None:
    # launched before the first step (not the steps' work), though it runs until 400 us
    rd = load_context(_trace(tmp_path / "t.json", [(20, 30), (-5, 405)], [10, -10])).ranks[0]
    assert window_ns(rd) == (200_000, 2)


def test_shares_of_step_time_are_taken_over_the_gpu_work_too(tmp_path: Path) -> None:
    # the fp32 GEMMs run 30 + 170 us of the 350 us the steps' work spans: 57 %, where the CPU
    # step markers alone (200 us) would make it 100 %
    (f,) = run("precision", load_context(_trace(tmp_path / "t.json", [(20, 30), (180, 170)], [10, 150])))
    assert f.evidence["fp32_gemm_pct_of_step"] == pytest.approx(100.0 * 200 / 350)


@pytest.mark.skipif(not TRAIN.is_file(), reason="GPU fixture not recorded")
def test_window_ends_at_the_last_gpu_work_of_the_steps() -> None:
    rd = load_context(TRAIN).ranks[0]
    ev = rd.events
    total, n = window_ns(rd)
    assert n == len(rd.steps) > 0
    gpu = np.flatnonzero(np.isin(ev.kind, np.asarray(GPU_KINDS, dtype=ev.kind.dtype)) & (ev.step >= 0))
    gpu_end = int((ev.ts_ns[gpu] + ev.dur_ns[gpu]).max())
    assert total >= sum(s.end_ns - s.start_ns for s in rd.steps)  # never shorter than the steps
    assert total >= gpu_end - rd.steps[0].start_ns  # covers the steps' GPU work
