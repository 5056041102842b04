"""Cases for the Triton kernels (fast and baseline) on CPU tensors under TRITON_INTERPRET=1.

Checked against two references: the module's own float64 maths (``reference.py``) and an
independent implementation of the paper's formula through autograd (``tests/flashkat_oracle.py``).

Run by tests/test_flashkat_triton_interp.py in a subprocess: the variable must be set before
triton is first imported, which a test module inside a shared pytest process cannot promise.
Tiny shapes: the interpreter runs each program in numpy.
"""

from __future__ import annotations

import os

import pytest
import torch

from stallscope.fixes.flashkat import reference as R  # noqa: E402
from tests.flashkat_oracle import coefficient_scale, grkan_fp64  # noqa: E402

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "run through tests/test_flashkat_triton_interp.py (needs TRITON_INTERPRET=1 before triton loads)",
        allow_module_level=True,
    )

from stallscope.fixes.flashkat import baseline as _baseline  # noqa: E402
from stallscope.fixes.flashkat import kernels as _kernels  # noqa: E402


@pytest.fixture(scope="module")
def kern():
    assert _kernels.INTERPRET
    return _kernels, _baseline


def _inputs(rows, width, groups, shared, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=gen) * 3
    x.view(-1)[:3] = torch.tensor([8.0, -7.5, 0.0])  # a few large values and an exact zero
    num = torch.randn(1 if shared else groups, 6, generator=gen) * 0.3
    den = torch.randn(groups, 4, generator=gen) * 0.3
    g = torch.randn(rows, width, generator=gen)
    return x, num, den, g


def _check(y, dx, dn, dd, x, num, den, g):
    y64 = R.reference_fp64(x, num, den)
    dx64, dn64, dd64 = R.reference_grads_fp64(x, num, den, g)
    mass_n, mass_d = R.coefficient_mass_fp64(x, num, den, g)
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx.double(), dx64, rtol=1e-5, atol=1e-5)
    assert dn.shape == num.shape and dd.shape == den.shape
    assert torch.all((dn.double() - dn64).abs() <= 1e-5 * mass_n)
    assert torch.all((dd.double() - dd64).abs() <= 1e-5 * mass_d)


# (rows, D, G): group widths 24 (KAT-T act1), 96 (act2, one tile of 32 x 3), 1 (per-channel),
# 12 (not a multiple of 8: masked column tile), G = 1, rows not a multiple of the tile (L = 197).
CASES = [
    (197, 48, 2, True),
    (197, 48, 2, False),
    (5, 192, 2, True),
    (9, 8, 8, False),
    (17, 36, 3, True),
    (11, 16, 1, False),
]


@pytest.mark.parametrize("rows,width,groups,shared", CASES)
def test_fast_kernels_match_fp64_reference(kern, rows, width, groups, shared):
    kernels, _ = kern
    x, num, den, g = _inputs(rows, width, groups, shared, seed=rows + width)
    y = kernels.flashkat_forward(x, num, den)
    dx, dn, dd = kernels.flashkat_backward(x, num, den, g)
    _check(y, dx, dn, dd, x, num, den, g)
    _, dna, dda = kernels.flashkat_backward(x, num, den, g, reduction="atomic")
    torch.testing.assert_close(dna, dn, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dda, dd, rtol=1e-5, atol=1e-6)


def _check_against_paper(y, dx, dn, dd, x, num, den, g):
    """Outputs and all three gradients against the paper's formula through float64 autograd."""
    y64, dx64, dn64, dd64 = grkan_fp64(x, num, den, g)
    mass_n, mass_d = coefficient_scale(x, num, den, g)
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx.double(), dx64, rtol=1e-5, atol=1e-5)
    assert dn.shape == num.shape and dd.shape == den.shape
    assert torch.all((dn.double() - dn64).abs() <= 1e-5 * mass_n), (dn, dn64)
    assert torch.all((dd.double() - dd64).abs() <= 1e-5 * mass_d), (dd, dd64)


# (rows, D, G, shared numerator, identity-initialised group: b = 0 there)
PAPER_CASES = [(40, 48, 2, True, False), (13, 36, 3, False, True), (9, 8, 8, True, True), (33, 96, 1, False, False)]


@pytest.mark.parametrize("rows,width,groups,shared,zero_group", PAPER_CASES)
def test_every_kernel_matches_the_paper_formula(kern, rows, width, groups, shared, zero_group):
    """Fast kernels (both reductions) and baseline kernels, forward and backward, against the
    independent autograd oracle, including exact zeros of x and b where the sign convention decides."""
    kernels, baseline = kern
    x, num, den, g = _inputs(rows, width, groups, shared, seed=100 + rows)
    if zero_group:
        den[0] = 0.0
    y = kernels.flashkat_forward(x, num, den)
    _check_against_paper(y, *kernels.flashkat_backward(x, num, den, g), x, num, den, g)
    _check_against_paper(y, *kernels.flashkat_backward(x, num, den, g, reduction="atomic"), x, num, den, g)
    yb = baseline.baseline_forward(x, num, den)
    _check_against_paper(yb, *baseline.baseline_backward(x, num, den, g), x, num, den, g)
    if zero_group:  # b = 0 still gets a gradient (s(0) = +1): an identity-initialised layer learns
        assert torch.all(kernels.flashkat_backward(x, num, den, g)[2][0] != 0)


