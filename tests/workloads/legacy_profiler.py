"""A target that enters the legacy autograd profiler while stallscope's window is tracing."""
import torch
m = torch.nn.Linear(4, 4); opt = torch.optim.SGD(m.parameters(), lr=0.1)
for i in range(6):
    if i == 3:
        with torch.autograd.profiler.profile() as p:
            m(torch.randn(2, 4)).sum().backward()
        print("LEGACY_OK", len(p.function_events) > 0)
    else:
        m(torch.randn(2, 4)).sum().backward()
    opt.step()
