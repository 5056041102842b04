"""Image classification where every sample is decoded/resized with PIL in the main process.

Planted bottleneck: ``DataLoader(num_workers=0)`` with CPU-heavy per-sample preprocessing (PIL
bicubic resize, random crop, flip, conversion to a normalised float tensor): the GPU waits for
every batch while the training process prepares it.
"""
EXPECTED = "input-pipeline"

import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


class RawImages(Dataset):
    """Synthetic 'decoded JPEGs' (uint8 HxWx3) resized and normalised per sample with PIL."""

    def __init__(self, n, size, out):
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(16)]
        self.n, self.out = n, out

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i % len(self.images)])
        img = img.resize((self.out + 32, self.out + 32), Image.BICUBIC)
        left = (i * 7) % 32
        img = img.crop((left, left, left + self.out, left + self.out))
        if i % 2:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = (np.asarray(img, np.float32) / 255.0 - MEAN) / STD
        return torch.from_numpy(x.transpose(2, 0, 1).copy()), i % 10


def small_cnn(w=32):
    return nn.Sequential(
        nn.Conv2d(3, w, 3, 2, 1), nn.ReLU(), nn.Conv2d(w, 2 * w, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10),
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    batch, size, out, width = (64, 512, 224, 32) if gpu else (8, 384, 96, 4)
    loader = DataLoader(RawImages(batch * args.steps, size, out), batch_size=batch, num_workers=0)
    model = small_cnn(width).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for x, y in loader:
        x, y = x.to(dev), y.to(dev)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    if gpu:
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
