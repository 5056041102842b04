"""A DiT-like denoiser sampled for 30 steps, with attention written out by hand.

Planted bottleneck: ``softmax(q @ k^T * scale) @ v`` materialises the [B, H, N, N] score
matrix (N = 4096 latent tokens) in every block of every denoising step; attention dominates
the sampling loop and no backward runs.
"""
EXPECTED = "attention"

import argparse

import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        attn = attn.softmax(dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class Denoiser(nn.Module):
    def __init__(self, dim, depth, heads, channels=4):
        super().__init__()
        self.inp, self.out = nn.Linear(channels, dim), nn.Linear(dim, channels)
        self.time = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))

    def forward(self, x, t):
        h = self.inp(x) + self.time(t.view(-1, 1, 1).expand(x.shape[0], 1, 1))
        for blk in self.blocks:
            h = blk(h)
        return self.out(h)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30, help="denoising steps")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    tokens, dim, depth, heads = (4096, 384, 4, 6) if gpu else (256, 64, 2, 2)
    model = Denoiser(dim, depth, heads).to(dev).eval()
    x = torch.randn(2, tokens, 4, device=dev)
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=gpu):
        for i in range(args.steps):
            t = torch.full((1,), 1.0 - i / args.steps, device=dev)
            eps = model(x, t)
            x = x - eps.float() / args.steps
    if gpu:
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
