"""A wide MLP trained in plain fp32 with TF32 left off (PyTorch's default for matmuls).

Planted bottleneck: every GEMM runs on the fp32 SIMT units although the GPU has tensor cores
(TF32 or bf16 autocast would run them several times faster).
"""
EXPECTED = "precision"

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    batch, width, depth = (4096, 4096, 4) if gpu else (64, 256, 4)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, width, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    for _ in range(args.steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    if gpu:
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
