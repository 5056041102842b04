"""The KAT-T-like benchmark model (bench/models/kat_vit.py) on the CPU: KAT's structure and keys,
GR-KAN layers recognised and swappable, all three implementations agree."""
from __future__ import annotations

import pytest
import torch

from bench.models.kat_vit import kat_tiny
from stallscope.fixes.flashkat.modules import is_grkan_module, restore, use_fast_kernels


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


def test_small_kat_step_same_for_every_implementation_on_cpu():
    torch.manual_seed(0)
    models = {act: kat_tiny(act, depth=2, img_size=32, num_classes=10) for act in ("reference", "fast", "baseline")}
    state = models["reference"].state_dict()
    for m in models.values():
        m.load_state_dict(state)
    images = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([1, 7])
    losses, grads = {}, {}
    for act, m in models.items():
        loss = torch.nn.functional.cross_entropy(m(images), labels)
        loss.backward()
        losses[act] = loss.item()
        grads[act] = m.blocks[1].mlp.act1.weight_denominator.grad.clone()
    assert losses["fast"] == pytest.approx(losses["reference"], rel=1e-6)
    assert losses["baseline"] == pytest.approx(losses["reference"], rel=1e-6)
    assert grads["reference"].abs().sum() > 0  # identity-initialised act1 still learns its denominator
    torch.testing.assert_close(grads["fast"], grads["reference"])


def test_swap_every_activation_of_a_baseline_model():
    model = kat_tiny("baseline", depth=2, img_size=32, num_classes=10)
    params = {name: id(p) for name, p in model.named_parameters()}
    handles = [use_fast_kernels(m) for m in model.modules() if is_grkan_module(m)]
    assert len(handles) == 4
    assert {name: id(p) for name, p in model.named_parameters()} == params
    x = torch.randn(1, 3, 32, 32)
    y_fast = model(x)
    for h in handles:
        restore(h)
    torch.testing.assert_close(model(x), y_fast)
