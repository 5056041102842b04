"""Auto-patch end to end in one process, on the CPU, with a fake profiler hooks object.

Test-only fixes (passed to the patcher, never put in the global registry) swap the
implementation of a deliberately slow activation: one is faster (kept), one slower (rolled
back), one numerically wrong (fails parity on the first real input and is rolled back before
the patched code ever runs). After each run the program's results are compared bit for bit
with an unpatched run.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from torch import nn

from stallscope.fixes.autopatch import AutoPatcher, attach, load_kept_fixes, p_faster
from stallscope.fixes.base import Fix, PatchHandle, Target, Tolerance
from stallscope.profiler.common import read_yaml
from stallscope.profiler.hooks import StepEvent

# The slow activation sleeps 50 ms a call; the rest of a step is ~1 ms of tiny ops. "Faster" is
# then decided by 12 + 12 samples whose medians differ ~50x: a loaded 2-core machine (a few ms of
# scheduling delay per step) cannot make an unpatched step look as short as a patched one, where
# with a 10 ms sleep three delayed patched steps already cost the test its p < 0.01.
DELAY_S = 0.050
STEPS = 50  # skip 2 + clock start 1 + baseline 12 + two fixes x (parity 1 + warm-up 1 + 12 measured) = 43


def _slow(x: torch.Tensor) -> torch.Tensor:
    time.sleep(DELAY_S)
    return torch.tanh(x)


def _fast(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x)


def _slower(x: torch.Tensor) -> torch.Tensor:
    time.sleep(3 * DELAY_S)
    return torch.tanh(x)


def _wrong(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * 1.01


class SlowTanh(nn.Module):
    """An activation whose implementation is an instance attribute (like KAT's ``rational``)."""

    def __init__(self) -> None:
        super().__init__()
        self.impl = _slow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.impl(x)


class SwapImpl(Fix):
    """Test-only: swap ``impl`` of every SlowTanh instance for ``replacement``."""

    scope = "module"
    description = "test-only implementation swap"
    tolerance = Tolerance(rtol=1e-6, atol=1e-6, grad_rtol=1e-6, grad_atol=1e-6)
    replacement = staticmethod(_fast)

    def find_targets(self, root: Any) -> list[Target]:
        return [Target(n, m) for n, m in root.named_modules() if isinstance(m, SlowTanh)]

    def apply(self, target: Target) -> PatchHandle:
        saved = {"impl": target.obj.__dict__["impl"]}
        target.obj.impl = self.replacement
        return PatchHandle(self.id, target, saved)

    def revert(self, handle: PatchHandle) -> None:
        handle.target.obj.impl = handle.saved["impl"]
        handle.reverted = True


class Faster(SwapImpl):
    id = "test-faster"


class Slower(SwapImpl):
    id = "test-slower"
    replacement = staticmethod(_slower)


class Broken(SwapImpl):
    id = "test-broken"
    replacement = staticmethod(_wrong)


class FakeHooks:
    """The three seams of ``profiler.hooks`` that auto-patch uses."""

    def __init__(self, roots: list, loaders: list = ()) -> None:
        self.roots, self.loaders, self.listeners = roots, list(loaders), []

    def add_step_listener(self, fn) -> None:
        self.listeners.append(fn)

    def root_modules(self) -> list:
        return list(self.roots)

    def dataloaders(self) -> list:
        return list(self.loaders)

    def step_end(self, index: int, data_wait_ms: float = 0.0) -> None:
        for fn in self.listeners:
            fn(StepEvent(index, 0.0, data_wait_ms, False))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), SlowTanh(), nn.Dropout(0.25), nn.Linear(16, 1))


