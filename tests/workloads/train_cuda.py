"""Tiny CUDA training loop (GPU machine only)."""
import sys

import torch

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 12
model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 512)).cuda()
opt = torch.optim.AdamW(model.parameters())
x = torch.randn(256, 512, device="cuda")
for i in range(steps):
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
torch.cuda.synchronize()
print("CUDA_DONE", flush=True)
