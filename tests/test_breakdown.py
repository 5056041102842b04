"""Step-time breakdown: parts partition the step (sum = wall within 1 %), rules as documented."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from stallscope.analyzers.breakdown import breakdown_pct, hta_temporal
from stallscope.analyzers.context import load_context
from stallscope.analyzers.model import StepBreakdown
from tests.diagnose_traces import (
    STEPS_DATA_WAIT_FLOOR_MS,
    cpu_nosteps_trace,
    cpu_plain_trace,
    cpu_steps_trace,
    ddp_folder,
    gpu_fixture,
)


def _assert_partition(items: list[StepBreakdown]) -> None:
    assert items
    for b in items:
        parts = b.parts()
        assert all(v >= 0 for v in parts.values()), parts
        assert sum(parts.values()) == pytest.approx(b.wall_ms, rel=0.01), (b, sum(parts.values()))
        assert b.comm_overlapped_ms <= b.wall_ms + 1e-9


@pytest.mark.parametrize("make", [cpu_steps_trace, cpu_plain_trace, cpu_nosteps_trace, ddp_folder])
def test_cpu_breakdown_sums_to_wall(make) -> None:
    ctx = load_context(make())
    for rd in ctx.ranks:
        _assert_partition(rd.breakdown)
        assert len(rd.breakdown) == len(rd.steps)
        assert all(b.sync_wait_ms == 0 and b.launch_overhead_ms == 0 for b in rd.breakdown)


def test_cpu_breakdown_sees_the_slow_dataloader() -> None:
    # the recorded loader sleeps in every sample, so each step waits at least the floor by construction
    # (2 % below it allows for the profiler's clock conversion, not for a slow machine)
    ctx = load_context(cpu_steps_trace())
    for b in ctx.ranks[0].breakdown:
        assert b.data_wait_ms >= 0.98 * STEPS_DATA_WAIT_FLOOR_MS
    pct = breakdown_pct(ctx.ranks[0].breakdown)
    assert pct["data_wait_pct"] > 5.0
    assert sum(v for k, v in pct.items() if k != "comm_overlapped_pct") == pytest.approx(100.0, abs=1.0)


def test_cpu_gloo_allreduce_counts_as_communication() -> None:
    ctx = load_context(ddp_folder())
    for rd in ctx.ranks:
        total = sum(b.comm_exposed_ms + b.comm_overlapped_ms for b in rd.breakdown)
        assert total > 0


def _x(name: str, cat: str, ts: float, dur: float, **args) -> dict:
    pid, tid = (0, 7) if cat in ("kernel", "gpu_memcpy", "gpu_memset") else (100, 100)
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur, "args": args}


def _hand_built_gpu_trace(path: Path) -> Path:
    """A minimal GPU timeline whose expected parts are worked out by hand in the test below."""
    T = 1_000_000.0  # an offset, so the ns conversion is exercised with large timestamps
    ev = [
        _x("ProfilerStep#1", "user_annotation", T + 0, 100),
        _x("ProfilerStep#2", "user_annotation", T + 100, 100),
        _x("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", "user_annotation", T + 0, 10),
        _x("aten::mm", "cpu_op", T + 10, 5, **{"External id": 11}),
        _x("cudaLaunchKernel", "cuda_runtime", T + 10, 4, correlation=1, **{"External id": 11}),
        _x("sm90_xmma_gemm", "kernel", T + 15, 25, correlation=1, stream=7, device=0, grid=[1, 1, 1], block=[128, 1, 1]),
        _x("cudaLaunchKernel", "cuda_runtime", T + 20, 4, correlation=2),
        _x("elementwise_kernel", "kernel", T + 40, 10, correlation=2, stream=7, device=0),
        _x("cudaLaunchKernel", "cuda_runtime", T + 25, 3, correlation=3),
        _x("ncclDevKernel_AllReduce_Sum_f32_RING_LL", "kernel", T + 45, 15, correlation=3, stream=8, device=0),
        _x("cudaMemcpyAsync", "cuda_runtime", T + 29, 2, correlation=4),
        _x("Memcpy DtoH (Device -> Pageable)", "gpu_memcpy", T + 60, 2, correlation=4, stream=7, device=0, bytes=4),
        _x("cudaStreamSynchronize", "cuda_runtime", T + 31, 32, correlation=5),
        _x("cudaLaunchKernel", "cuda_runtime", T + 80, 4, correlation=6),
        _x("vectorized_kernel", "kernel", T + 86, 9, correlation=6, stream=7, device=0),
        _x("cudaLaunchKernel", "cuda_runtime", T + 150, 4, correlation=7),
        _x("reduce_kernel", "kernel", T + 160, 10, correlation=7, stream=7, device=0),
    ]
    path.write_text(json.dumps({"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "NVIDIA H200"}], "traceEvents": ev}))
    return path


def test_gpu_rules_on_a_hand_built_timeline(tmp_path: Path) -> None:
    ctx = load_context(_hand_built_gpu_trace(tmp_path / "t.json"))
    s1, s2 = ctx.ranks[0].breakdown
    us = lambda v: round(v * 1000, 3)  # noqa: E731
    # step 1: [0,10) data; [10,15) launch (runtime call, then queued); [15,50) compute incl. the
    # nccl kernel's overlap [45,50); [50,60) comm only; [60,62) DtoH copy; [62,86) idle gap that
    # began inside cudaStreamSynchronize -> sync; [86,95) compute; [95,100) idle, gap runs to 160
    # (> 10 us) and no runtime call -> other host.
    assert (us(s1.data_wait_ms), us(s1.launch_overhead_ms), us(s1.compute_ms)) == (10, 5, 44)
    assert (us(s1.comm_exposed_ms), us(s1.comm_overlapped_ms), us(s1.memory_ms)) == (10, 5, 2)
    assert (us(s1.sync_wait_ms), us(s1.host_other_ms)) == (24, 5)
    # step 2: [100,150) other; [150,154) runtime + [154,160) queued -> launch; [160,170) compute;
    # [170,200) idle to the end of the trace -> other.
    assert (us(s2.host_other_ms), us(s2.launch_overhead_ms), us(s2.compute_ms)) == (80, 10, 10)
    _assert_partition([s1, s2])
    ev = ctx.ranks[0].events
    k = ev.rows_named(lambda s: s == "sm90_xmma_gemm")[0]
    assert ev.name_of(int(ev.launch_of[k])) == "cudaLaunchKernel"
    assert ev.name_of(int(ev.op_of[k])) == "aten::mm"
    assert ev.extra[int(k)]["grid"] == [1, 1, 1]
    assert int(ev.step[k]) == 1
    # HTA-equivalent figures: span of ops launched before the last ProfilerStep starts
    hta = hta_temporal(ctx.ranks[0])
    assert hta is not None
    assert hta["kernel_us"] == pytest.approx(95 - 15)
    assert hta["compute_us"] == pytest.approx(35 + 9)


def test_short_gaps_are_launch_overhead(tmp_path: Path) -> None:
    T = 5_000.0
    ev = [_x("ProfilerStep#0", "user_annotation", T, 100)]
    for i in range(10):  # 5 us kernels every 10 us: 5 us gaps, shorter than two launch costs
        ev.append(_x("cudaLaunchKernel", "cuda_runtime", T + 10 * i, 1, correlation=i + 1))
        ev.append(_x("tiny_kernel", "kernel", T + 10 * i + 5, 5, correlation=i + 1, stream=7, device=0))
    p = tmp_path / "tiny.json"
    p.write_text(json.dumps({"traceEvents": ev}))
    (b,) = load_context(p).ranks[0].breakdown
    assert b.compute_ms * 1000 == pytest.approx(50)
    assert b.launch_overhead_ms * 1000 == pytest.approx(50)


GPU_TRACES = ["train.pt.trace.json.gz", "tiny_kernels.pt.trace.json.gz", "nosteps.pt.trace.json.gz"]


@pytest.mark.parametrize("name", GPU_TRACES)
def test_gpu_fixture_breakdown_sums_to_wall(name: str) -> None:
    path = gpu_fixture(name)
    if path is None:
        pytest.skip(f"GPU fixture {name} not recorded yet (run tests/fixtures/make_gpu_traces.py on a GPU)")
    ctx = load_context(path)
    assert ctx.has("gpu")
    _assert_partition(ctx.ranks[0].breakdown)


def test_gpu_fixture_train_sees_sync_and_data() -> None:
    path = gpu_fixture("train.pt.trace.json.gz")
    if path is None:
        pytest.skip("GPU fixture train.pt.trace.json.gz not recorded yet")
    items = load_context(path).ranks[0].breakdown
    assert sum(b.data_wait_ms for b in items) > 0  # num_workers=0 DataLoader with the GPU idle
    assert sum(b.sync_wait_ms for b in items) > 0  # loss.item() every step
    assert sum(b.compute_ms for b in items) > 0


def test_gpu_fixture_tiny_kernels_are_launch_bound() -> None:
    path = gpu_fixture("tiny_kernels.pt.trace.json.gz")
    if path is None:
        pytest.skip("GPU fixture tiny_kernels.pt.trace.json.gz not recorded yet")
    pct = breakdown_pct(load_context(path).ranks[0].breakdown)
    assert pct["launch_overhead_pct"] + pct["host_other_pct"] > pct["compute_pct"]
