"""A tiny training loop that starts torch.compile's compile-worker process the way inductor does
(a fresh interpreter running torch/_inductor/compile_worker/__main__.py, which imports torch).
Here the worker is asked for --help, so it imports torch and exits without compiling anything."""
import os
import subprocess
import sys

import torch

model = torch.nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
worker = os.path.join(os.path.dirname(torch.__file__), "_inductor", "compile_worker", "__main__.py")
for i in range(8):
    loss = model(torch.randn(4, 8)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if i == 2:
        done = subprocess.run([sys.executable, worker, "--help"], capture_output=True, text=True)
        print("WORKER_RC", done.returncode, flush=True)
print("TRAIN_DONE", flush=True)
