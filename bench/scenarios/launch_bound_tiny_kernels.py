"""A training step made of many tiny ops on small tensors (a hand-written recurrent cell).

Planted bottleneck: each op launches a kernel that runs for a few microseconds, shorter than
its launch; the GPU spends the step waiting for the CPU to issue work.
"""
EXPECTED = "host-bound"

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyCell(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.wx = nn.Linear(width, 4 * width)
        self.wh = nn.Linear(width, 4 * width)

    def forward(self, x, h, c):
        i, f, g, o = (self.wx(x) + self.wh(h)).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    width, seq, batch = 32, 48, 8
    cell = TinyCell(width).to(dev)
    head = nn.Linear(width, 5).to(dev)
    opt = torch.optim.Adam(list(cell.parameters()) + list(head.parameters()), lr=1e-3, foreach=False)
    xs = torch.randn(seq, batch, width, device=dev)
    y = torch.randint(0, 5, (batch,), device=dev)
    for _ in range(args.steps):
        opt.zero_grad(set_to_none=True)
        h = torch.zeros(batch, width, device=dev)
        c = torch.zeros(batch, width, device=dev)
        for t in range(seq):
            h, c = cell(xs[t], h, c)
        F.cross_entropy(head(h), y).backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
