"""Training fed by a single-process DataLoader whose samples cost CPU time, over several epochs.

Deterministic samples (no random augmentation), so ``dataloader-workers`` may move loading to
worker processes: from the next epoch the data wait overlaps with the step's compute. Used by
the auto-patch integration test (CPU) and as a demo of a DataLoader fix being kept.
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


class SlowSquares(Dataset):
    def __init__(self, n: int, cost_s: float):
        self.n, self.cost_s = n, cost_s

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        time.sleep(self.cost_s)  # stands in for decoding/augmenting one sample
        return torch.full((32,), float(i % 7)), i % 3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sample-ms", type=float, default=3.0)
    ap.add_argument("--compute-ms", type=float, default=12.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    loader = DataLoader(SlowSquares(64, args.sample_ms / 1000), batch_size=args.batch, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    total = 0.0
    for _ in range(args.epochs):
        for x, y in loader:
            time.sleep(args.compute_ms / 1000)  # stands in for GPU work the step waits for
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
    print(f"final_loss_sum {total:.6f} workers {loader.num_workers}")


if __name__ == "__main__":
    main()
