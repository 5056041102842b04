"""stallscope.fixes.parity: the comparison is right, and the program cannot notice that it ran."""

from __future__ import annotations

import contextlib
import dataclasses
import random

import numpy as np
import pytest
import torch
from torch import nn

from stallscope.fixes.base import Tolerance
from stallscope.fixes.parity import ParityProbe, check_parity, in_parity_check


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.Linear(16, 4)).train()


@contextlib.contextmanager
def scaled_last_layer(m: nn.Module, factor: float):
    """The "original" behaviour: the last layer's output times ``factor`` (1.0: identical)."""
    last = m[3]
    plain = last.forward
    last.forward = lambda t: plain(t) * factor
    try:
        yield
    finally:
        del last.forward


def test_identical_modules_pass_and_nothing_is_left_behind():
    m = model()
    x = torch.randn(6, 8)
    stats = [b.clone() for b in m.buffers()]
    rng = (torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    hook_calls = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda mod, a: hook_calls.append(mod))
    try:
        result = check_parity(
            m, (x,), {}, lambda: scaled_last_layer(m, 1.0), Tolerance(rtol=0, atol=0, grad_rtol=0, grad_atol=0)
        )
    finally:
        handle.remove()
    assert result.passed and result.max_abs_err_out == 0 and result.max_abs_err_grad == 0
    assert result.tensors_compared == 1 + 1 + 6  # output, input grad, 6 parameter grads (dropout masks matched)
    assert all(
        torch.equal(a, b) for a, b in zip(stats, list(m.buffers()), strict=True)
    )  # BatchNorm statistics restored
    assert torch.equal(rng[0], torch.random.get_rng_state()) and rng[1] == random.getstate()
    assert np.array_equal(rng[2], np.random.get_state()[1])
    assert all(p.grad is None for p in m.parameters())
    assert hook_calls == []  # global module hooks (the profiler's) were silenced


def test_differences_are_measured_against_the_tolerance():
    m, x = model(), torch.randn(6, 8)
    off = check_parity(m, (x,), {}, lambda: scaled_last_layer(m, 1.001), Tolerance(rtol=1e-5, atol=1e-6))
    assert not off.passed and "exceeds" in off.reason
    assert off.max_rel_err_out == pytest.approx(1e-3, rel=0.05)
    loose = check_parity(
        m,
        (x,),
        {},
        lambda: scaled_last_layer(m, 1.001),
        Tolerance(rtol=2e-3, atol=0, grad_rtol=1.0, grad_atol=0, scale="tensor"),
    )
    assert loose.passed, loose.reason


def test_errors_and_shape_changes_fail_parity_without_raising():
    m, x = model(), torch.randn(6, 8)

    @contextlib.contextmanager
    def raises():
        m[3].forward = lambda t: (_ for _ in ()).throw(RuntimeError("kernel exploded"))
        try:
            yield
        finally:
            del m[3].forward

    r = check_parity(m, (x,), {}, raises, Tolerance())
    assert not r.passed and "kernel exploded" in r.reason

    @contextlib.contextmanager
    def other_shape():
        m[3].forward = lambda t: torch.zeros(6, 5, requires_grad=True)
        try:
            yield
        finally:
            del m[3].forward

    r = check_parity(m, (x,), {}, other_shape, Tolerance())
    assert not r.passed and "differ" in r.reason


def test_probe_checks_the_next_real_input_once():
    m = model()
    seen = []
    ParityProbe(m[3], lambda: scaled_last_layer(m, 1.0), Tolerance(), lambda p, r: seen.append((r, in_parity_check())))
    m(torch.randn(6, 8))
    m(torch.randn(6, 8))
    assert len(seen) == 1 and seen[0][0].passed and seen[0][1] is False


def test_structurally_zero_gradients_are_judged_against_the_gradient_scale():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4)).train()
    x = torch.randn(32, 8)
    plain = m[2].forward

    @contextlib.contextmanager
    def rounding_noise():  # what TF32 does to a GEMM: ~1e-4 relative noise on its output
        gen = torch.Generator().manual_seed(1)
        m[2].forward = lambda t: (lambda y: y * (1 + 1e-4 * torch.randn(y.shape, generator=gen)))(plain(t))
        try:
            yield
        finally:
            del m[2].forward

    # the first Linear's bias gradient is zero up to rounding (BatchNorm removes the mean)
    tol = Tolerance(rtol=1e-2, atol=0, grad_rtol=1e-2, grad_atol=0, scale="tensor")
    assert check_parity(m, (x,), {}, rounding_noise, tol).passed
    strict = Tolerance(rtol=1e-2, atol=0, grad_rtol=1e-2, grad_atol=0, scale="tensor", floor=0.0)
    r = check_parity(m, (x,), {}, rounding_noise, strict)
    assert not r.passed and "grad.0.bias" in r.reason


