"""The Python API: a custom loop without optimizer, steps marked with Session.step()."""
import sys

import torch

from stallscope.profiler import Session

out = sys.argv[1]
w = torch.randn(16, 16, requires_grad=True)
with Session(out=out, skip=1, steps=2) as s:
    for i in range(5):
        loss = (torch.randn(4, 16) @ w).pow(2).sum()
        loss.backward()
        with torch.no_grad():
            w -= 0.01 * w.grad
            w.grad = None
        s.step()
print("API_DONE", s.result["exit"]["status"], flush=True)
