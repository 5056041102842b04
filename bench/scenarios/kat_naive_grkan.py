"""A KAT-T-like ViT (attention + Group-Rational KAN MLPs) trained with a naive GR-KAN backward.

Planted bottleneck: the GR-KAN activation's backward accumulates the 10 coefficient gradients
per group with one scattered add per element (KAT's per-element ``atomic_add``), so the
backward of the activations dwarfs their forward. On CUDA with Triton the KAT-like baseline
kernels of ``fixes/flashkat`` are used (kernel ``rational_bwd_kernel``, node
``RationalTriton1DGroupBackward``: what a KAT user's trace shows); otherwise a pure-PyTorch
autograd Function with the same per-element accumulation (``index_add_``, atomics on GPU).
"""
EXPECTED = "memory-bound"
REQUIRES = "cuda"  # atomic contention is a GPU phenomenon; a CPU index_add is not slow

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class Rational1DGroup(torch.autograd.Function):
    """y = P(x) / Q(x), P of degree 5 shared, Q = 1 + sum |b_j x^j| per group (KAT's safe Pade)."""

    @staticmethod
    def forward(ctx, x, a, b, groups):
        d = x.shape[-1]
        xs = x.reshape(-1, groups, d // groups)
        powers = torch.stack([xs**i for i in range(6)], -1)
        p = (powers * a[0]).sum(-1)
        q = 1 + (powers[..., 1:5] * b[None, :, None, :]).abs().sum(-1)
        ctx.save_for_backward(x, a, b)
        ctx.groups = groups
        return (p / q).reshape_as(x)

    @staticmethod
    def backward(ctx, g):
        x, a, b = ctx.saved_tensors
        groups = ctx.groups
        d = x.shape[-1]
        xs = x.reshape(-1, groups, d // groups)
        gs = g.reshape_as(xs)
        powers = torch.stack([xs**i for i in range(6)], -1)
        p = (powers * a[0]).sum(-1)
        terms = powers[..., 1:5] * b[None, :, None, :]
        q = 1 + terms.abs().sum(-1)
        dp = sum(i * a[0, i] * xs ** (i - 1) for i in range(1, 6))
        dq = sum(torch.sign(terms[..., j - 1]) * j * b[None, :, None, j - 1] * xs ** (j - 1) for j in range(1, 5))
        gx = gs * (dp * q - p * dq) / q**2
        # One scattered add per element and coefficient into 10*G slots, as KAT's kernel does.
        contrib_a = (gs / q).unsqueeze(-1) * powers
        contrib_b = (-gs * p / q**2).unsqueeze(-1) * torch.sign(terms) * powers[..., 1:5]
        group_of = torch.arange(groups, device=x.device)[None, :, None].expand_as(xs).reshape(-1)
        ga = torch.zeros(groups, 6, device=x.device, dtype=torch.float32)
        gb = torch.zeros(groups, 4, device=x.device, dtype=torch.float32)
        ga.index_add_(0, group_of, contrib_a.reshape(-1, 6).float())
        gb.index_add_(0, group_of, contrib_b.reshape(-1, 4).float())
        return gx.reshape_as(x), ga.sum(0, keepdim=True).to(a.dtype), gb.to(b.dtype), None


class GroupRational(nn.Module):
    def __init__(self, groups=8):
        super().__init__()
        self.groups = groups
        self.weight_numerator = nn.Parameter(torch.tensor([[0.0, 0.5, 0.25, 0.02, 0.0, 0.0]]))
        self.weight_denominator = nn.Parameter(torch.tensor([[0.0, 0.1, 0.0, 0.01]]).repeat(groups, 1))

    def forward(self, x):
        return Rational1DGroup.apply(x, self.weight_numerator, self.weight_denominator, self.groups)


class Block(nn.Module):
    def __init__(self, dim, heads, act):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj, self.heads = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), heads
        self.act1, self.fc1, self.act2, self.fc2 = act(), nn.Linear(dim, 4 * dim), act(), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(self.act2(self.fc1(self.act1(self.norm2(x)))))


class KATTiny(nn.Module):
    def __init__(self, dim, depth, act, img=224, patch=16, classes=100):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, (img // patch) ** 2, dim))
        self.blocks = nn.Sequential(*[Block(dim, 3, act) for _ in range(depth)])
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.blocks(x).mean(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    if dev.type == "cuda":
        # KAT-T as trained: 12 blocks of width 192, 224^2 images, bf16 autocast, fused AdamW,
        # 24 GR-KAN activations on the KAT-like baseline kernels. bench.models lives in the
        # checkout, not in an installed package: the repository root goes on the path for it.
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from bench.models.kat_vit import kat_tiny

        model, batch, img, amp = kat_tiny(act="baseline").to(dev), args.batch, 224, True
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    else:
        model, batch, img, amp = KATTiny(48, 2, GroupRational, img=64).to(dev), 2, 64, False
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, img, img, device=dev)
    y = torch.randint(0, 100, (batch,), device=dev)
    for _ in range(args.steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
