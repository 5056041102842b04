"""attention analyzer on real CPU traces (unfused vs fused attention, sampling vs training)
and on the GPU fixture."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.analyzer_traces import context, gpu_fixture, record, run

Q = torch.randn(1, 2, 128, 16)


def _unfused(i):
    with torch.no_grad():
        ((Q @ Q.transpose(-2, -1)) * 0.25).softmax(-1) @ Q


def test_unfused_attention_is_found_with_its_score_shape(tmp_path):
    found = run("attention", context(record(tmp_path / "u.json", _unfused, stacks=False)))
    unfused = [f for f in found if f.id == "unfused-attention"]
    assert unfused, found
    f = unfused[0]
    assert f.category == "attention" and "sdpa" in f.fixes
    assert f.evidence["score_shape"] == [1, 2, 128, 128]
    assert f.evidence["unfused_blocks_per_step"] == 1
    assert 0 < f.impact.step_time_pct <= 100
    # only three profiled steps: not an iterative sampler yet
    assert not [f for f in found if f.id == "attention-bound-sampling"]


def test_fused_sdpa_is_not_reported_as_unfused(tmp_path):
    def fused(i):
        with torch.no_grad():
            F.scaled_dot_product_attention(Q, Q, Q)

    found = run("attention", context(record(tmp_path / "f.json", fused, stacks=False)))
    assert not [f for f in found if f.id == "unfused-attention"]


def test_small_softmax_over_few_tokens_is_not_attention(tmp_path):
    x = torch.randn(4, 8, 16, 16)

    def small(i):
        with torch.no_grad():
            (x @ x).softmax(-1) @ x

    assert run("attention", context(record(tmp_path / "s.json", small, stacks=False))) == []


def test_iterative_inference_loop_is_attention_bound_sampling(tmp_path):
    ctx = context(record(tmp_path / "loop.json", _unfused, steps=21, stacks=False))
    ids = {f.id: f for f in run("attention", ctx)}
    assert "attention-bound-sampling" in ids
    assert "bottleneck-sampling" in ids["attention-bound-sampling"].fixes
    assert ids["attention-bound-sampling"].evidence["iterations"] >= 20


def test_training_with_backward_is_not_sampling(tmp_path):
    q = torch.randn(1, 2, 128, 16, requires_grad=True)

    def train(i):
        (((q @ q.transpose(-2, -1)) * 0.25).softmax(-1) @ q).sum().backward()

    found = run("attention", context(record(tmp_path / "t.json", train, steps=21, stacks=False)))
    assert not [f for f in found if f.id == "attention-bound-sampling"]
    assert [f for f in found if f.id == "unfused-attention"]


def test_gpu_unfused_attention_fixture():
    found = run("attention", gpu_fixture("attention_unfused_sampling"))
    assert [f for f in found if f.id == "unfused-attention" and f.evidence["score_shape"][-1] == 1024]
