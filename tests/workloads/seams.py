"""Uses the in-process seams (profiler.hooks) that auto-patch relies on, then reports what it saw."""
import torch
from torch.utils.data import DataLoader, TensorDataset

from stallscope.profiler import hooks

events = []
hooks.add_step_listener(events.append)
loader = DataLoader(TensorDataset(torch.randn(24, 8), torch.randn(24, 1)), batch_size=4)
model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
opt = torch.optim.Adam(model.parameters())
for x, y in loader:
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()
print("EVENTS", [e.index for e in events], [e.in_window for e in events])
print("WAITS_POSITIVE", all(e.data_wait_ms > 0 and e.wall_ms >= e.data_wait_ms for e in events))
print("ROOTS", [type(m).__name__ for m in hooks.root_modules()], hooks.root_modules()[0] is model)
print("LOADERS", len(hooks.dataloaders()), hooks.dataloaders()[0] is loader)
