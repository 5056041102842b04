"""Tiny inference loop: N forwards of a small model under torch.no_grad, no optimizer."""
import sys

import torch

n = int(sys.argv[1]) if len(sys.argv) > 1 else 7
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
with torch.no_grad():
    for i in range(n):
        model(torch.randn(8, 16)).argmax(-1)
print("INFER_DONE", flush=True)
