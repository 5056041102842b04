"""A target that runs its own torch.profiler with a schedule and calls prof.step()."""
import torch

model = torch.nn.Linear(8, 8)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
sched = torch.profiler.schedule(wait=1, warmup=1, active=2, repeat=1)
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], schedule=sched) as prof:
    for i in range(6):
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        opt.zero_grad()
        prof.step()
print("OWN_PROFILER_DONE", len(prof.key_averages()) > 0, flush=True)
