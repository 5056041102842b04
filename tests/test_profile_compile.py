"""Profiling a torch.compile'd model must not make it recompile (dynamo guards on global hooks)."""
from __future__ import annotations

from pathlib import Path

from tests.test_profile import profile, steps_csv

TRAIN = """
import torch, torch.nn as nn, torch.nn.functional as F
from torch._dynamo.utils import counters
torch.manual_seed(0)
model = torch.compile(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), backend="eager")
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
for _ in range(20):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
print("graphs", counters["stats"]["unique_graphs"])
"""


def _profiled_count(tmp_path: Path, source: str, label: str, *opts: str) -> tuple[int | None, int]:
    """Profile ``source``; (the number it printed after ``label``, steps recorded)."""
    script = tmp_path / "train.py"
    script.write_text(source)
    res = profile(tmp_path / "run", ["python", str(script)], *opts)
    assert res.returncode == 0, res.stderr[-2000:]
    counts = [int(line.split()[1]) for line in res.stdout.splitlines() if line.startswith(label + " ")]
    return (counts[0] if counts else None), len(steps_csv(tmp_path / "run" / "rank0"))


def test_compiled_model_is_not_recompiled_when_the_step_hooks_retire(tmp_path: Path) -> None:
    graphs, steps = _profiled_count(tmp_path, TRAIN, "graphs", "--skip", "3", "--steps", "3")
    assert graphs == 1  # one graph, compiled once, through 20 steps
    assert steps >= 19


INPLACE = """
import torch, torch.nn as nn, torch.nn.functional as F
from torch._dynamo.utils import counters
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
for i in range(30):
    if i == 10:
        model.compile(backend="eager")  # in place, after an eager warm-up: the hooks run inside it
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
print("frames", counters["frames"]["total"])
"""


def test_hooks_inside_an_in_place_compiled_module_are_not_traced(tmp_path: Path) -> None:
    frames, steps = _profiled_count(tmp_path, INPLACE, "frames", "--skip", "14", "--steps", "4")
    # traced, the hook's counters became guards and its frames recompiled each step (16 frames)
    assert frames is not None and frames <= 2
    assert steps >= 29
