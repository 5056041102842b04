"""Training fed by a DataLoader with too few workers for its per-sample CPU cost.

Planted bottleneck: ``num_workers=1`` while preparing one sample costs more CPU time than the
GPU spends per sample, so the single worker runs flat out and the GPU still waits.
"""
EXPECTED = "input-pipeline"

import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset


class AugmentedImages(Dataset):
    def __init__(self, n, size, out):
        rng = np.random.default_rng(1)
        self.images = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(8)]
        self.n, self.out = n, out

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i % len(self.images)])
        img = img.rotate((i * 13) % 30, resample=Image.BILINEAR)
        img = img.filter(ImageFilter.GaussianBlur(radius=1.5))
        img = img.resize((self.out, self.out), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, np.uint8).transpose(2, 0, 1).copy())
        return x, i % 10


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    batch, size, out = (64, 384, 160) if gpu else (8, 192, 64)
    loader = DataLoader(AugmentedImages(batch * (args.steps + 2), size, out), batch_size=batch,
                        num_workers=1, pin_memory=gpu, persistent_workers=True)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    ).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for x, y in loader:
        x = x.to(dev, non_blocking=True).float().div_(255)
        y = y.to(dev, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    if gpu:
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
