"""Every registered analyzer: runs on an empty, a CPU-only and a GPU trace without raising, and
returns findings that serialize into the report schema; and each one finds the problem a recorded
trace was made to show, and not on that trace's healthy twin."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from stallscope.analyzers.base import CATEGORIES, Analyzer, Finding, Severity, registered_analyzers
from stallscope.analyzers.context import load_context
from stallscope.analyzers.report import schema
from stallscope.analyzers.run import run_analyzers
from tests.diagnose_traces import cpu_steps_trace, ddp_folder, empty_trace, gpu_fixture

ANALYZERS = sorted(registered_analyzers())
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gpu"


def _contexts(tmp_path: Path) -> dict:
    out = {
        "empty": load_context(empty_trace(tmp_path)),
        "cpu": load_context(cpu_steps_trace()),
        "cpu-ddp": load_context(ddp_folder()),
    }
    for name in ("train.pt.trace.json.gz", "tiny_kernels.pt.trace.json.gz"):
        p = gpu_fixture(name)
        if p is not None:
            out[f"gpu:{name}"] = load_context(p)
    return out


def test_registry_has_the_shipped_analyzers() -> None:
    assert {"input-pipeline", "host-bound"} <= set(ANALYZERS)


@pytest.mark.parametrize("name", ANALYZERS)
def test_analyzer_contract(name: str, tmp_path: Path) -> None:
    cls = registered_analyzers([name])[name]
    assert issubclass(cls, Analyzer) and cls.name == name
    finding_schema = {**schema()["$defs"]["finding"], "$defs": schema()["$defs"]}
    for label, ctx in _contexts(tmp_path).items():
        found = cls().analyze(ctx)  # directly, even when its requirements are missing
        assert isinstance(found, list), label
        if label == "empty":
            assert found == [], "a trace with no events has nothing to find"
        for f in found:
            assert isinstance(f, Finding), label
            assert f.category in CATEGORIES
            assert f.category == name, (label, f.id)  # the report groups findings by their analyzer's category
            assert 0.0 <= f.impact.step_time_pct <= 100.0 + 1e-9, (label, f.id, f.impact)
            assert f.impact.est_saving_ms_per_step >= 0.0, (label, f.id, f.impact)
            jsonschema.validate(f.to_dict(), finding_schema)


# ------------------------------------------------------------------------------------------------
# Each analyzer on a recorded trace made to show its problem, and on a healthy twin.
# GPU traces: tests/fixtures/make_analyzer_traces_gpu.py, make_gpu_traces.py and the H200 DDP runs;
# CPU traces are recorded here (torch.compile recompiling inside the window, a per-sentence BLEU
# loop with Python stacks), and gpu-health gets hand-written NVML samples (an H200 does not
# throttle on demand) on a real CPU trace, in nvml.csv's format with NVML's reason bits.


def _gpu(name: str) -> Callable[[Path], object]:
    return lambda tmp: load_context(FIXTURES / name)


def _compile_trace(recompile: bool) -> Callable[[Path], object]:
    def make(tmp: Path):  # noqa: ANN202
        import torch
        import torch.nn.functional as F

        from tests.analyzer_traces import record

        torch._dynamo.reset()
        try:
            torch.manual_seed(0)
            model = torch.compile(
                torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)), backend="eager"
            )
            model(torch.randn(8, 16))  # compiled before the trace window

            def step(i: int) -> None:
                n = 24 if recompile and i >= 2 else 8  # a new batch size inside the window fails a guard
                F.cross_entropy(model(torch.randn(n, 16)), torch.randint(0, 4, (n,))).backward()

            path = record(tmp / "compile.json", step, steps=3, stacks=False, warmup=1)
        finally:
            torch._dynamo.reset()
        return load_context(path)

    return make


def _bleu_trace(with_bleu: bool) -> Callable[[Path], object]:
    def make(tmp: Path):  # noqa: ANN202
        import torch

        from tests.analyzer_traces import record
        from tests.test_analyzer_cpu_metric import LIN, train_step_with_bleu

        def plain(i: int) -> None:  # ordinary Python work in the step, no metric
            out = LIN(torch.randn(40, 32))
            total = 0
            for k in range(20000):
                total += k % 7
            out.sum().backward()

        return load_context(record(tmp / "bleu.json", train_step_with_bleu if with_bleu else plain))

    return make


def _throttled(throttled: bool) -> Callable[[Path], object]:
    def make(tmp: Path):  # noqa: ANN202
        import torch

        from tests.analyzer_traces import record

        ctx = load_context(
            record(tmp / "t.json", lambda i: torch.mm(torch.randn(64, 64), torch.randn(64, 64)), stacks=False)
        )
        n = 10
        ctx.ranks[0].nvml = {
            "t_ns": np.arange(n, dtype=np.float64) * 4e7,
            "gpu_util_pct": np.full(n, 95.0),
            "sm_clock_mhz": np.full(n, 1200.0 if throttled else 1980.0),
            "sm_clock_max_mhz": np.full(n, 1980.0),
            "temp_c": np.full(n, 88.0),
            "clock_event_reasons": np.asarray(["0x20" if throttled else "0x0"] * n, dtype=object),  # 0x20: SW thermal
        }
        return ctx

    return make


# analyzer -> (trace that shows the problem, the finding id, a fix it must name or None, its healthy twin)
CASES: dict[str, tuple[Callable[[Path], object], str, str | None, Callable[[Path], object]]] = {
    "attention": (
        _gpu("attention_unfused_sampling.json.gz"),
        "unfused-attention",
        "sdpa",
        _gpu("healthy_bf16_mlp.json.gz"),
    ),
    "communication": (_gpu("ddp_h200/straggler_compute"), "comm-straggler", None, _gpu("ddp_h200/healthy")),
    "compile": (_compile_trace(True), "compile-in-step", None, _compile_trace(False)),
    "cpu-metric": (_bleu_trace(True), "cpu-metric-in-step", "tensorbleu", _bleu_trace(False)),
    "gpu-health": (_throttled(True), "gpu-throttled", None, _throttled(False)),
    "host-bound": (
        _gpu("tiny_kernels.pt.trace.json.gz"),
        "host-bound-launch-gaps",
        None,
        _gpu("healthy_bf16_mlp.json.gz"),
    ),
    "input-pipeline": (
        lambda tmp: load_context(cpu_steps_trace()),
        "input-pipeline-data-wait",
        "dataloader-workers",
        _gpu("healthy_bf16_mlp.json.gz"),
    ),
    "memory-bound": (_gpu("grkan_baseline.json.gz"), "grkan-atomic-backward", "flashkat", _gpu("grkan_fast.json.gz")),
    "memory-capacity": (
        _gpu("memory_near_capacity.json.gz"),
        "memory-near-capacity",
        None,
        _gpu("healthy_bf16_mlp.json.gz"),
    ),
    "memory-copy": (
        _gpu("copy_pageable_fp32.json.gz"),
        "pageable-copies",
        "pin-memory",
        _gpu("copy_pinned_uint8.json.gz"),
    ),
    "precision": (
        _gpu("gemm_fp32_no_tf32.json.gz"),
        "fp32-matmul-off-tensor-cores",
        "tf32",
        _gpu("gemm_fp32_tf32.json.gz"),
    ),
    "synchronization": (_gpu("sync_item_per_layer.json.gz"), "blocking-syncs", None, _gpu("sync_none.json.gz")),
}


def test_every_registered_analyzer_has_a_recorded_case() -> None:
    assert sorted(CASES) == ANALYZERS, "add a recorded trace that shows the new analyzer's problem to CASES"


@pytest.mark.parametrize("name", ANALYZERS)
def test_analyzer_finds_what_its_recorded_trace_was_made_to_show(name: str, tmp_path: Path) -> None:
    if name not in CASES:
        pytest.fail(f"{name} has no recorded case in CASES")
    make_problem, finding_id, fix, make_healthy = CASES[name]
    cls = registered_analyzers([name])[name]
    everything = cls().analyze(make_problem(tmp_path))
    found = [f for f in everything if f.id == finding_id]
    assert len(found) == 1, [f.id for f in everything]
    f = found[0]
    assert f.category == name
    assert f.severity.rank >= Severity.MEDIUM.rank, (f.severity, f.title)  # the planted problem is worth acting on
    assert f.evidence and f.title
    if fix is not None:
        assert fix in f.fixes, f.fixes
    (tmp_path / "healthy").mkdir()
    healthy = cls().analyze(make_healthy(tmp_path / "healthy"))
    assert [g.id for g in healthy if g.id == finding_id and g.severity.rank >= Severity.MEDIUM.rank] == [], [
        (g.id, g.severity.value, g.title) for g in healthy
    ]


def test_runner_skips_and_isolates_failures(tmp_path: Path) -> None:
    from stallscope.analyzers import base

    @base.register
    class Boom(Analyzer):
        name = "zz-test-boom"
        requires = frozenset({"trace"})

        def analyze(self, ctx):  # noqa: ANN001
            raise RuntimeError("kaput")

    try:
        ctx = load_context(cpu_steps_trace())
        res = run_analyzers(ctx)
        assert "zz-test-boom" in res.failed and "kaput" in res.failed["zz-test-boom"]
        assert any("zz-test-boom failed" in n for n in ctx.notices)
        assert "host-bound" in res.skipped and res.skipped["host-bound"] == ["gpu"]
        assert "input-pipeline" in res.ran
    finally:
        base._REGISTRY.pop("zz-test-boom", None)


def test_forked_workers_give_the_same_findings(monkeypatch) -> None:
    from stallscope.analyzers import base

    @base.register
    class Boom(Analyzer):
        name = "zz-test-boom-forked"
        requires = frozenset({"trace"})

        def analyze(self, ctx):  # noqa: ANN001
            ctx.notices.append("zz note from a worker")
            raise RuntimeError("kaput")

    try:
        monkeypatch.setenv("STALLSCOPE_ANALYZER_WORKERS", "1")
        ctx1 = load_context(cpu_steps_trace())
        one = run_analyzers(ctx1)
        monkeypatch.setenv("STALLSCOPE_ANALYZER_WORKERS", "2")
        ctx2 = load_context(cpu_steps_trace())
        two = run_analyzers(ctx2)
        assert [f.to_dict() for f in one.findings] == [f.to_dict() for f in two.findings]
        assert one.ran == two.ran and one.skipped == two.skipped and set(one.failed) == set(two.failed)
        assert "zz note from a worker" in ctx2.notices
    finally:
        base._REGISTRY.pop("zz-test-boom-forked", None)
