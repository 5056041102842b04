"""Generic contract tests for every registered fix, driven by ``tests/fix_settings.py``.

For each fix: find targets on its settings program -> apply -> parity check -> revert -> the
program is bit-identical to before (parameters, buffers, outputs); Parameter identity,
``state_dict`` keys, optimizer param identity, hooks and device kept after apply and after revert.

On the CPU the patched numerics of tf32, cudnn-benchmark and flashkat equal the original ones (TF32
and cuDNN do not exist there; flashkat falls back to the same PyTorch maths), so a passing parity
check would compare a function with itself. What is checked instead is what makes the check that
guards these fixes on the GPU meaningful: its reference run really runs with the fix suspended,
the fix is back in force afterwards, and the fix's own tolerance rejects an output perturbed by
4x its bound while accepting one perturbed by a quarter of it. (TF32's rounding itself is emulated
in tests/test_fix_parity.py; the flashkat kernels are compared with an independent implementation
under the Triton interpreter.)
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys

import pytest
import torch
from fix_settings import SETTINGS, Advisory, FixSetting

from stallscope.fixes.base import Fix, registered_fixes
from stallscope.fixes.parity import check_parity

RUNNABLE = sorted(i for i, s in SETTINGS.items() if isinstance(s, FixSetting))


@pytest.fixture(autouse=True)
def _restore_global_switches():
    precision = torch.get_float32_matmul_precision()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.benchmark = benchmark


def test_every_registered_fix_has_a_setting():
    missing = sorted(set(registered_fixes()) - set(SETTINGS))
    assert not missing, f"add these fixes to tests/fix_settings.py: {missing}"


@pytest.mark.parametrize("fix_id", sorted(registered_fixes()))
def test_fix_declares_its_contract(fix_id: str):
    cls = registered_fixes()[fix_id]
    assert issubclass(cls, Fix) and cls.id == fix_id and cls.description
    assert cls.scope in ("module", "process", "dataloader", "callable", "pipeline")
    assert cls.tolerance.scale in ("element", "tensor")


@pytest.mark.parametrize("fix_id", sorted(registered_fixes()))
def test_fix_module_imports_without_torch(fix_id: str):
    module = registered_fixes()[fix_id].__module__
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"{module} imports torch at import time"


@contextlib.contextmanager
def _watched_suspension(fix, handle, seen: list, in_force):
    """``fix.suspended(handle)``, recording whether the fix is in force while it is suspended."""
    with fix.suspended(handle):
        seen.append(in_force())
        yield


def _not_reverted(handle) -> bool:
    return not handle.reverted


@contextlib.contextmanager
def _scaled_output(module: torch.nn.Module, factor: float):
    """The "original" run of a parity check with its output multiplied by ``factor``."""
    handle = module.register_forward_hook(lambda m, a, out: out * factor)
    try:
        yield
    finally:
        handle.remove()


def _snapshot(model: torch.nn.Module, x: torch.Tensor) -> dict:
    model.eval()  # eval: the snapshot itself must not move BatchNorm statistics
    with torch.no_grad():
        out = model(x).clone()
    model.train()
    return {
        "params": {n: (p, p.detach().clone(), p.device) for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "keys": list(model.state_dict().keys()),
        "hooks": {
            n: (dict(m._forward_pre_hooks), dict(m._forward_hooks), dict(m._backward_hooks))
            for n, m in model.named_modules()
        },
        "out": out,
    }


def _assert_structure_kept(model, snap, opt):
    assert list(model.state_dict().keys()) == snap["keys"]
    for n, p in model.named_parameters():
        assert p is snap["params"][n][0], f"Parameter {n} was replaced"
        assert p.device == snap["params"][n][2]
    assert [p for g in opt.param_groups for p in g["params"]] == [v[0] for v in snap["params"].values()]
    for n, m in model.named_modules():
        pre, fwd, bwd = snap["hooks"][n]
        assert dict(m._forward_pre_hooks) == pre and dict(m._forward_hooks) == fwd and dict(m._backward_hooks) == bwd


@pytest.mark.parametrize("fix_id", [i for i in RUNNABLE if "model" in SETTINGS[i].build()])
def test_model_fix_contract(fix_id: str):
    setting = SETTINGS[fix_id]
    built = setting.build()
    model, x = built["model"], built["input"]
    model.train()
    model.register_forward_hook(lambda m, a, o: None)  # a user hook that must survive
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fix = registered_fixes()[fix_id]()
    targets = fix.find_targets(model)
    inputs = {}  # each target module's real input, from one forward before the patch
    hooks = [
        t.obj.register_forward_pre_hook(lambda m, a, t=t: inputs.setdefault(t.name, a[0].detach().clone()))
        for t in targets
        if t.kind == "module"
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    before = _snapshot(model, x)

    assert len(targets) >= setting.min_targets
    assert all(fix.why_not(t) is None for t in targets), [fix.why_not(t) for t in targets]
    handles = [fix.apply(t) for t in targets]
    if setting.effect is not None:
        assert setting.effect(built)
    _assert_structure_kept(model, before, opt)

    for h in handles:
        module = fix.parity_module(h)
        probe_input = x if module is model else inputs[h.target.name]
        grads_before = [p.grad for p in model.parameters()]
        tol = fix.tolerance_for(h.target)
        seen: list = []
        in_force = (
            functools.partial(setting.effect, built)
            if setting.effect is not None
            else functools.partial(_not_reverted, h)
        )
        suspended = functools.partial(_watched_suspension, fix, h, seen, in_force)
        result = check_parity(module, (probe_input,), {}, suspended, tol)
        assert result.passed, result.reason
        assert seen == [False], "parity's reference run must run without the fix"
        assert in_force() and not h.reverted, "the fix is back in force after the check"
        assert result.tensors_compared >= 2
        assert [p.grad for p in model.parameters()] == grads_before  # nothing accumulated
        # the fix's tolerance tells a result off by 4x its bound from one off by a quarter of it
        off = check_parity(module, (probe_input,), {}, functools.partial(_scaled_output, module, 1 + 4 * tol.rtol), tol)
        assert not off.passed and off.reason.startswith("out: ") and "exceeds" in off.reason, off.reason
        near = check_parity(
            module, (probe_input,), {}, functools.partial(_scaled_output, module, 1 + tol.rtol / 4), tol
        )
        assert near.passed, near.reason
        assert [p.grad for p in model.parameters()] == grads_before

    for h in reversed(handles):
        fix.revert(h)
    if setting.effect is not None:
        assert not setting.effect(built)
    _assert_structure_kept(model, before, opt)
    after = _snapshot(model, x)
    for n, (_, value, _) in before["params"].items():
        assert torch.equal(value, after["params"][n][1])
    for n, value in before["buffers"].items():  # parity ran training-mode forwards: stats put back
        assert torch.equal(value, after["buffers"][n]), n
    assert torch.equal(before["out"], after["out"])


def _epoch(loader) -> list:
    torch.manual_seed(0)
    return [(xb.clone(), yb.clone()) for xb, yb in loader]


@pytest.mark.parametrize("fix_id", [i for i in RUNNABLE if "loader" in SETTINGS[i].build()])
def test_dataloader_fix_contract(fix_id: str):
    from stallscope.fixes.dataloader_workers.loader import equal_samples

    setting = SETTINGS[fix_id]
    built = setting.build()
    loader = built["loader"]
    reference_loader = setting.build()["loader"]
    expected = [_epoch(reference_loader), _epoch(reference_loader)]
    fix = registered_fixes()[fix_id]()
    settings_before = {k: v for k, v in vars(loader).items() if not k.startswith("_")}

    targets = fix.find_targets(loader)
    assert len(targets) == 1 and fix.why_not(targets[0]) is None, fix.why_not(targets[0])
    first = _epoch(loader)  # an epoch before the patch
    handle = fix.apply(targets[0])
    assert setting.effect(built)
    if setting.cpu_parity:
        verdict = fix.verify(handle)
        assert verdict["passed"], verdict
    assert not fix.effective(handle)
    second = _epoch(loader)  # the next epoch runs patched: same order, same content
    assert fix.effective(handle)
    assert equal_samples(first, expected[0]) and equal_samples(second, expected[1])

    fix.revert(handle)
    assert not setting.effect(built)
    assert {k: v for k, v in vars(loader).items() if not k.startswith("_")} == settings_before
    assert "_get_iterator" not in vars(loader)
    assert fix.find_targets(loader)  # patchable again


@pytest.mark.parametrize("fix_id", sorted(i for i, s in SETTINGS.items() if isinstance(s, Advisory)))
def test_advisory_fixes_never_patch_a_model(fix_id: str):
    cls = registered_fixes().get(fix_id)
    if cls is None:
        pytest.skip(f"{fix_id} is not registered in this checkout")
    fix = cls()
    from fix_settings import GemmNet

    targets = fix.find_targets(GemmNet())
    assert all(fix.why_not(t) for t in targets)
