"""The "before": Triton kernels that behave like KAT's published GR-KAN kernels.

Written from the behaviour described in shared/research/flashkat.md section 4a (not from KAT's
code): a 1-D grid over the B*L*D flattened elements, 256 elements per program, each lane
gathering its group's 6 + 4 coefficients; the backward issues 10 per-element ``tl.atomic_add``
(Triton's default acq_rel / gpu scope) straight into the (G, 6) and (G, 4) gradient buffers, so
10*N fenced atomics contend for 10*G addresses. The kernel names match KAT's
(``rational_fwd_kernel`` / ``rational_bwd_kernel``) and so does the autograd node
(``RationalTriton1DGroupBackward``), so traces of this baseline look like traces of KAT.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import check_shapes

__all__ = ["RationalTriton1DGroup", "baseline_forward", "baseline_backward", "BLOCK"]

BLOCK = 256


@triton.jit
def rational_fwd_kernel(x_ptr, a_ptr, b_ptr, y_ptr, n_elements, width, group_width, a_stride, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    group = (offs % width) // group_width
    a_base = a_ptr + group * a_stride
    b_base = b_ptr + group * 4
    a0 = tl.load(a_base + 0, mask=mask, other=0.0)
    a1 = tl.load(a_base + 1, mask=mask, other=0.0)
    a2 = tl.load(a_base + 2, mask=mask, other=0.0)
    a3 = tl.load(a_base + 3, mask=mask, other=0.0)
    a4 = tl.load(a_base + 4, mask=mask, other=0.0)
    a5 = tl.load(a_base + 5, mask=mask, other=0.0)
    b1 = tl.abs(tl.load(b_base + 0, mask=mask, other=0.0))
    b2 = tl.abs(tl.load(b_base + 1, mask=mask, other=0.0))
    b3 = tl.abs(tl.load(b_base + 2, mask=mask, other=0.0))
    b4 = tl.abs(tl.load(b_base + 3, mask=mask, other=0.0))
    ax = tl.abs(x)
    p = a0 + x * (a1 + x * (a2 + x * (a3 + x * (a4 + x * a5))))
    q = 1.0 + ax * (b1 + ax * (b2 + ax * (b3 + ax * b4)))
    tl.store(y_ptr + offs, p / q, mask=mask)


@triton.jit
def rational_bwd_kernel(
    g_ptr,
    x_ptr,
    a_ptr,
    b_ptr,
    dx_ptr,
    da_ptr,
    db_ptr,
    n_elements,
    width,
    group_width,
    a_stride,
    BLOCK_SIZE: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    go = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    group = (offs % width) // group_width
    a_base = a_ptr + group * a_stride
    b_base = b_ptr + group * 4
    a0 = tl.load(a_base + 0, mask=mask, other=0.0)
    a1 = tl.load(a_base + 1, mask=mask, other=0.0)
    a2 = tl.load(a_base + 2, mask=mask, other=0.0)
    a3 = tl.load(a_base + 3, mask=mask, other=0.0)
    a4 = tl.load(a_base + 4, mask=mask, other=0.0)
    a5 = tl.load(a_base + 5, mask=mask, other=0.0)
    sb1 = tl.load(b_base + 0, mask=mask, other=0.0)
    sb2 = tl.load(b_base + 1, mask=mask, other=0.0)
    sb3 = tl.load(b_base + 2, mask=mask, other=0.0)
    sb4 = tl.load(b_base + 3, mask=mask, other=0.0)
    b1 = tl.abs(sb1)
    b2 = tl.abs(sb2)
    b3 = tl.abs(sb3)
    b4 = tl.abs(sb4)
    ax = tl.abs(x)
    sx = tl.where(x < 0, -1.0, 1.0)
    p = a0 + x * (a1 + x * (a2 + x * (a3 + x * (a4 + x * a5))))
    q = 1.0 + ax * (b1 + ax * (b2 + ax * (b3 + ax * b4)))
    dp = a1 + x * (2.0 * a2 + x * (3.0 * a3 + x * (4.0 * a4 + x * 5.0 * a5)))
    dq = sx * (b1 + ax * (2.0 * b2 + ax * (3.0 * b3 + ax * 4.0 * b4)))
    dx = go * (dp / q - p * dq / (q * q))
    tl.store(dx_ptr + offs, dx, mask=mask)
    # Per-element coefficient contributions, each sent straight to global memory.
    da_base = da_ptr + group * 6
    db_base = db_ptr + group * 4
    gq = go / q
    tl.atomic_add(da_base + 0, gq, mask=mask)
    tl.atomic_add(da_base + 1, gq * x, mask=mask)
    tl.atomic_add(da_base + 2, gq * x * x, mask=mask)
    tl.atomic_add(da_base + 3, gq * x * x * x, mask=mask)
    tl.atomic_add(da_base + 4, gq * x * x * x * x, mask=mask)
    tl.atomic_add(da_base + 5, gq * x * x * x * x * x, mask=mask)
    gpq = -go * p / (q * q)
    tl.atomic_add(db_base + 0, gpq * tl.where(sb1 < 0, -1.0, 1.0) * ax, mask=mask)
    tl.atomic_add(db_base + 1, gpq * tl.where(sb2 < 0, -1.0, 1.0) * ax * ax, mask=mask)
    tl.atomic_add(db_base + 2, gpq * tl.where(sb3 < 0, -1.0, 1.0) * ax * ax * ax, mask=mask)
    tl.atomic_add(db_base + 3, gpq * tl.where(sb4 < 0, -1.0, 1.0) * ax * ax * ax * ax, mask=mask)


def _expanded_numerator(numerator: torch.Tensor, groups: int) -> torch.Tensor:
    # KAT materialises the shared numerator with .repeat(G, 1) before its kernels.
    return numerator.repeat(groups, 1) if numerator.shape[0] == 1 else numerator


def baseline_forward(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """y = F(x) by the 1-D baseline kernel; ``x`` contiguous float32, channels last."""
    groups = check_shapes(x, numerator, denominator)
    y = torch.empty_like(x, dtype=torch.float32)
    n = x.numel()
    if n == 0:
        return y
    width = x.shape[-1]
    a = _expanded_numerator(numerator, groups).contiguous()
    rational_fwd_kernel[(triton.cdiv(n, BLOCK),)](
        x, a, denominator.contiguous(), y, n, width, width // groups, 6, BLOCK_SIZE=BLOCK
    )
    return y


def baseline_backward(
    x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, d numerator, d denominator) by per-element atomics, as KAT does."""
    groups = check_shapes(x, numerator, denominator)
    width = x.shape[-1]
    dx = torch.empty_like(x, dtype=torch.float32)
    da = torch.zeros(groups, 6, dtype=torch.float32, device=x.device)
    db = torch.zeros(groups, 4, dtype=torch.float32, device=x.device)
    n = x.numel()
    if n:
        a = _expanded_numerator(numerator, groups).contiguous()
        rational_bwd_kernel[(triton.cdiv(n, BLOCK),)](
            grad_out, x, a, denominator.contiguous(), dx, da, db, n, width, width // groups, 6, BLOCK_SIZE=BLOCK
        )
    if numerator.shape[0] == 1:
        da = da.sum(dim=0, keepdim=True)
    return dx, da, db


class RationalTriton1DGroup(torch.autograd.Function):
    """Autograd Function of the baseline (same name as KAT's, so traces read alike).

    Takes a float32 contiguous ``x`` (..., D), numerator (1|G, 6) and denominator (G, 4)."""

    @staticmethod
    def forward(ctx, x, numerator, denominator):
        ctx.save_for_backward(x, numerator, denominator)
        return baseline_forward(x, numerator, denominator)

    @staticmethod
    def backward(ctx, grad_out):
        x, numerator, denominator = ctx.saved_tensors
        dx, da, db = baseline_backward(x, numerator, denominator, grad_out.contiguous().float())
        return dx, da.to(numerator.dtype), db.to(denominator.dtype)
