"""Fix parity on a CUDA GPU (run on the GPU machine: ``pytest -m gpu tests/test_fix_gpu.py``).

On the CPU the GR-KAN modules fall back to the same PyTorch maths on both sides; here the
baseline Triton kernels (per-element atomics) are compared with the fast kernels, and TF32 and
cuDNN autotuning with the fp32 defaults, each within the fix's stated tolerance.
"""
from __future__ import annotations

import pytest
import torch

from fix_settings import ConvNet, GemmNet, kat_like_mlp
from stallscope.fixes.base import registered_fixes
from stallscope.fixes.parity import check_parity

pytestmark = pytest.mark.gpu

CASES = {
    "flashkat": lambda: (kat_like_mlp(), torch.randn(64, 197, 16)),
    "tf32": lambda: (GemmNet(), torch.randn(256, 16)),
    "cudnn-benchmark": lambda: (ConvNet(), torch.randn(32, 3, 8, 8)),
}


@pytest.fixture(autouse=True)
def _restore_switches():
    precision, bench = torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark
    yield
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.benchmark = bench


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fix_id", sorted(CASES))
def test_parity_on_cuda_within_tolerance(fix_id):
    model, x = CASES[fix_id]()
    model, x = model.cuda().train(), x.cuda()
    fix = registered_fixes()[fix_id]()
    targets = fix.find_targets(model)
    assert targets and all(fix.why_not(t) is None for t in targets)
    inputs = {}
    hooks = [t.obj.register_forward_pre_hook(lambda m, a, t=t: inputs.setdefault(t.name, a[0].detach().clone()))
             for t in targets if t.kind == "module"]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    handles = [fix.apply(t) for t in targets]
    try:
        for h in handles:
            module = fix.parity_module(h)
            probe = x if module is model else inputs[h.target.name]
            result = check_parity(module, (probe,), {}, lambda h=h: fix.suspended(h), fix.tolerance_for(h.target))
            print(fix_id, h.target.name, result.to_dict())
            assert result.passed, result.reason
    finally:
        for h in reversed(handles):
            fix.revert(h)
