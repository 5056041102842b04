"""GR-KAN (group-rational KAN) maths in plain PyTorch, with KAT's exact kernel semantics.

F(x) = P(x) / Q(x) per channel, with

* P(x) = a0 + a1 x + ... + a5 x^5, one numerator per group or one shared by all groups,
* Q(x) = 1 + |b1||x| + |b2||x|^2 + |b3||x|^3 + |b4||x|^4 ("safe PAU" version A, Q >= 1),
* channels split into G contiguous groups of D / G channels,
* sign convention s(v) = -1 if v < 0 else +1 (so s(0) = +1) for both x and b, which lets an
  identity-initialised layer (b = 0) still receive a denominator gradient.

Gradients are explicit formulas (not autograd through ``abs``), so the sign convention holds.
This module is the float64 oracle of the tests and the CPU path of the modules.
"""

from __future__ import annotations

import torch

__all__ = [
    "NUM_COEFFS",
    "DEN_COEFFS",
    "check_shapes",
    "rational_forward",
    "rational_backward",
    "rational_reference",
    "reference_fp64",
    "reference_grads_fp64",
    "coefficient_mass_fp64",
    "output_dtype_for",
    "sign_of",
]

NUM_COEFFS = 6
DEN_COEFFS = 4


def sign_of(v: torch.Tensor) -> torch.Tensor:
    """s(v) = -1 where v < 0, else +1 (KAT's convention: s(0) = +1)."""
    return torch.where(v < 0, -torch.ones_like(v), torch.ones_like(v))


