"""Inference of an MLP that records an activation statistic after every layer with ``.item()``
(the way calibration or debugging hooks often do).

Planted bottleneck: a blocking device-to-host sync per layer: each ``.item()`` drains the GPU
queue and the GPU idles until Python dispatches the next layer, although the host would
otherwise stay well ahead of the GPU.
"""
EXPECTED = "synchronization"

import argparse

import torch
import torch.nn as nn


class CheckedMLP(nn.Module):
    def __init__(self, width, depth):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 10)
        self.act_max = []

    def forward(self, h):
        for layer in self.layers:
            h = torch.relu(layer(h))
            self.act_max.append(h.abs().max().item())  # "just recording the activation range"
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
    model = CheckedMLP(width, depth).to(dev).eval()
    batches = [torch.randn(batch, width, device=dev) for _ in range(2)]
    preds = []
    with torch.no_grad():
        for i in range(args.steps):
            preds.append(model(batches[i % 2]).argmax(-1))
            model.act_max.clear()
    if gpu:
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