def train(steps: int, on_step=None, model: nn.Module | None = None) -> tuple[list[float], dict]:
    model = model if model is not None else make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(1)
    data = torch.randn(steps, 12, 8)
    losses = []
    for i in range(steps):
        loss = model(data[i]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(i)
    return losses, {k: v.clone() for k, v in model.state_dict().items()}


def run_autopatched(tmp_path, fixes: dict, steps: int, k: int = 12):
    model = make_model()
    hooks = FakeHooks([model])
    patcher = attach(tmp_path, k, hooks=hooks, skip=2, fixes=fixes)
    opt_params_before = [id(p) for p in model.parameters()]
    keys_before = list(model.state_dict().keys())
    losses, state = train(steps, hooks.step_end, model)
    patcher.finish()
    assert [id(p) for p in model.parameters()] == opt_params_before
    assert list(model.state_dict().keys()) == keys_before
    return model, losses, state, read_yaml(tmp_path / "patches.yaml")


def _entry(doc: dict, fix_id: str) -> dict:
    return next(e for e in doc["fixes"] if e["id"] == fix_id)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # timing tests: intra-op threads on a busy shared machine turn 4 ms steps into 500 ms ones
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unpatched(_one_thread):
    return train(STEPS)


def test_broken_fix_fails_parity_and_results_match_unpatched(tmp_path, unpatched):
    model, losses, state, doc = run_autopatched(tmp_path, {"test-broken": Broken}, steps=STEPS)
    e = _entry(doc, "test-broken")
    assert e["decision"] == "rolled_back"
    assert "parity failed" in e["why"]
    assert e["parity"]["passed"] is False and e["parity"]["max_rel_err_out"] > 1e-3
    assert e["tolerance"]["rtol"] == 1e-6
    assert model[2].impl is _slow
    assert losses == unpatched[0]
    assert all(torch.equal(state[k], unpatched[1][k]) for k in state)


def test_faster_fix_is_kept_slower_one_rolled_back(tmp_path, unpatched):
    model, losses, state, doc = run_autopatched(tmp_path, {"test-faster": Faster, "test-slower": Slower}, steps=STEPS)
    fast, slow = _entry(doc, "test-faster"), _entry(doc, "test-slower")
    assert fast["decision"] == "kept", fast["why"]
    assert fast["parity"]["passed"] and fast["parity"]["max_abs_err_out"] == 0.0
    assert fast["speedup"] > 1.5 and fast["p_value"] < 0.01
    assert len(fast["before"]["samples_ms"]) == 12 and len(fast["after"]["samples_ms"]) == 12
    assert slow["decision"] == "rolled_back" and "not faster" in slow["why"]
    assert model[2].impl is _fast  # the kept one stays; the slower one was reverted on top of it
    assert losses == unpatched[0]  # same maths: the run's results are unchanged
    assert all(torch.equal(state[k], unpatched[1][k]) for k in state)
    assert doc["kind"] == "stallscope-patches" and doc["phase"] == "done"
    assert load_kept_fixes(tmp_path / "patches.yaml") == ["test-faster"]


def test_program_too_short_records_why(tmp_path):
    _, _, _, doc = run_autopatched(tmp_path, {"test-faster": Faster}, steps=5)
    e = _entry(doc, "test-faster")
    assert e["decision"] == "skipped" and "before the baseline" in e["why"]


def test_program_ending_mid_measurement_leaves_patch_applied(tmp_path):
    _, _, _, doc = run_autopatched(tmp_path, {"test-faster": Faster}, steps=22)
    e = _entry(doc, "test-faster")
    assert e["decision"] == "applied" and "neither kept nor rolled back" in e["why"]


def test_registered_fixes_are_skipped_with_reasons_on_cpu(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4))
    hooks = FakeHooks([model])
    patcher = AutoPatcher(tmp_path, 3, hooks, only=["tf32", "flashkat", "dataloader-workers", "tensorbleu"])
    assert patcher.k == 6  # 3 samples a side could never reach p < 0.01
    for i in range(8):
        model(torch.randn(2, 4))
        patcher.on_step(StepEvent(i, 0.0, 0.0, False))
    doc = read_yaml(tmp_path / "patches.yaml")
    why = {e["id"]: (e["decision"], e["why"]) for e in doc["fixes"]}
    assert why["tf32"] == ("skipped", "the model does not run on a CUDA device, so this fix has no effect")
    assert why["dataloader-workers"][0] == "skipped" and "no DataLoader" in why["dataloader-workers"][1]
    assert all(d == "skipped" and w for d, w in why.values())


def test_steps_in_the_trace_window_are_not_measured(tmp_path):
    model = make_model()
    hooks = FakeHooks([model])
    patcher = AutoPatcher(tmp_path, 4, hooks, fixes={"test-faster": Faster})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for i in range(8):
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        patcher.on_step(StepEvent(i, 0.0, 0.0, in_window=i < 4))
    assert len(patcher.baseline) == 3  # steps 4..7: the first only starts the clock


def test_p_faster_matches_separated_and_identical_samples():
    assert p_faster([10.0] * 8, [10.0] * 8) == 1.0
    assert p_faster([10, 11, 12, 10.5, 11.5, 12.5, 10.2, 11.2], [5, 6, 5.5, 6.5, 5.2, 6.2, 5.1, 6.1]) < 0.001
    assert p_faster([5, 6, 5.5, 6.5, 5.2, 6.2, 5.1, 6.1], [10, 11, 12, 10.5, 11.5, 12.5, 10.2, 11.2]) > 0.99
