"""The views of analyzers/views/: CPU ops, modules, memory, streams and the trace diff.

Real traces are recorded here on the CPU with torch.profiler, with the expensive part known by
construction (a module doing two large matmuls, a held buffer of known size, a matmul on a 4x
larger input); tiny hand-written traces pin exact figures (self time, roles, queue length).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from stallscope.analyzers.context import load_context
from stallscope.analyzers.views import memory_view, module_time, stream_view, top_cpu_ops, trace_diff
from stallscope.analyzers.views.render import CpuOpsView, MemoryView, ModulesView, StreamsView, TraceDiffView
from tests.analyzer_traces import gpu_fixture

HOLD_ELEMS = 4 * 2**20  # float32: a 16 MB buffer held across each step's forward and backward
HOLD_MB = HOLD_ELEMS * 4 / 2**20


def _record(path: Path, step_fn: Callable[[], None], steps: int = 3, **options: Any) -> Path:
    """Run ``step_fn`` for one warm-up and ``steps`` profiled steps; export the trace to ``path``."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loaded 2-core machine: no spinning intra-op workers
    try:
        with profile(
            activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=1, active=steps, repeat=1), **options
        ) as prof:
            for _ in range(steps + 1):
                step_fn()
                prof.step()
    finally:
        torch.set_num_threads(threads)
    prof.export_chrome_trace(str(path))
    return path


