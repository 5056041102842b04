"""An independent GR-KAN (group-rational KAN) oracle for the FlashKAT tests (helper, not a test).

Written from the paper's formula (KAT, Yang & Wang 2024, "safe" Padé activation unit; FlashKAT,
Raffel & Chen 2025, same forward), not from ``stallscope.fixes.flashkat``: for channel ``c`` of
``D`` channels split into ``G`` contiguous groups of ``D / G``, with group ``g = c // (D / G)``,

    F(x) = P(x) / Q(x),  P(x) = sum_{i=0..5} a_{g,i} x^i,  Q(x) = 1 + sum_{j=1..4} |b_{g,j}| |x|^j,

one numerator row per group or one row shared by every group. Gradients come from torch autograd
through this expression (direct powers, per-channel coefficients gathered by index), so the
kernels' explicit backward formulas and the module's Horner/grouped-reshape code are not reused.
KAT's kernels differentiate ``|v|`` as ``s(v)`` with ``s(0) = +1`` (so an identity-initialised
layer, b = 0, still learns its denominator); autograd's ``abs`` would give 0 there, so ``|v|`` is
written ``v * s(v)`` with ``s`` held constant.
"""

from __future__ import annotations

import torch


def _sign(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v < 0, -torch.ones_like(v), torch.ones_like(v))


def _abs(v: torch.Tensor) -> torch.Tensor:
    """|v| whose derivative is s(v), s(0) = +1."""
    return v * _sign(v).detach()


def _per_channel(coeffs: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """(width, k) coefficients: row g of ``coeffs`` (or its only row) for every channel of group g."""
    group_of = torch.arange(width, device=coeffs.device) // (width // groups)
    return coeffs.expand(groups, coeffs.shape[1])[group_of]


def grkan(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """F(x) over the last dimension of ``x``; differentiable in all three arguments."""
    groups, width = denominator.shape[0], x.shape[-1]
    a = _per_channel(numerator, groups, width)
    b = _per_channel(denominator, groups, width)
    powers = [torch.ones_like(x)]
    for _ in range(5):
        powers.append(powers[-1] * x)
    p = sum(a[:, i] * powers[i] for i in range(6))
    ax = _abs(x)
    q = 1.0 + sum(_abs(b[:, j]) * ax ** (j + 1) for j in range(4))
    return p / q


def grkan_fp64(x, numerator, denominator, grad_out=None):
    """(y, dx, d numerator, d denominator) in float64 through autograd (grads None without ``grad_out``)."""
    x64 = x.detach().double().requires_grad_()
    n64 = numerator.detach().double().requires_grad_()
    d64 = denominator.detach().double().requires_grad_()
    y = grkan(x64, n64, d64)
    if grad_out is None:
        return y.detach(), None, None, None
    dx, dn, dd = torch.autograd.grad(y, (x64, n64, d64), grad_out.double())
    return y.detach(), dx, dn, dd


def coefficient_scale(x, numerator, denominator, grad_out):
    """Sum of |each contribution| to every coefficient gradient (numerator's and denominator's
    shapes): |g x^i / Q| for a_i and |g P |x|^j / Q^2| for b_j, summed like the gradient. A float32
    sum over N elements is off by a few ulps of this, whatever the order of the sum."""
    with torch.enable_grad():
        x64, g = x.detach().double(), grad_out.detach().double().abs()
        groups, width = denominator.shape[0], x64.shape[-1]
        ones_n = torch.ones(numerator.shape, dtype=torch.float64, requires_grad=True)
        ones_d = torch.ones(denominator.shape, dtype=torch.float64, requires_grad=True)
        y = grkan(x64, numerator.detach().double(), denominator.detach().double())
        ax = x64.abs()
        q = 1.0 + sum(
            _per_channel(denominator.detach().double().abs(), groups, width)[:, j] * ax ** (j + 1) for j in range(4)
        )
        p_abs = (y * q).abs()
        # each weight's gradient of sum(g * w * term) is the sum of |term| over its group's channels
        a1 = _per_channel(ones_n, groups, width)
        b1 = _per_channel(ones_d, groups, width)
        lin_num = sum((g * a1[:, i] * ax**i / q).sum() for i in range(6))
        lin_den = sum((g * p_abs / q**2 * b1[:, j] * ax ** (j + 1)).sum() for j in range(4))
        (m_num,) = torch.autograd.grad(lin_num, ones_n)
        (m_den,) = torch.autograd.grad(lin_den, ones_d)
    return m_num, m_den
