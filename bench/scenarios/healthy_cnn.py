"""Healthy: a ResNet-style CNN trained with bf16 autocast, channels-last, torch.compile and
cuDNN autotuning, fed by a DataLoader that keeps up (4 workers, pinned memory, uint8 batches
normalised on the GPU, light per-sample work).

Compiled because eager BatchNorm is not healthy on the H200 (torch 2.11): PyTorch's native BN
kernels reached 12-20 % of HBM bandwidth and took a third of the step (channels-last and NCHW
alike), which the memory-bound analyzer rightly reports; inductor fuses BN with its neighbours.
"""
EXPECTED = "healthy"

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


class Uint8Images(Dataset):
    def __init__(self, n, size):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 255, (64, 3, size, size), dtype=torch.uint8, generator=g)
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        img = self.images[i % len(self.images)]
        return (img.flip(-1) if i % 2 else img), i % 100


def block(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    batch, size, width = (256, 128, 128) if gpu else (8, 32, 16)
    loader = DataLoader(Uint8Images(batch * (args.steps + 1), size), batch_size=batch, num_workers=4 if gpu else 2,
                        pin_memory=gpu, persistent_workers=True, prefetch_factor=4, drop_last=True)
    model = nn.Sequential(block(3, width, 2), block(width, 2 * width, 2), block(2 * width, 4 * width, 2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 100)).to(dev)
    if gpu:
        model = torch.compile(model.to(memory_format=torch.channels_last))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1) * 255
    for x, y in loader:
        x = x.to(dev, non_blocking=True).float().sub_(mean).div_(std)
        if gpu:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(dev, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=gpu):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    if gpu:
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
