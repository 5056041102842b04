"""The KAT-T-like benchmark model (bench/models/kat_vit.py): KAT's structure and keys, GR-KAN
layers recognised and swappable, and the fast and baseline kernels in a training step against the
paper's formula (under the Triton interpreter: on a plain CPU every implementation would run the
same PyTorch maths, and comparing them would compare a function with itself)."""

from __future__ import annotations

import pytest
import torch

import stallscope.fixes.flashkat.modules as modules
from bench.models.kat_vit import kat_tiny
from stallscope.fixes.flashkat.modules import baseline_rational, is_grkan_module, restore, use_fast_kernels
from tests.flashkat_interp import NEEDS_TRITON, run_under_interpreter


def test_kat_tiny_structure_and_keys():
    model = kat_tiny("reference")
    assert 5.6e6 < sum(p.numel() for p in model.parameters()) < 5.8e6  # KAT-T: 5.7 M
    keys = model.state_dict().keys()
    assert "blocks.0.mlp.act1.weight_numerator" in keys and "blocks.11.mlp.act2.weight_denominator" in keys
    acts = [name for name, m in model.named_modules() if is_grkan_module(m)]
    assert len(acts) == 24
    act1, act2 = model.blocks[0].mlp.act1, model.blocks[0].mlp.act2
    assert act1.mode == "identity" and act2.mode == "swish"
    assert act1.weight_denominator.shape == (8, 4) and act1.weight_numerator.shape == (1, 6)
    with pytest.raises(ValueError):
        kat_tiny("cuda-magic")


@NEEDS_TRITON
def test_kernels_in_a_kat_step_and_after_a_swap_match_the_paper_formula():
    """tests/flashkat_module_interp_cases.py under TRITON_INTERPRET=1: a 2-block KAT step's loss and
    gradients on the fast and on the baseline kernels against an independent implementation of
    the formula; every activation of a baseline model swapped to the fast kernels; KAT-like and
    FlashKAT-like modules swapped, forward and backward."""
    run_under_interpreter("flashkat_module_interp_cases.py")


def test_swap_every_activation_of_a_baseline_model(monkeypatch):
    """The swap routes every activation of the model through the fast path and restore routes it
    back; Parameters are untouched throughout."""
    calls = []

    def spy(x, numerator, denominator):
        calls.append(tuple(denominator.shape))
        return x  # whatever the fast path returns is what the model computes with

    monkeypatch.setattr(modules, "fast_rational", spy)
    model = kat_tiny("baseline", depth=2, img_size=32, num_classes=10)
    params = {name: id(p) for name, p in model.named_parameters()}
    x = torch.randn(1, 3, 32, 32)
    model(x)
    assert calls == []  # the baseline path never goes through the fast one
    handles = [use_fast_kernels(m) for m in model.modules() if is_grkan_module(m)]
    assert len(handles) == 4
    assert {name: id(p) for name, p in model.named_parameters()} == params
    model(x)
    assert calls == [(8, 4)] * 4  # each of the 4 activations, with its own (G, 4) denominator
    for h in handles:
        restore(h)
    assert all(m.rational is baseline_rational for m in model.modules() if is_grkan_module(m))
    model(x)
    assert len(calls) == 4
    assert {name: id(p) for name, p in model.named_parameters()} == params
