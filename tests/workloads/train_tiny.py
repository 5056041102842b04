"""Tiny real training loop: a DataLoader, an MLP, SGD. Args: --steps N --exit-code C --raise-at K --sleep-ms S"""
import argparse
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=8)
p.add_argument("--exit-code", type=int, default=0)
p.add_argument("--raise-at", type=int, default=-1)
p.add_argument("--oom-at", type=int, default=-1, help="raise torch.OutOfMemoryError (as a CUDA OOM does) at this step")
p.add_argument("--sleep-ms", type=float, default=0.0)
p.add_argument("--print", action="store_true")
args = p.parse_args()

torch.manual_seed(0)
data = TensorDataset(torch.randn(args.steps * 4, 16), torch.randn(args.steps * 4, 1))
loader = DataLoader(data, batch_size=4, shuffle=False, num_workers=0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for i, (x, y) in enumerate(loader):
    if i == args.raise_at:
        raise RuntimeError(f"planted failure at step {i}")
    if i == args.oom_at:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (planted)")
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if args.sleep_ms:
        time.sleep(args.sleep_ms / 1000)
    if args.print:
        print(f"step {i} loss {loss.item():.4f}", flush=True)
print("TRAIN_DONE", flush=True)
sys.exit(args.exit_code)
