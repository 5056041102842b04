"""A KAT-T-like vision transformer (Kolmogorov-Arnold Transformer, tiny) for benchmarks and
scenario workloads.

12 blocks, width 192, 3 heads, patch 16 on 224x224 images (197 tokens), MLP replaced by the
GR-KAN block: act1 (identity init) -> fc1 (D -> 4D) -> act2 (swish init) -> fc2 (4D -> D), each
activation a :class:`fixes.flashkat.modules.KATGroup` with 8 groups (group widths 24 and 96).
State-dict keys follow KAT (``blocks.{i}.mlp.act1.weight_numerator`` ...).

Public constructor: ``kat_tiny(act="baseline" | "fast" | "reference", **overrides)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stallscope.fixes.flashkat.modules import KATGroup

__all__ = ["KAN", "Block", "KATVisionTransformer", "kat_tiny"]

_SWISH_FC2_GAIN = 2.8178  # sqrt(1 / E[F(x)^2]) for the swish-initialised F, x ~ N(0, 1)


class KAN(nn.Module):
    """GR-KAN MLP: act1 -> drop1 -> fc1 -> norm -> act2 -> drop2 -> fc2."""

    def __init__(self, dim: int, hidden: int, act: str = "fast", num_groups: int = 8, drop: float = 0.0):
        super().__init__()
        self.act1 = KATGroup(num_groups=num_groups, mode="identity", impl=act)
        self.drop1 = nn.Dropout(drop)
        self.fc1 = nn.Linear(dim, hidden)
        self.norm = nn.Identity()
        self.act2 = KATGroup(num_groups=num_groups, mode="swish", impl=act)
        self.drop2 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.normal_(self.fc1.weight, std=1.0 / math.sqrt(dim))
        nn.init.normal_(self.fc2.weight, std=_SWISH_FC2_GAIN / math.sqrt(hidden))
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act1(x))
        x = self.norm(self.fc1(x))
        x = self.drop2(self.act2(x))
        return self.fc2(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, act: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = KAN(dim, int(dim * mlp_ratio), act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class KATVisionTransformer(nn.Module):
    """ViT with GR-KAN MLPs (class token, learned position embedding, linear head)."""

    def __init__(
        self, img_size: int = 224, patch: int = 16, dim: int = 192, depth: int = 12, heads: int = 3,
        mlp_ratio: float = 4.0, num_classes: int = 1000, act: str = "fast",
    ):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        tokens = (img_size // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, act) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def kat_tiny(act: str = "fast", **overrides) -> KATVisionTransformer:
    """KAT-T-like model; ``act`` picks the GR-KAN implementation: ``baseline`` (KAT-like
    per-element atomics), ``fast`` (FlashKAT-style kernels) or ``reference`` (PyTorch ops)."""
    if act not in ("baseline", "fast", "reference"):
        raise ValueError(f"act must be baseline, fast or reference, got {act!r}")
    cfg = dict(img_size=224, patch=16, dim=192, depth=12, heads=3, mlp_ratio=4.0, num_classes=1000)
    cfg.update(overrides)
    return KATVisionTransformer(act=act, **cfg)
