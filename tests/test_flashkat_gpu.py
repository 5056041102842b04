"""GR-KAN kernels on a CUDA GPU: parity with the float64 reference, edge cases, determinism,
and a KAT-T-like model step with fast vs baseline kernels. Run with ``pytest -m gpu``."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # pragma: no cover - CPU machines deselect these anyway
    pytest.skip("needs CUDA", allow_module_level=True)

from stallscope.fixes.flashkat import baseline as B  # noqa: E402
from stallscope.fixes.flashkat import kernels as K  # noqa: E402
from stallscope.fixes.flashkat import reference as R  # noqa: E402
from stallscope.fixes.flashkat.modules import BaselineKATGroup, KATGroup, restore, use_fast_kernels  # noqa: E402

DEV = "cuda"


def _inputs(shape, groups, shared, seed=0):
    gen = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(shape, device=DEV, generator=gen) * 3
    x.view(-1)[:4] = torch.tensor([8.0, -8.0, 0.0, -0.0], device=DEV)
    num = torch.randn(1 if shared else groups, 6, device=DEV, generator=gen) * 0.3
    den = torch.randn(groups, 4, device=DEV, generator=gen) * 0.3
    g = torch.randn(shape, device=DEV, generator=gen)
    return x, num, den, g


def _check(y, dx, dn, dd, x, num, den, g):
    y64 = R.reference_fp64(x, num, den)
    dx64, dn64, dd64 = R.reference_grads_fp64(x, num, den, g)
    mass_n, mass_d = R.coefficient_mass_fp64(x, num, den, g)
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx.double(), dx64, rtol=1e-5, atol=1e-5)
    assert torch.all((dn.double() - dn64).abs() <= 1e-5 * mass_n), ((dn.double() - dn64).abs() / mass_n).max()
    assert torch.all((dd.double() - dd64).abs() <= 1e-5 * mass_d), ((dd.double() - dd64).abs() / mass_d).max()


@pytest.mark.parametrize(
    "shape,groups,shared",
    [
        ((8, 197, 192), 8, True),  # group width 24 (KAT-T act1)
        ((4, 197, 768), 8, True),  # group width 96 (KAT-T act2)
        ((2, 197, 3072), 8, False),  # group width 384
        ((3, 197, 16), 16, False),  # group width 1
        ((5, 197, 96), 1, True),  # G = 1
        ((3, 197, 36), 3, False),  # group width 12: masked column tile
        ((37, 768), 8, True),  # 2-D input
    ],
)
def test_fast_parity_with_fp64(shape, groups, shared):
    x, num, den, g = _inputs(shape, groups, shared)
    y = K.flashkat_forward(x, num, den)
    dx, dn, dd = K.flashkat_backward(x, num, den, g)
    _check(y, dx, dn, dd, x, num, den, g)
    _, dna, dda = K.flashkat_backward(x, num, den, g, reduction="atomic")
    mass_n, mass_d = R.coefficient_mass_fp64(x, num, den, g)
    assert torch.all((dna.double() - dn.double()).abs() <= 1e-5 * mass_n)
    assert torch.all((dda.double() - dd.double()).abs() <= 1e-5 * mass_d)


def test_baseline_parity_with_fp64():
    x, num, den, g = _inputs((4, 197, 192), 8, True)
    y = B.baseline_forward(x, num, den)
    dx, dn, dd = B.baseline_backward(x, num, den, g)
    _check(y, dx, dn, dd, x, num, den, g)
    torch.testing.assert_close(K.flashkat_forward(x, num, den), y, rtol=1e-6, atol=1e-6)


def test_two_stage_is_bitwise_deterministic():
    x, num, den, g = _inputs((32, 197, 768), 8, True, seed=3)
    first = K.flashkat_backward(x, num, den, g)
    for _ in range(3):
        for a, b in zip(first, K.flashkat_backward(x, num, den, g)):
            assert torch.equal(a, b)


def test_module_edge_cases_on_gpu():
    torch.manual_seed(0)
    act = KATGroup(num_groups=8, mode="swish", device=DEV)
    x = (torch.randn(197, 4, 192, device=DEV) * 3).transpose(0, 1).requires_grad_()  # non-contiguous
    ref = KATGroup(num_groups=8, mode="swish", device=DEV, impl="reference")
    xr = x.detach().clone().requires_grad_()
    act(x).square().sum().backward()
    ref(xr).square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        yb = act(x.detach().bfloat16())
    assert yb.dtype == torch.float32
    empty = torch.empty(0, 197, 192, device=DEV, requires_grad=True)
    act(empty).sum().backward()
    assert empty.grad.shape == empty.shape


def test_swap_on_baseline_module_keeps_parameters():
    mod = BaselineKATGroup(num_groups=8, mode="swish", device=DEV)
    params = [id(p) for p in mod.parameters()]
    x = torch.randn(16, 197, 768, device=DEV) * 2
    y0 = mod(x)
    handle = use_fast_kernels(mod)
    y1 = mod(x)
    assert [id(p) for p in mod.parameters()] == params
    torch.testing.assert_close(y1, y0, rtol=1e-6, atol=1e-6)
    restore(handle)
    assert torch.equal(mod(x), y0)


def test_kat_tiny_step_fast_matches_baseline():
    from bench.models.kat_vit import kat_tiny

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    fast = kat_tiny("fast", depth=4).to(DEV)
    base = kat_tiny("baseline", depth=4).to(DEV)
    base.load_state_dict(fast.state_dict())
    images = torch.randn(8, 3, 224, 224, device=DEV)
    labels = torch.randint(0, 1000, (8,), device=DEV)
    losses = {}
    for name, model in (("fast", fast), ("base", base)):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        losses[name] = loss.item()
    assert abs(losses["fast"] - losses["base"]) <= 1e-5 * abs(losses["base"])
    for (name, pf), pb in zip(fast.named_parameters(), base.parameters()):
        scale = pb.grad.abs().max().item() + 1e-12
        assert (pf.grad - pb.grad).abs().max().item() <= 1e-3 * scale, name
    # short training: the loss curves overlap
    curves = {}
    for name, model in (("fast", fast), ("base", base)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        curve = []
        for _ in range(20):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            opt.step()
            curve.append(loss.item())
        curves[name] = curve
    for a, b in zip(curves["fast"], curves["base"]):
        assert abs(a - b) <= 1e-2 * abs(b)
    assert curves["fast"][-1] < curves["fast"][0]


@pytest.mark.parametrize("forced", ["16,4,4,4,32,1", "64,4,2,1,32,1", "8,4,8,3,8,0"])
def test_forced_tiles_including_group_major(monkeypatch, forced):
    x, num, den, g = _inputs((6, 197, 192), 8, True, seed=9)
    monkeypatch.setenv("STALLSCOPE_FLASHKAT_FWD_TILE", forced)
    monkeypatch.setenv("STALLSCOPE_FLASHKAT_BWD_TILE", forced)
    monkeypatch.setattr(K, "_TUNED", {})
    y = K.flashkat_forward(x, num, den)
    dx, dn, dd = K.flashkat_backward(x, num, den, g)
    _check(y, dx, dn, dd, x, num, den, g)