@pytest.fixture(scope="module")
def model_ctx(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A training loop whose ``Heavy`` submodule does two 1024x512x512 matmuls (the rest is tiny),
    recorded with Python stacks, module ranges and allocator samples; each step holds a
    ``HOLD_MB`` buffer from its start until just before it ends."""
    import torch
    from torch import nn

    class Heavy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(512, 512) / 23)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x @ self.w) @ self.w

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.heavy, self.out = nn.Linear(16, 512), Heavy(), nn.Linear(512, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.heavy(torch.relu(self.inp(x))))

    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(1024, 16)

    def step() -> None:
        hold = torch.ones(HOLD_ELEMS)
        loss = net(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        del hold

    path = tmp_path_factory.mktemp("views") / "model.json"
    _record(path, step, record_shapes=True, with_stack=True, with_modules=True, profile_memory=True)
    return load_context(path)


@pytest.fixture(scope="module")
def diff_ctxs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A: a 256x512x512 matmul and a sum per step. B: the matmul on 4x the rows, and a cumsum added."""
    import torch

    w = torch.randn(512, 512)
    small, big = torch.randn(256, 512), torch.randn(1024, 512)
    folder = tmp_path_factory.mktemp("views-diff")

    def step_a() -> None:
        torch.mm(small, w).sum()

    def step_b() -> None:
        torch.mm(big, w).sum()
        torch.cumsum(small, 0)

    a = _record(folder / "a.json", step_a, record_shapes=True)
    b = _record(folder / "b.json", step_b, record_shapes=True)
    return load_context(a), load_context(b)


def _write(path: Path, events: list[dict[str, Any]]) -> Any:
    """A hand-written Kineto trace (times in microseconds), loaded."""
    with gzip.open(path, "wt") as fh:
        json.dump({"traceEvents": events}, fh)
    return load_context(path)


def _op(name: str, ts: float, dur: float, tid: int = 1, cat: str = "cpu_op", **args: Any) -> dict[str, Any]:
    return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": 1000.0 + ts, "dur": dur, "args": args}


def _row(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, rows)
    return found[0]


def test_top_cpu_ops_puts_the_heavy_matmul_first_with_self_below_its_parent(model_ctx: Any) -> None:
    rows = top_cpu_ops(model_ctx, limit=100)
    assert rows[0]["name"] == "aten::mm"  # Heavy's matmuls and their gradients
    assert {"loop", "autograd"} <= {r["role"] for r in rows}
    fwd_mm, matmul = _row(rows, name="aten::mm", role="loop"), _row(rows, name="aten::matmul", role="loop")
    assert fwd_mm["self_ms_per_step"] < matmul["total_ms_per_step"]
    assert matmul["self_ms_per_step"] < 0.5 * matmul["total_ms_per_step"]  # its time is its child mm's
    assert all(r["self_ms_per_step"] <= r["total_ms_per_step"] + 1e-9 for r in rows)
    assert [r["self_ms_per_step"] for r in rows] == sorted((r["self_ms_per_step"] for r in rows), reverse=True)
    assert not any(r["name"].startswith("ProfilerStep#") for r in rows)


def test_cpu_ops_self_time_and_roles_on_a_constructed_trace(tmp_path: Path) -> None:
    ctx = _write(
        tmp_path / "roles.json.gz",
        [
            _op("ProfilerStep#0", 0, 1000, cat="user_annotation"),
            _op("aten::linear", 100, 200),
            _op("aten::addmm", 110, 180),
            _op("autograd::engine::evaluate_function: AddBackward0", 700, 100),  # backward on the loop thread
            _op("aten::add", 710, 80),
            _op("autograd::engine::evaluate_function: MmBackward0", 400, 200, tid=2),  # autograd's thread
            _op("MmBackward0", 405, 190, tid=2),
            _op("aten::mm", 410, 180, tid=2),
            _op("aten::copy_", 0, 50, tid=3),
        ],
    )
    rows = top_cpu_ops(ctx)
    assert _row(rows, name="aten::linear") == {
        "name": "aten::linear",
        "role": "loop",
        "count": 1,
        "calls_per_step": 1.0,
        "total_ms_per_step": pytest.approx(0.2),
        "self_ms_per_step": pytest.approx(0.02),
        "self_pct_of_step": pytest.approx(2.0),
    }
    assert _row(rows, name="aten::mm")["role"] == "autograd"
    assert _row(rows, name="MmBackward0")["self_ms_per_step"] == pytest.approx(0.01)
    assert _row(rows, name="aten::add")["role"] == "autograd"
    assert _row(rows, name="aten::copy_")["role"] == "other"
    assert [r["name"] for r in rows[:2]] == ["aten::addmm", "aten::mm"]  # 180 us of self time each


def test_module_time_names_the_heavy_submodule(model_ctx: Any, diff_ctxs: tuple[Any, Any]) -> None:
    rows = module_time(model_ctx)
    by_self = max(rows, key=lambda r: r["self_ms_per_step"])
    assert by_self["module"].startswith("Heavy_")
    assert by_self["parent"].startswith("Net_") and by_self["depth"] == 1
    children = [r for r in rows if r["depth"] >= 1]
    assert max(children, key=lambda r: r["forward_ms_per_step"]) is by_self
    root = _row(rows, depth=0)
    assert root["forward_ms_per_step"] >= by_self["forward_ms_per_step"]
    no_stacks = module_time(diff_ctxs[0])
    assert no_stacks == [] and "--stack" in (no_stacks.note or "")


def test_memory_view_sees_the_held_buffer(model_ctx: Any) -> None:
    view = memory_view(model_ctx)
    assert view is not None and view["device"] == "cpu"
    assert len(view["steps"]) == 3
    for s in view["steps"]:
        assert s["peak_allocated_mb"] >= HOLD_MB
        assert s["allocated_end_mb"] <= s["peak_allocated_mb"] - 0.99 * HOLD_MB  # freed before the step ended
    peak = view["peak"]
    biggest = peak["live"][0]
    assert biggest["mb"] >= HOLD_MB and "aten::ones" in (biggest["op"], biggest["caller"])
    assert biggest["step"] == peak["step"]
    assert [a["mb"] for a in peak["live"]] == sorted((a["mb"] for a in peak["live"]), reverse=True)
    assert peak["tracked_mb"] + peak["untracked_mb"] == pytest.approx(peak["allocated_mb"])


def test_memory_view_is_none_without_samples(diff_ctxs: tuple[Any, Any]) -> None:
    assert memory_view(diff_ctxs[0]) is None


def test_trace_diff_of_two_recordings(diff_ctxs: tuple[Any, Any]) -> None:
    diff = trace_diff(*diff_ctxs, limit=100)
    assert diff["steps"] == {"a": 3, "b": 3} and not diff["tested"] and "fewer than 5" in diff["note"]
    ops = {r["name"]: r for r in diff["ops"]}
    assert ops["aten::cumsum"]["status"] == "added" and ops["aten::cumsum"]["a_ms_per_step"] == 0
    assert ops["aten::mm"]["status"] == "slower" and ops["aten::mm"]["ratio"] > 1
    assert ops["aten::mm"]["p_value"] is None
    assert diff["counts"]["ops"]["added"] >= 1 and diff["kernels"] == []
    deltas = [abs(r["delta_ms_per_step"]) for r in diff["ops"]]
    assert deltas == sorted(deltas, reverse=True)


def _diff_trace(tmp_path: Path, name: str, slow_us: float, gone: str, extra: str) -> Any:
    """Six 1 ms steps: ``a<b>&c`` takes ``slow_us`` (+i), ``same`` 50 us, and ``gone``/``extra``
    occur on this side only; a kernel ``kern`` of 30 us (A) or 10 us (B)."""
    events = []
    for i in range(6):
        t0 = i * 1000.0
        events += [
            _op(f"ProfilerStep#{i}", t0, 1000, cat="user_annotation"),
            _op("a<b>&c", t0 + 10, slow_us + i),
            _op("same", t0 + 500, 50),
            _op(gone or extra, t0 + 600, 20),
            _op("cudaLaunchKernel", t0 + 700, 5, cat="cuda_runtime", correlation=100 + i),
            _op("kern", t0 + 710, 30 if gone else 10, tid=7, cat="kernel", correlation=100 + i, stream=7, device=0),
        ]
    return _write(tmp_path / f"{name}.json.gz", events)


def test_trace_diff_tests_significance_with_five_steps_or_more(tmp_path: Path) -> None:
    a = _diff_trace(tmp_path, "a", 100, gone="aten::old", extra="")
    b = _diff_trace(tmp_path, "b", 200, gone="", extra="aten::new")
    diff = trace_diff(a, b)
    assert diff["tested"] and diff["note"] is None
    ops = {r["name"]: r for r in diff["ops"]}
    assert ops["a<b>&c"]["status"] == "slower" and ops["a<b>&c"]["p_value"] < 0.01
    assert ops["a<b>&c"]["ratio"] == pytest.approx(202.5 / 102.5)
    assert ops["aten::old"]["status"] == "removed" and ops["aten::new"]["status"] == "added"
    assert "same" not in ops and diff["counts"]["ops"]["unchanged"] == 1
    assert diff["kernels"][0]["name"] == "kern" and diff["kernels"][0]["status"] == "faster"
    assert diff["kernels"][0]["delta_ms_per_step"] == pytest.approx(-0.02)
    view = TraceDiffView(diff)
    assert "a&lt;b&gt;&amp;c" in view.to_html() and "a<b>" not in view.to_html()
    assert any("`a<b>&c`" in line for line in view.to_markdown())


def test_streams_on_a_cpu_trace_say_there_are_none(diff_ctxs: tuple[Any, Any]) -> None:
    rows = stream_view(diff_ctxs[0])
    assert rows == [] and "no GPU events" in (rows.note or "")


def test_stream_queue_and_idle_on_a_constructed_trace(tmp_path: Path) -> None:
    # three launches at 10, 11, 12 us; kernels [20, 30), [30, 40), [50, 60) us in a 100 us step
    events = [_op("ProfilerStep#0", 0, 100, cat="user_annotation")]
    for i, (launch, start) in enumerate(((10, 20), (11, 30), (12, 50))):
        events.append(_op("cudaLaunchKernel", launch, 0.5, cat="cuda_runtime", correlation=i + 1))
        events.append(_op(f"k{i}", start, 10, tid=7, cat="kernel", correlation=i + 1, stream=7, device=0))
    (row,) = stream_view(_write(tmp_path / "gpu.json.gz", events))
    assert (row["device"], row["stream"], row["ops"]) == (0, 7, 3)
    assert row["busy_pct"] == pytest.approx(30.0) and row["idle_pct"] == pytest.approx(70.0)
    assert row["idle_host_wait_pct"] == pytest.approx(50.0)  # [0, 10) and [60, 100): nothing queued
    assert row["idle_queued_pct"] == pytest.approx(20.0)  # [10, 20) and [40, 50): launched, not started
    assert row["queue_max"] == 3
    assert row["queue_mean"] == pytest.approx((1 * 1 + 2 * 1 + 3 * 18 + 2 * 10 + 1 * 20) / 100)


def test_streams_on_a_recorded_gpu_trace() -> None:
    rows = stream_view(gpu_fixture("sync_none"))
    assert rows
    for r in rows:
        assert r["busy_pct"] + r["idle_pct"] == pytest.approx(100.0)
        assert r["idle_host_wait_pct"] + r["idle_queued_pct"] == pytest.approx(r["idle_pct"])
        assert r["queue_max"] >= 1 and 0 < r["busy_pct"] <= 100


def test_every_view_renders_three_ways(model_ctx: Any, diff_ctxs: tuple[Any, Any]) -> None:
    views = [
        (CpuOpsView(top_cpu_ops(model_ctx)), "aten::mm"),
        (ModulesView(module_time(model_ctx)), "Heavy_0"),
        (MemoryView(memory_view(model_ctx)), "aten::"),
        (StreamsView(stream_view(model_ctx)), "no GPU events"),
        (MemoryView(None), "--memory"),
        (TraceDiffView(trace_diff(*diff_ctxs)), "aten::cumsum"),
    ]
    for view, text in views:
        console = Console(record=True, width=200)
        console.print(view)
        assert text in console.export_text()
        assert any(text in line for line in view.to_markdown())
        assert text in view.to_html()


def test_view_rows_dump_as_plain_yaml(diff_ctxs: tuple[Any, Any]) -> None:
    import yaml

    rows = top_cpu_ops(diff_ctxs[0], limit=3)
    back = yaml.safe_load(yaml.safe_dump(rows.to_dict()))
    assert back["rows"] == list(rows) and back["note"] is None and len(back["rows"]) == 3
