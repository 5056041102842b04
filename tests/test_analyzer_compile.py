"""compile: recompilations inside the window are found on a real CPU trace; warm-up compiles are not."""
from __future__ import annotations

from pathlib import Path

import pytest

from stallscope.analyzers.base import Severity
from stallscope.analyzers.context import load_context
from tests.analyzer_traces import run
from tests.test_profile import profile

SCRIPT = """
import sys, torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
model = torch.compile(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), backend="eager")
opt = torch.optim.SGD(model.parameters(), lr=0.01)
change_at = int(sys.argv[1])
for i in range(12):
    n = 8 if i < change_at else 24  # a new batch size: a guard fails and the frame recompiles
    x, y = torch.randn(n, 16), torch.randint(0, 4, (n,))
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("compile")
    (root / "train.py").write_text(SCRIPT)
    out = {}
    for name, change_at in (("recompile", 6), ("steady", 100)):
        res = profile(root / name, ["python", str(root / "train.py"), str(change_at)], "--skip", "4", "--steps", "4")
        assert res.returncode == 0, res.stderr[-2000:]
        assert "global hooks" not in res.stderr  # torch's warning about our hooks is silenced
        out[name] = root / name
    return out


def test_recompile_inside_the_window_is_a_compile_finding(runs: dict) -> None:
    ctx = load_context(runs["recompile"])
    found = run("compile", ctx)
    assert len(found) == 1
    f = found[0]
    assert f.category == "compile" and f.evidence["steps_with_compile"] == [6]
    assert f.evidence["frames_compiled"] >= 1 and f.severity == Severity.HIGH
    # the same gap is not also reported as a CPU metric
    assert not run("cpu-metric", ctx)


def test_compiling_before_the_window_is_not_a_finding(runs: dict) -> None:
    assert run("compile", load_context(runs["steady"])) == []
