"""GR-KAN modules and the KAT-T-like model on the Triton kernels (fast and baseline) under
TRITON_INTERPRET=1, against the paper's formula (tests/flashkat_oracle.py).

Run by tests/test_flashkat_model.py in a subprocess (the variable must be set before triton
loads). On a plain CPU every implementation runs the same PyTorch maths; here the fast and
baseline implementations run their Triton kernels (counted, so a silent fallback fails), and the
reference is an independent implementation, so each comparison can fail. Small shapes: the
interpreter runs every program in numpy.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "run through tests/test_flashkat_model.py (needs TRITON_INTERPRET=1 before triton loads)",
        allow_module_level=True,
    )

from bench.models.kat_vit import kat_tiny  # noqa: E402
from stallscope.fixes.flashkat import baseline as _baseline  # noqa: E402
from stallscope.fixes.flashkat import kernels as _kernels  # noqa: E402
from stallscope.fixes.flashkat.modules import (  # noqa: E402
    is_grkan_module,
    reference_rational,
    restore,
    use_fast_kernels,
)
from tests.flashkat_oracle import grkan  # noqa: E402


def oracle_rational(x, numerator, denominator, num_groups=None):
    """The paper's formula in float64, returned in the input's dtype (a drop-in ``rational``)."""
    return grkan(x.double(), numerator.double(), denominator.double()).to(x.dtype)


@pytest.fixture
def kernel_calls(monkeypatch):
    """How often the fast and the baseline Triton autograd functions ran."""
    assert _kernels.INTERPRET
    calls = {"fast": 0, "baseline": 0}
    for key, cls in (("fast", _kernels.FlashKATRational), ("baseline", _baseline.RationalTriton1DGroup)):

        def counted(*args, _apply=cls.apply, _key=key):
            calls[_key] += 1
            return _apply(*args)

        monkeypatch.setattr(cls, "apply", staticmethod(counted))
    return calls


SMALL = dict(depth=2, img_size=32, dim=48, num_classes=10)  # KAT-T's structure, 8 groups of 6 and 24 channels


def _oracle_copy(model):
    other = copy.deepcopy(model)
    for m in other.modules():
        if is_grkan_module(m):
            m.rational = oracle_rational
    return other


def _close(a, b, rel=1e-4):
    """Equal up to float32 rounding against the largest magnitude of ``b``."""
    scale = float(b.abs().max())
    torch.testing.assert_close(a.double(), b.double(), rtol=rel, atol=rel * scale)


def test_kat_step_on_the_kernels_matches_the_paper_formula(kernel_calls):
    torch.manual_seed(0)
    ref = kat_tiny("reference", **SMALL)
    with torch.no_grad():  # block 1 off its init so every coefficient matters; block 0 keeps b = 0 in act1
        for act in (ref.blocks[1].mlp.act1, ref.blocks[1].mlp.act2):
            act.weight_numerator.add_(torch.randn_like(act.weight_numerator) * 0.05)
            act.weight_denominator.add_(torch.randn_like(act.weight_denominator) * 0.2)
    models = {"oracle": _oracle_copy(ref)}
    for impl in ("fast", "baseline"):
        models[impl] = kat_tiny(impl, **SMALL)
        models[impl].load_state_dict(ref.state_dict())
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    losses, grads = {}, {}
    for impl, m in models.items():
        loss = torch.nn.functional.cross_entropy(m(images), labels)
        loss.backward()
        losses[impl] = loss.item()
        grads[impl] = {n: p.grad.clone() for n, p in m.named_parameters()}
    assert kernel_calls == {"fast": 4, "baseline": 4}  # 2 blocks x 2 activations each, on the kernels
    act1_den = "blocks.0.mlp.act1.weight_denominator"
    assert torch.all(grads["oracle"][act1_den] != 0)  # b = 0 still learns (s(0) = +1)
    for impl in ("fast", "baseline"):
        assert losses[impl] == pytest.approx(losses["oracle"], rel=1e-5)
        for name in (
            act1_den,
            "blocks.1.mlp.act1.weight_numerator",
            "blocks.1.mlp.act2.weight_denominator",
            "blocks.0.mlp.fc1.weight",
            "patch_embed.weight",
        ):
            _close(grads[impl][name], grads["oracle"][name])


def test_swapping_every_activation_of_a_baseline_model_runs_the_fast_kernels(kernel_calls):
    torch.manual_seed(1)
    model = kat_tiny("baseline", **SMALL)
    oracle = _oracle_copy(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y_oracle = oracle(x)
        y_base = model(x)
        assert kernel_calls == {"fast": 0, "baseline": 4}
        handles = [use_fast_kernels(m) for m in model.modules() if is_grkan_module(m)]
        assert len(handles) == 4
        y_fast = model(x)
        assert kernel_calls == {"fast": 4, "baseline": 4}
        _close(y_fast, y_oracle, rel=1e-5)
        _close(y_base, y_oracle, rel=1e-5)
        for h in handles:
            restore(h)
        assert torch.equal(model(x), y_base)  # the baseline kernels again, same launch, same bits
    assert kernel_calls == {"fast": 4, "baseline": 8}


class _KATLike(torch.nn.Module):
    """kat_rational.KAT_Group's surface: a repeat'ed numerator and an instance ``rational``."""

    def __init__(self, groups=4):
        super().__init__()
        self.num_groups = groups
        self.weight_numerator = torch.nn.Parameter(torch.randn(1, 6) * 0.3)
        self.weight_denominator = torch.nn.Parameter(torch.randn(groups, 4) * 0.3)
        self.rational = reference_rational

    def forward(self, x):
        return self.rational(
            x, self.weight_numerator.repeat(self.num_groups, 1), self.weight_denominator, self.num_groups
        )


class _FlashLike(torch.nn.Module):
    """FlashKAT's surface: ``numerator_v`` / ``denominator_v`` and its own forward."""

    def __init__(self):
        super().__init__()
        self.numerator_v = torch.nn.Parameter(torch.randn(1, 6) * 0.3)
        self.denominator_v = torch.nn.Parameter(torch.randn(4, 4) * 0.3)

    def forward(self, x):
        return reference_rational(x, self.numerator_v, self.denominator_v)


@pytest.mark.parametrize("make", [_KATLike, _FlashLike])
def test_swapped_look_alikes_run_the_fast_kernels_forward_and_backward(kernel_calls, make):
    torch.manual_seed(2)
    mod = make()
    num, den = (p.detach() for p in mod.parameters())
    x = (torch.randn(2, 7, 16) * 3).requires_grad_()
    g = torch.randn(2, 7, 16)
    handle = use_fast_kernels(mod)
    y = mod(x)
    y.backward(g)
    assert kernel_calls["fast"] == 1
    x64 = x.detach().double().requires_grad_()
    n64, d64 = num.double().requires_grad_(), den.double().requires_grad_()
    grkan(x64, n64, d64).backward(g.double())
    _close(y.detach(), grkan(x.detach().double(), num.double(), den.double()), rel=1e-5)
    _close(x.grad, x64.grad, rel=1e-5)
    for p, want in zip(mod.parameters(), (n64.grad, d64.grad), strict=True):
        _close(p.grad, want)
    restore(handle)
    mod(x)
    assert kernel_calls["fast"] == 1  # restored: back on the module's own path
