"""memory-bound analyzer: the GR-KAN per-element-accumulation backward rule on real CPU traces
(ratio criterion) and on GPU fixtures (bandwidth criterion), plus its negatives."""
from __future__ import annotations

import torch

from tests.analyzer_traces import context, gpu_fixture, record, run


class RationalSerialGroup(torch.autograd.Function):
    """A rational activation whose backward accumulates coefficient gradients one element at a
    time (the serialised accumulation KAT's atomics amount to), on the CPU."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w / (1 + (x * w).abs())

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        q = 1 + (x * w).abs()
        gx = g * w / q**2
        contrib = (g * x / q**2).reshape(-1)
        gw = torch.zeros_like(w)
        group = torch.arange(x.numel()) % w.numel()
        for i in range(contrib.numel()):
            gw[group[i]] += contrib[i]
        return gx, gw


class RationalVectorGroup(RationalSerialGroup):
    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        q = 1 + (x * w).abs()
        return g * w / q**2, (g * x / q**2).sum(0)


X = torch.randn(16, 8)
W = torch.ones(8, requires_grad=True)


def test_serial_accumulation_backward_is_flagged_with_flashkat(tmp_path):
    ctx = context(record(tmp_path / "serial.json", lambda i: RationalSerialGroup.apply(X, W).sum().backward(), stacks=False))
    found = [f for f in run("memory-bound", ctx) if f.id == "grkan-atomic-backward"]
    assert found, "the rational backward was not recognised"
    f = found[0]
    assert f.fixes == ["flashkat"] and f.category == "memory-bound"
    assert f.evidence["backward_over_forward_x"] > 10
    assert f.where["autograd_nodes"] == ["RationalSerialGroupBackward"]
    assert f.evidence["bandwidth_check"].startswith("skipped")  # no GPU: ratio only, lower confidence
    assert f.confidence < 0.9


def test_vectorised_backward_is_not_flagged(tmp_path):
    ctx = context(record(tmp_path / "vec.json", lambda i: RationalVectorGroup.apply(X, W).sum().backward(), stacks=False))
    assert not [f for f in run("memory-bound", ctx) if f.id == "grkan-atomic-backward"]


def test_unrelated_backward_is_not_flagged(tmp_path):
    lin = torch.nn.Linear(8, 8)
    ctx = context(record(tmp_path / "lin.json", lambda i: lin(X).sum().backward(), stacks=False))
    assert run("memory-bound", ctx) == []


def test_gpu_baseline_grkan_backward_is_atomic_bound():
    f = [f for f in run("memory-bound", gpu_fixture("grkan_baseline")) if f.id == "grkan-atomic-backward"]
    assert f, "KAT-like baseline backward not flagged"
    ev = f[0].evidence
    assert ev["effective_bandwidth_pct_of_peak"] < 10 and ev["backward_over_forward_x"] > 10
    assert "rational_bwd_kernel" in " ".join(f[0].where["kernels"])


def test_gpu_fast_grkan_backward_is_not_flagged():
    found = run("memory-bound", gpu_fixture("grkan_fast"))
    assert not [f for f in found if f.id == "grkan-atomic-backward"]


def test_gpu_healthy_bf16_mlp_has_no_memory_bound_finding_of_note():
    found = run("memory-bound", gpu_fixture("healthy_bf16_mlp"))
    assert all(f.severity.rank < 2 for f in found), [(f.id, f.severity) for f in found]