def test_nothing_to_compare_is_not_a_pass():
    class Argmax(nn.Module):
        def forward(self, x):
            return x.argmax(-1)

    r = check_parity(Argmax(), (torch.randn(3, 4),), {}, contextlib.nullcontext, Tolerance())
    assert not r.passed and "no floating-point tensor" in r.reason


def _tf32_round(t: torch.Tensor) -> torch.Tensor:
    """Round float32 to TF32's 10 mantissa bits (nearest), as the tensor cores read GEMM inputs."""
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


class _EmulatedTF32Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return _tf32_round(x) @ _tf32_round(w).t() + b

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return _tf32_round(g) @ _tf32_round(w), _tf32_round(g).t() @ _tf32_round(x), g.sum(0)


class _ReluMLP(nn.Module):
    """fp32 ReLU MLP whose GEMMs run either in fp32 or with TF32 rounding emulated (``mode``)."""

    def __init__(self, width: int = 512, depth: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 10)
        self.mode = "tf32"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in [*self.layers, self.head]:
            if self.mode == "tf32":
                h = _EmulatedTF32Linear.apply(h, layer.weight, layer.bias)
            elif self.mode == "broken":  # a wrong fix: right forward, gradient 5 % too large
                h = (
                    _EmulatedTF32Linear.apply(h, layer.weight * 1.05, layer.bias)
                    - h @ (0.05 * layer.weight).detach().t()
                )
            else:
                h = torch.nn.functional.linear(h, layer.weight, layer.bias)
            if layer is not self.head:
                h = torch.relu(h)
        return h


@contextlib.contextmanager
def _fp32(m: _ReluMLP):
    mode, m.mode = m.mode, "fp32"
    try:
        yield
    finally:
        m.mode = mode


def test_tf32_rounding_passes_by_gradient_direction_where_elementwise_bounds_fail():
    from stallscope.fixes.tf32.fix import TF32

    m = _ReluMLP()
    x = torch.randn(512, 512)
    elementwise = dataclasses.replace(TF32.tolerance, grad_min_cosine=None)
    strict = check_parity(m, (x,), {}, lambda: _fp32(m), elementwise)
    assert not strict.passed and strict.max_rel_err_grad > 2e-2  # ReLU decisions flipped by rounding
    r = check_parity(m, (x,), {}, lambda: _fp32(m), TF32.tolerance)
    assert r.passed, r.reason
    assert r.max_rel_err_out < 1e-2
    assert 0.99 <= r.min_grad_cosine < 1.0
    m.mode = "broken"
    bad = check_parity(m, (x,), {}, lambda: _fp32(m), TF32.tolerance)
    assert not bad.passed and "norm ratio" in bad.reason


@contextlib.contextmanager
def _scaled_output(m: nn.Module, factor: float):
    handle = m.register_forward_hook(lambda mod, a, out: out * factor)
    try:
        yield
    finally:
        handle.remove()


def test_cudnn_benchmark_is_held_to_tf32_bounds_only_while_cudnn_tf32_is_on():
    """Another cuDNN algorithm may also switch TF32 use when cuDNN's TF32 is on, not when it is
    off; an error between the two bounds passes the one and fails the other."""
    from fix_settings import ConvNet

    from stallscope.fixes.cudnn_benchmark.fix import CudnnBenchmark
    from stallscope.fixes.tf32.fix import TF32

    fix = CudnnBenchmark()
    torch.manual_seed(0)
    m, x = ConvNet().train(), torch.randn(2, 3, 8, 8)
    (target,) = fix.find_targets(m)
    saved = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        on = fix.tolerance_for(target)
        torch.backends.cudnn.allow_tf32 = False
        off = fix.tolerance_for(target)
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    assert (on.rtol, on.grad_rtol) == (TF32.tolerance.rtol, TF32.tolerance.grad_rtol)
    assert off.rtol < on.rtol and off.grad_rtol < on.grad_rtol
    between = (off.rtol * on.rtol) ** 0.5
    assert check_parity(m, (x,), {}, lambda: _scaled_output(m, 1 + between), on).passed
    r = check_parity(m, (x,), {}, lambda: _scaled_output(m, 1 + between), off)
    assert not r.passed and r.reason.startswith("out: ")
