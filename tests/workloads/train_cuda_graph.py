"""Whole-step CUDA graph capture (the PyTorch docs pattern), replayed; the optimizer steps inside the graph."""
import torch

model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1)).cuda()
opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
x = torch.randn(64, 256, device="cuda")
y = torch.randn(64, 1, device="cuda")
s = torch.cuda.Stream()
s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    for _ in range(3):  # warm up on a side stream before capture
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
torch.cuda.current_stream().wait_stream(s)
g = torch.cuda.CUDAGraph()
opt.zero_grad(set_to_none=True)
with torch.cuda.graph(g):
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
for _ in range(20):
    g.replay()
torch.cuda.synchronize()
print("GRAPH_DONE", float(loss) >= 0, flush=True)
