"""synchronization, memory-copy, precision and memory-capacity on small real GPU traces
(tests/fixtures/gpu, recorded by tests/fixtures/make_analyzer_traces_gpu.py; skipped until then)."""
from __future__ import annotations

from stallscope.analyzers.base import Severity
from tests.analyzer_traces import gpu_fixture, run


def test_item_per_layer_is_a_synchronization_finding_with_the_line():
    found = run("synchronization", gpu_fixture("sync_item_per_layer"))
    assert len(found) == 1
    f = found[0]
    assert f.evidence["syncs_per_step"] >= 8  # one per layer
    assert f.evidence["top_cause"].startswith(".item()")
    assert f.evidence["bubble_ms_per_step"] > 0
    assert any("make_analyzer_traces_gpu.py" in p for p in f.where.get("python", []))


def test_no_sync_workload_has_no_synchronization_finding_of_note():
    # the profiler itself may synchronise once around its own step marks; the workload does not
    found = run("synchronization", gpu_fixture("sync_none"))
    assert all(f.evidence["syncs_per_step"] <= 1 and f.severity.rank <= Severity.LOW.rank for f in found)


def test_pageable_float32_copy_calls_for_pin_memory():
    found = {f.id: f for f in run("memory-copy", gpu_fixture("copy_pageable_fp32"))}
    assert "pageable-copies" in found
    f = found["pageable-copies"]
    assert f.fixes == ["pin-memory"] and f.evidence["pageable_mb_per_step"] > 9  # 16x3x224x224 fp32 = 9.6 MB
    assert f.severity.rank >= Severity.MEDIUM.rank


def test_pinned_uint8_copy_is_not_pageable():
    assert not [f for f in run("memory-copy", gpu_fixture("copy_pinned_uint8")) if f.id == "pageable-copies"]


def test_fp32_gemm_without_tf32_is_a_precision_finding():
    found = run("precision", gpu_fixture("gemm_fp32_no_tf32"))
    assert len(found) == 1 and found[0].fixes == ["tf32", "amp"]
    assert found[0].severity == Severity.HIGH  # the step is nothing but fp32 GEMMs


def test_tf32_gemm_is_on_tensor_cores():
    assert run("precision", gpu_fixture("gemm_fp32_tf32")) == []


def test_bf16_training_has_no_precision_finding():
    assert run("precision", gpu_fixture("healthy_bf16_mlp")) == []


def test_memory_near_capacity_from_allocator_samples():
    found = run("memory-capacity", gpu_fixture("memory_near_capacity"))
    assert len(found) == 1
    f = found[0]
    assert f.evidence["peak_pct_of_capacity"] >= 90 and f.severity.rank >= Severity.MEDIUM.rank
    assert f.evidence["source"] == "allocator samples"


def test_healthy_gpu_trace_has_no_medium_findings():
    from stallscope.analyzers.run import run_analyzers

    result = run_analyzers(gpu_fixture("healthy_bf16_mlp"))
    loud = [(f.id, f.severity.value) for f in result.findings if f.severity.rank >= Severity.MEDIUM.rank]
    assert loud == []
