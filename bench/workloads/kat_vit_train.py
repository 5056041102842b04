"""KAT-T-like ViT trained on random images with the KAT-like baseline GR-KAN kernels.

What a KAT user runs before any fix: 24 GR-KAN activations whose backward does per-element
atomics. ``stallscope profile --auto-patch`` should find them (duck typing on the coefficient
Parameters), swap in the fast kernels, check parity, and keep the patch.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--depth", type=int, default=12)
    args = ap.parse_args()
    # bench.models lives in the checkout, not in an installed package: the repository root goes on the path for it.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.models.kat_vit import kat_tiny

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = dev.type != "cuda"
    torch.manual_seed(0)
    model = kat_tiny(act="baseline", **({"img_size": 32, "depth": 2, "num_classes": 10} if small else {"depth": args.depth})).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    img = 32 if small else 224
    x = torch.randn(2 if small else args.batch, 3, img, img, device=dev)
    y = torch.randint(0, 10, (x.shape[0],), device=dev)
    for _ in range(args.steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"final_loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
