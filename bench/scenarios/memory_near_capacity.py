"""Training next to a large resident buffer (a cache of embeddings kept on the GPU), leaving
almost no free memory, with variable batch sizes.

Planted bottleneck: GPU memory peaks above 95 % of capacity; the caching allocator cannot keep
blocks for every batch shape and must free and re-allocate (synchronising the device), one
larger batch away from out-of-memory.
"""
EXPECTED = "memory-capacity"
REQUIRES = "cuda"

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--headroom-gb", type=float, default=2.5)
    args = ap.parse_args()
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    width = 2048 if gpu else 256
    model = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(width, width), nn.GELU())], nn.Linear(width, 10)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    resident = None
    if gpu:
        free, total = torch.cuda.mem_get_info()
        keep = int(free - max(args.headroom_gb * 2**30, 0.02 * total))
        resident = torch.empty(max(keep, 0), dtype=torch.uint8, device=dev)  # the "embedding cache"
    sizes = [4096, 6144, 3072, 8192, 5120, 7168, 2048]
    for i in range(args.steps):
        b = sizes[i % len(sizes)] if gpu else 32 + i
        x = torch.randn(b, width, device=dev)
        y = torch.randint(0, 10, (b,), device=dev)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    if gpu:
        torch.cuda.synchronize()
    del resident


if __name__ == "__main__":
    main()