@pytest.mark.parametrize("rows,width,groups", [(197, 48, 2), (9, 8, 8)])
def test_baseline_kernels_match_fp64_reference(kern, rows, width, groups):
    _, baseline = kern
    x, num, den, g = _inputs(rows, width, groups, True, seed=7)
    y = baseline.baseline_forward(x, num, den)
    dx, dn, dd = baseline.baseline_backward(x, num, den, g)
    _check(y, dx, dn, dd, x, num, den, g)


def test_fast_and_baseline_forward_agree_to_ulps(kern):
    kernels, baseline = kern
    x, num, den, _ = _inputs(33, 64, 4, False, seed=11)
    torch.testing.assert_close(
        kernels.flashkat_forward(x, num, den), baseline.baseline_forward(x, num, den), rtol=1e-6, atol=1e-6
    )


def test_two_stage_reduction_is_bitwise_deterministic(kern):
    kernels, _ = kern
    x, num, den, g = _inputs(64, 32, 4, True, seed=5)
    first = kernels.flashkat_backward(x, num, den, g)
    for _ in range(2):
        again = kernels.flashkat_backward(x, num, den, g)
        for a, b in zip(first, again, strict=True):
            assert torch.equal(a, b)


def test_identity_init_denominator_moves_through_kernels(kern):
    kernels, _ = kern
    x = torch.randn(6, 16)
    num = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    den = torch.zeros(4, 4)
    y = kernels.flashkat_forward(x, num, den)
    torch.testing.assert_close(y, x)
    _, _, dd = kernels.flashkat_backward(x, num, den, 2 * x)
    assert torch.all(dd < 0)


def test_module_paths_through_interpreter(kern):
    from stallscope.fixes.flashkat.modules import BaselineKATGroup, KATGroup, restore, use_fast_kernels

    torch.manual_seed(0)
    base = BaselineKATGroup(num_groups=4, mode="swish")
    with torch.no_grad():
        base.weight_denominator.add_(torch.randn(4, 4) * 0.2)
        base.weight_numerator.add_(torch.randn(1, 6) * 0.05)
    ref = KATGroup(num_groups=4, mode="swish", impl="reference")
    ref.load_state_dict(base.state_dict())
    # non-contiguous input (a transposed view) and non-contiguous upstream gradient
    x = (torch.randn(32, 3, 2) * 3).permute(1, 2, 0).requires_grad_()
    g = torch.randn(32, 2, 3).permute(2, 1, 0)
    assert not x.is_contiguous() and not g.is_contiguous()
    for mod in (base, ref):
        mod.zero_grad()
    x_ref = x.detach().clone().requires_grad_()
    ref(x_ref).backward(g)
    y_base = base(x)
    y_base.backward(g)
    handle = use_fast_kernels(base)
    params = [id(p) for p in base.parameters()]
    grads_base = [p.grad.clone() for p in base.parameters()]
    base.zero_grad()
    x_fast = x.detach().clone().requires_grad_()
    y_fast = base(x_fast)
    y_fast.backward(g)
    assert [id(p) for p in base.parameters()] == params
    torch.testing.assert_close(y_fast, y_base, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x_fast.grad, x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    for p, gb, pr in zip(base.parameters(), grads_base, ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, gb, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(p.grad, pr.grad, rtol=1e-4, atol=1e-5)
    # bf16 autocast input gives a float32 output, as KAT's cast_inputs=float32 does
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = base(x.detach().bfloat16())
    assert yb.dtype == torch.float32
    # 2-D input and empty input
    assert base(torch.randn(5, 8)).shape == (5, 8)
    empty = torch.empty(0, 4, 8, requires_grad=True)
    out = base(empty)
    out.sum().backward()
    assert out.shape == (0, 4, 8) and torch.all(base.weight_numerator.grad == 0) is not None
    restore(handle)


@pytest.mark.parametrize("group_major", [0, 1])
def test_forced_tiles_and_launch_orders(kern, monkeypatch, group_major):
    """Every tile choice the tuner may pick computes the same function: a masked column tile
    (group width 12 in a 16-wide tile), several row tiles per program, both launch orders."""
    kernels, _ = kern
    x, num, den, g = _inputs(45, 36, 3, False, seed=13)
    forced = f"8,4,3,2,16,{group_major}"
    monkeypatch.setenv("STALLSCOPE_FLASHKAT_FWD_TILE", forced)
    monkeypatch.setenv("STALLSCOPE_FLASHKAT_BWD_TILE", forced)
    monkeypatch.setattr(kernels, "_TUNED", {})
    y = kernels.flashkat_forward(x, num, den)
    dx, dn, dd = kernels.flashkat_backward(x, num, den, g)
    _check(y, dx, dn, dd, x, num, den, g)
