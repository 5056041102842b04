"""Torch work with no loop at all: no optimizer, no module, no DataLoader."""
import torch

a = torch.randn(64, 64)
print("PLAIN_DONE", float((a @ a).sum()) != 0.0, flush=True)