def check_shapes(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> int:
    """Validate GR-KAN operand shapes and return the group count G."""
    if denominator.dim() != 2 or denominator.shape[1] != DEN_COEFFS:
        raise ValueError(f"GR-KAN denominator must have shape (G, 4), got {tuple(denominator.shape)}")
    groups = denominator.shape[0]
    if numerator.dim() != 2 or numerator.shape[1] != NUM_COEFFS or numerator.shape[0] not in (1, groups):
        raise ValueError(f"GR-KAN numerator must have shape (1, 6) or ({groups}, 6), got {tuple(numerator.shape)}")
    if x.dim() < 1:
        raise ValueError("GR-KAN input must have at least one dimension (channels last)")
    width = x.shape[-1]
    if groups < 1 or width % groups != 0:
        raise ValueError(f"GR-KAN needs the channel count {width} to be a multiple of the group count {groups}")
    return groups


def _grouped(x: torch.Tensor, groups: int) -> torch.Tensor:
    width = x.shape[-1]
    return x.reshape(-1, groups, width // groups)


def _coefficient_columns(numerator: torch.Tensor, denominator: torch.Tensor, groups: int):
    num = numerator.expand(groups, NUM_COEFFS)
    a = [num[:, k].reshape(1, groups, 1) for k in range(NUM_COEFFS)]
    b = [denominator[:, k].abs().reshape(1, groups, 1) for k in range(DEN_COEFFS)]
    return a, b


def _p_and_q(x: torch.Tensor, a, b):
    ax = x.abs()
    p = a[0] + x * (a[1] + x * (a[2] + x * (a[3] + x * (a[4] + x * a[5]))))
    q = 1.0 + ax * (b[0] + ax * (b[1] + ax * (b[2] + ax * b[3])))
    return p, q


def rational_forward(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """y = P(x) / Q(x) in the dtype of ``x`` (no autograd graph of its own)."""
    groups = check_shapes(x, numerator, denominator)
    xg = _grouped(x, groups)
    a, b = _coefficient_columns(numerator.to(x.dtype), denominator.to(x.dtype), groups)
    p, q = _p_and_q(xg, a, b)
    return (p / q).reshape(x.shape)


def rational_backward(
    x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, d numerator, d denominator) by the explicit formulas, in the dtype of ``x``.

    The numerator gradient has the numerator's shape: with a shared (1, 6) numerator it is the
    sum over groups, as autograd through KAT's ``.repeat`` gives."""
    groups = check_shapes(x, numerator, denominator)
    dtype = x.dtype
    xg = _grouped(x, groups)
    g = _grouped(grad_out.to(dtype), groups)
    num = numerator.to(dtype)
    den = denominator.to(dtype)
    a, b = _coefficient_columns(num, den, groups)
    ax = xg.abs()
    p, q = _p_and_q(xg, a, b)
    r = 1.0 / q
    dp = a[1] + xg * (2 * a[2] + xg * (3 * a[3] + xg * (4 * a[4] + xg * 5 * a[5])))
    dq = sign_of(xg) * (b[0] + ax * (2 * b[1] + ax * (3 * b[2] + ax * 4 * b[3])))
    t = g * r
    u = -t * p * r
    dx = (t * dp + u * dq).reshape(x.shape)
    d_num = torch.empty(groups, NUM_COEFFS, dtype=dtype, device=x.device)
    power = torch.ones_like(xg)
    for i in range(NUM_COEFFS):
        d_num[:, i] = (t * power).sum(dim=(0, 2))
        power = power * xg
    d_den = torch.empty(groups, DEN_COEFFS, dtype=dtype, device=x.device)
    power = ax
    for j in range(DEN_COEFFS):
        d_den[:, j] = (u * power).sum(dim=(0, 2))
        power = power * ax
    d_den = d_den * sign_of(den)
    if numerator.shape[0] == 1:
        d_num = d_num.sum(dim=0, keepdim=True)
    return dx, d_num, d_den


class _ReferenceRational(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, numerator, denominator):
        ctx.save_for_backward(x, numerator, denominator)
        return rational_forward(x, numerator, denominator)

    @staticmethod
    def backward(ctx, grad_out):
        x, numerator, denominator = ctx.saved_tensors
        dx, d_num, d_den = rational_backward(x, numerator, denominator, grad_out)
        return dx, d_num.to(numerator.dtype), d_den.to(denominator.dtype)


def output_dtype_for(x: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(compute dtype, output dtype) under KAT's rules: float64 stays float64; everything else is
    computed in float32; under autocast the output is float32 (KAT's ``cast_inputs=float32``),
    otherwise it is returned in the input's dtype."""
    if x.dtype == torch.float64:
        return torch.float64, torch.float64
    autocast_on = torch.is_autocast_enabled(x.device.type) if x.device.type in ("cuda", "cpu") else False
    out = torch.float32 if (autocast_on or x.dtype == torch.float32) else x.dtype
    return torch.float32, out


def rational_reference(
    x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, num_groups: int | None = None
) -> torch.Tensor:
    """Differentiable GR-KAN in PyTorch ops with KAT's semantics (the CPU path of the modules).

    ``num_groups``, when given, must equal ``denominator.shape[0]`` (KAT passes it)."""
    groups = check_shapes(x, numerator, denominator)
    if num_groups is not None and int(num_groups) != groups:
        raise ValueError(f"num_groups={num_groups} but the denominator has {groups} rows")
    compute, out = output_dtype_for(x)
    with torch.autocast(x.device.type, enabled=False) if x.device.type in ("cuda", "cpu") else _null():
        y = _ReferenceRational.apply(x.to(compute), numerator.to(compute), denominator.to(compute))
    return y if y.dtype == out else y.to(out)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def reference_fp64(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """The float64 oracle of the forward pass."""
    return rational_forward(x.double(), numerator.double(), denominator.double())


def reference_grads_fp64(
    x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The float64 oracle of the backward pass: (dx, d numerator, d denominator)."""
    return rational_backward(x.double(), numerator.double(), denominator.double(), grad_out.double())


def coefficient_mass_fp64(
    x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute contribution mass M = sum |contribution| per coefficient (numerator's and
    denominator's shapes): the scale against which coefficient-gradient errors are judged."""
    x64 = x.double()
    g64 = grad_out.double().abs()
    groups = check_shapes(x64, numerator, denominator)
    # |t x^i| and |u |x|^j| are the gradient formulas applied to |g| with all-positive signs.
    xg = _grouped(x64, groups)
    gg = _grouped(g64, groups)
    a, b = _coefficient_columns(numerator.double(), denominator.double(), groups)
    p, q = _p_and_q(xg, a, b)
    t = gg / q
    u = t * p.abs() / q
    ax = xg.abs()
    m_num = torch.stack([(t * ax**i).sum(dim=(0, 2)) for i in range(NUM_COEFFS)], dim=1)
    m_den = torch.stack([(u * ax ** (j + 1)).sum(dim=(0, 2)) for j in range(DEN_COEFFS)], dim=1)
    if numerator.shape[0] == 1:
        m_num = m_num.sum(dim=0, keepdim=True)
    return m_num, m_den
