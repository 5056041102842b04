"""GR-KAN reference maths and modules on the CPU (PyTorch path; no Triton needed)."""

from __future__ import annotations

import pytest
import torch

import stallscope.fixes.flashkat.modules as modules
from stallscope.fixes.flashkat import reference as R
from stallscope.fixes.flashkat.modules import (
    INIT_COEFFICIENTS,
    BaselineKATGroup,
    KATGroup,
    is_grkan_module,
    reference_rational,
    restore,
    use_fast_kernels,
    why_not_fast,
)
from tests.flashkat_oracle import grkan, grkan_fp64


def _away_from_zero(shape, scale=2.0, gen=None):
    v = torch.randn(shape, dtype=torch.float64, generator=gen) * scale
    return v + torch.where(v < 0, -0.1, 0.1).to(v.dtype)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("shape,groups", [((2, 5, 24), 4), ((7, 12), 3), ((3, 4, 8), 8), ((2, 3, 6), 1)])
def test_reference_matches_independent_autograd(shape, groups, shared):
    """The module's maths against the paper's formula through autograd (tests/flashkat_oracle.py),
    with an exact zero of x and a b = 0 coefficient, where the sign convention s(0) = +1 decides."""
    gen = torch.Generator().manual_seed(1)
    x = _away_from_zero(shape, gen=gen)
    x.view(-1)[0] = 0.0
    x.requires_grad_()
    num = (torch.randn(1 if shared else groups, 6, dtype=torch.float64, generator=gen) * 0.5).requires_grad_()
    den = _away_from_zero((groups, 4), 0.3, gen)
    den[0, 1] = 0.0
    den.requires_grad_()
    g = torch.randn(shape, dtype=torch.float64, generator=gen)
    y_ref = grkan(x, num, den)
    y_ref.backward(g)
    y = R.reference_fp64(x.detach(), num.detach(), den.detach())
    dx, dn, dd = R.reference_grads_fp64(x.detach(), num.detach(), den.detach(), g)
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx, x.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dn, num.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dd, den.grad, rtol=1e-10, atol=1e-10)
    assert dn.shape == num.shape and dd.shape == den.shape


def test_gradcheck_reference_3d_and_2d():
    gen = torch.Generator().manual_seed(2)
    for shape, groups in (((2, 3, 16), 4), ((3, 5), 5)):
        x = _away_from_zero(shape, gen=gen).requires_grad_()
        num = (torch.randn(1, 6, dtype=torch.float64, generator=gen) * 0.4).requires_grad_()
        den = _away_from_zero((groups, 4), 0.3, gen).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda a, b, c, groups=groups: reference_rational(a, b, c, groups), (x, num, den)
        )


def test_identity_init_gets_nonzero_denominator_gradient():
    act = KATGroup(num_groups=4, mode="identity", impl="reference")
    x = torch.randn(2, 5, 16)
    y = act(x)
    torch.testing.assert_close(y, x)  # identity init is exact
    y.pow(2).sum().backward()
    assert torch.all(act.weight_denominator.grad.abs().sum(dim=1) > 0), "b = 0 must still receive a gradient (s(0)=+1)"
    # with s(0) = +1, dB_j = sum(-g * P/Q^2 * |x|^j) = sum(-2 x^2 |x|^j) < 0 for every j
    assert torch.all(act.weight_denominator.grad < 0)


def test_sign_convention_at_zero():
    x = torch.zeros(1, 1, 2, dtype=torch.float64)
    num = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    den = torch.tensor([[0.5, 0.0, 0.0, 0.0]], dtype=torch.float64)
    dx, _, _ = R.reference_grads_fp64(x, num, den, torch.ones_like(x))
    # at x = 0: P' = 1, Q = 1, P = 0, so dx = 1 regardless of the sign of Q'
    torch.testing.assert_close(dx, torch.ones_like(x))
    assert R.sign_of(torch.tensor([0.0, -0.0, -1e-30, 3.0])).tolist() == [1.0, 1.0, -1.0, 1.0]


def test_swish_init_is_swish_and_gelu_caveat():
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    num, den = INIT_COEFFICIENTS["swish"]
    y = R.reference_fp64(x[:, None], torch.tensor([num]), torch.tensor([den]))[:, 0]
    assert (y - x * torch.sigmoid(x)).abs().max() < 1e-5
    num, den = INIT_COEFFICIENTS["gelu"]
    y = R.reference_fp64(x[:, None], torch.tensor([num]), torch.tensor([den]))[:, 0]
    # documented caveat: the kernels' denominator form makes the fitted gelu drift (F(3) ~ 1.53)
    assert abs(float(y[-1]) - 1.53) < 0.05


def test_module_matches_kat_parameter_contract():
    act = KATGroup(num_groups=8, mode="swish")
    assert act.weight_numerator.shape == (1, 6) and act.weight_denominator.shape == (8, 4)
    assert set(act.state_dict()) == {"weight_numerator", "weight_denominator"}
    assert act.order == (5, 4) and act.num_groups == 8 and callable(act.rational)
    assert "num_groups=8, order=(5, 4)" in repr(act)
    with pytest.warns(UserWarning):
        import stallscope.fixes.flashkat.modules as m

        m._gelu_warned = False
        KATGroup(num_groups=2, mode="gelu")
    with pytest.raises(ValueError):
        KATGroup(mode="relu")


