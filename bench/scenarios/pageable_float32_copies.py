"""Inference over pre-processed float32 image batches kept in ordinary (pageable) host memory.

Planted bottleneck: each step copies a large float32 batch from pageable memory with a
blocking ``.to("cuda")``: the driver stages it through a bounce buffer, the host blocks, and
the copy takes longer than the small model's compute. (uint8 + pinned + non_blocking would
move a quarter of the bytes at full PCIe speed, overlapped.)
"""
EXPECTED = "memory-copy"

import argparse

import torch
import torch.nn as nn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    batch, size = (128, 224) if gpu else (4, 64)
    batches = [torch.randn(batch, 3, size, size) for _ in range(4)]  # float32, pageable
    model = nn.Sequential(
        nn.Conv2d(3, 16, 7, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)
    ).to(dev).eval()
    outs = []
    with torch.no_grad():
        for i in range(args.steps):
            x = batches[i % len(batches)].to(dev)
            outs.append(model(x).argmax(-1))
    if gpu:
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
