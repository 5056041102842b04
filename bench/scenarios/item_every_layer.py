"""An MLP whose forward reads a statistic back to Python after every layer (``.item()``).

Planted bottleneck: a blocking device-to-host sync per layer: each ``.item()`` drains the GPU
queue and the GPU idles until Python dispatches the next layer.
"""
EXPECTED = "synchronization"

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F


class CheckedMLP(nn.Module):
    def __init__(self, width, depth):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 10)
        self.stats = []

    def forward(self, h):
        for layer in self.layers:
            h = F.gelu(layer(h))
            self.stats.append(h.float().pow(2).mean().item())  # "just logging the activation scale"
        return self.head(h)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    batch, width, depth = (2048, 2048, 16) if gpu else (64, 128, 8)
    model = CheckedMLP(width, depth).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, width, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    for _ in range(args.steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=gpu):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        model.stats.clear()
    if gpu:
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