def test_cpu_module_runs_reference_maths_and_autocast_gives_fp32():
    torch.manual_seed(3)
    act = BaselineKATGroup(num_groups=4, mode="swish")
    with torch.no_grad():
        act.weight_denominator.add_(torch.randn(4, 4) * 0.2)
    x = torch.randn(2, 9, 32) * 3
    y = act(x)
    want = grkan_fp64(x, act.weight_numerator, act.weight_denominator)[0]
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)
    xb = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = act(xb)
    assert yb.dtype == torch.float32
    yb.sum().backward()
    assert xb.grad.dtype == torch.bfloat16
    empty = act(torch.empty(0, 5, 32))
    assert empty.shape == (0, 5, 32)
    y2 = act(x[:, 0])  # 2-D input
    torch.testing.assert_close(y2, y[:, 0])


def test_bad_shapes_raise_one_clear_error():
    act = KATGroup(num_groups=8, mode="identity", impl="reference")
    with pytest.raises(ValueError, match="multiple of the group count"):
        act(torch.randn(2, 3, 20))


class _KATLike(torch.nn.Module):
    """Mimics kat_rational.KAT_Group's surface: repeat'ed numerator, instance ``rational``."""

    def __init__(self, groups=4):
        super().__init__()
        self.num_groups = groups
        self.order = (5, 4)
        self.weight_numerator = torch.nn.Parameter(torch.randn(1, 6) * 0.3)
        self.weight_denominator = torch.nn.Parameter(torch.randn(groups, 4) * 0.3)
        self.rational = reference_rational
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.rational(
            x, self.weight_numerator.repeat(self.num_groups, 1), self.weight_denominator, self.num_groups
        )


def _fast_path_spy(monkeypatch) -> list:
    """Replace the fast path with a recorder: (x, numerator, denominator) of each call; it returns
    a tensor no GR-KAN maths would, so the caller can tell whose result it got. (Whether the fast
    kernels compute the right thing is checked under the Triton interpreter:
    tests/flashkat_interp_cases.py and flashkat_module_interp_cases.py.)"""
    calls: list = []

    def spy(x, numerator, denominator):
        calls.append((x, numerator.detach().clone(), denominator))
        return torch.full_like(x, 7.0)

    monkeypatch.setattr(modules, "fast_rational", spy)
    return calls


def test_swap_keeps_parameters_and_restores(monkeypatch):
    torch.manual_seed(4)
    calls = _fast_path_spy(monkeypatch)
    mod = _KATLike()
    other = _KATLike()
    params_before = [id(p) for p in mod.parameters()]
    keys = list(mod.state_dict())
    x = torch.randn(2, 7, 16)
    handle = use_fast_kernels(mod)
    assert getattr(mod.rational, "stallscope_fast", False)
    assert other.rational is reference_rational, "swap must be instance-scoped"
    other(x)
    assert calls == []  # the other instance still runs the reference
    assert torch.equal(mod(x), torch.full_like(x, 7.0))  # the swapped instance computes on the fast path
    ((seen_x, seen_num, seen_den),) = calls
    assert seen_x is x and seen_den is mod.weight_denominator
    assert torch.equal(seen_num, mod.weight_numerator.detach().repeat(4, 1))  # KAT's repeat'ed numerator
    assert [id(p) for p in mod.parameters()] == params_before and list(mod.state_dict()) == keys
    restore(handle)
    assert mod.rational is reference_rational
    assert not torch.equal(mod(x), torch.full_like(x, 7.0)) and len(calls) == 1
    restore(handle)  # idempotent
    assert mod.rational is reference_rational


def test_recognition_by_duck_typing():
    assert is_grkan_module(KATGroup(num_groups=2, mode="identity"))
    assert is_grkan_module(_KATLike())
    assert not is_grkan_module(torch.nn.Linear(4, 4))

    class FlashLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.numerator_v = torch.nn.Parameter(torch.randn(1, 6))
            self.denominator_v = torch.nn.Parameter(torch.randn(8, 4))

    assert is_grkan_module(FlashLike()) and why_not_fast(FlashLike()) is None

    class KAT_Group_Torch(_KATLike):
        pass

    assert "different maths" in why_not_fast(KAT_Group_Torch())
    with pytest.raises(ValueError):
        use_fast_kernels(KAT_Group_Torch())
    assert why_not_fast(torch.nn.Linear(2, 2)).startswith("Linear is not")


def test_flash_like_forward_swap(monkeypatch):
    calls = _fast_path_spy(monkeypatch)

    class FlashLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.numerator_v = torch.nn.Parameter(torch.randn(1, 6) * 0.3)
            self.denominator_v = torch.nn.Parameter(torch.randn(4, 4) * 0.3)

        def forward(self, x):
            return reference_rational(x, self.numerator_v, self.denominator_v)

    m = FlashLike()
    x = torch.randn(2, 3, 8)
    h = use_fast_kernels(m)
    assert torch.equal(m(x), torch.full_like(x, 7.0))
    ((seen_x, seen_num, seen_den),) = calls
    assert seen_x is x and seen_den is m.denominator_v and torch.equal(seen_num, m.numerator_v.detach())
    restore(h)
    assert "forward" not in m.__dict__
    assert not torch.equal(m(x), torch.full_like(x, 7.0)) and len(calls) == 1
