"""Bottleneck Sampling: schedules, stage planning, the staged loop's calls, resampling, the guard."""
from __future__ import annotations

import math

import pytest
import torch

from stallscope.fixes.bottleneck_sampling.resample import KERNELS, resize
from stallscope.fixes.bottleneck_sampling.sampler import (
    BottleneckRefused,
    bottleneck_sample,
    euler_sample,
    plan_stages,
)
from stallscope.fixes.bottleneck_sampling.schedule import (
    DEFAULT_SCHEDULE,
    TUNED_SCHEDULE,
    BottleneckSchedule,
    ShiftRule,
    Stage,
    shift_sigma,
    stage_sigmas,
    unshift_sigma,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors on a shared 2-core machine: OpenMP barriers cost more than a second thread gives."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Recorder:
    """A denoiser that records what the sampler asks it and returns a simple velocity."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], float]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],)
        self.calls.append((tuple(x.shape), float(sigma[0])))
        return x / sigma.reshape(-1, *([1] * (x.ndim - 1)))  # exact velocity when the data is a point mass at 0


def test_shift_is_invertible_and_exp_mu_equivalent() -> None:
    for s in (1.0, 1.88, 3.16, 9.0):
        for sigma in (0.0, 0.2, 0.6, 1.0):
            assert unshift_sigma(shift_sigma(sigma, s), s) == pytest.approx(sigma)
    mu = 1.15  # FLUX's exponential shift e^mu / (e^mu + 1/sigma - 1) is the SD3 shift with s = e^mu
    for sigma in (0.1, 0.5, 0.9):
        assert shift_sigma(sigma, math.exp(mu)) == pytest.approx(math.exp(mu) / (math.exp(mu) + 1 / sigma - 1))


def test_stage_grid_pins_end_points_and_decreases() -> None:
    st = Stage(scale=0.5, steps=13, sigma_start=0.8, sigma_end=0.6)
    for shift in (1.0, 3.16, 9.0):
        sig = stage_sigmas(st, shift)
        assert len(sig) == 14 and sig[0] == 0.8 and sig[-1] == 0.6
        assert all(a > b for a, b in zip(sig, sig[1:]))


def test_resolution_aware_shift_follows_token_count() -> None:
    rule = ShiftRule()
    assert math.log(rule.shift_for((128, 128))) == pytest.approx(1.15)  # 4096 tokens
    assert math.log(rule.shift_for((32, 32))) == pytest.approx(0.5)  # 256 tokens
    assert rule.shift_for((64, 64)) < rule.shift_for((128, 128))


def test_plan_image_and_video_sizes() -> None:
    img = plan_stages((128, 128))
    assert [p.size for p in img] == [(128, 128), (64, 64), (128, 128)]
    assert img[1].shift < img[0].shift  # fewer tokens, smaller shift
    vid = plan_stages((9, 60, 90))  # frames are never resized
    assert [p.size for p in vid] == [(9, 60, 90), (9, 30, 45), (9, 60, 90)]
    odd = plan_stages((9, 30, 46), multiple=2)  # packing needs even sizes
    assert odd[1].size == (9, 16, 24)
    assert [p.size for p in plan_stages((33, 34), multiple=2)] == [(33, 34), (16, 16), (33, 34)]  # full size kept


@pytest.mark.parametrize("shape", [(2, 4, 32, 32), (1, 3, 5, 16, 24)])
def test_staged_loop_calls_model_at_each_stage_size(shape: tuple[int, ...]) -> None:
    rec = Recorder()
    out = bottleneck_sample(rec, torch.randn(shape), generator=torch.Generator().manual_seed(0))
    assert out.shape == shape
    plans = plan_stages(shape[2:])
    assert len(rec.calls) == DEFAULT_SCHEDULE.total_steps == 25
    expected = [((shape[0], shape[1], *p.size), s) for p in plans for s in p.sigmas[:-1]]
    assert [c[0] for c in rec.calls] == [e[0] for e in expected]
    assert [c[1] for c in rec.calls] == pytest.approx([e[1] for e in expected])
    # the exact flow of a point mass at 0 sends every x to 0 at sigma 0, through every transition
    assert out.abs().max() < 1e-5


def test_transition_renoises_to_stage_start() -> None:
    seen: dict[int, torch.Tensor] = {}

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = round(float(sigma[0]), 6)
        if s in (0.8, 0.6) and s not in seen:
            seen[s] = x.clone()
        return (x - 1.0) / sigma.reshape(-1, 1, 1, 1)  # data is a point mass at 1: x0_hat = 1 exactly

    sched = BottleneckSchedule(
        stages=(Stage(1.0, 2, 1.0, 0.8, 1.0), Stage(0.5, 2, 0.8, 0.6, 1.0), Stage(1.0, 2, 0.6, 0.0, 1.0))
    )
    bottleneck_sample(model, torch.zeros(64, 1, 16, 16), sched, generator=torch.Generator().manual_seed(1))
    low, high = seen[0.8], seen[0.6]
    assert low.shape[-2:] == (8, 8) and high.shape[-2:] == (16, 16)
    # re-noised from x0_hat = 1 with fresh noise: x = (1 - s) * 1 + s * eps
    assert low.mean().item() == pytest.approx(0.2, abs=0.05) and low.std().item() == pytest.approx(0.8, rel=0.1)
    assert high.mean().item() == pytest.approx(0.4, abs=0.05) and high.std().item() == pytest.approx(0.6, rel=0.1)


def test_euler_baseline_nfe_and_grid() -> None:
    rec = Recorder()
    euler_sample(rec, torch.randn(1, 4, 32, 32), steps=50)
    assert len(rec.calls) == 50 and rec.calls[0][1] == 1.0 and all(c[0] == (1, 4, 32, 32) for c in rec.calls)


def test_guard_refuses_below_native_resolution() -> None:
    rec = Recorder()
    with pytest.raises(BottleneckRefused) as info:
        bottleneck_sample(rec, torch.randn(1, 4, 64, 64), native_min_size=64)
    msg = str(info.value)
    assert "\n" not in msg and "32x32" in msg and "64x64" in msg and "stage 2" in msg
    assert rec.calls == []  # refused before any model call
    bottleneck_sample(rec, torch.randn(1, 4, 64, 64), native_min_size=(32, 32))
    assert len(rec.calls) == 25


def test_schedule_validation() -> None:
    with pytest.raises(ValueError):
        Stage(1.0, 4, 0.5, 0.6)
    with pytest.raises(ValueError):
        BottleneckSchedule(stages=(Stage(1.0, 4, 1.0, 0.5),))
    with pytest.raises(ValueError):
        BottleneckSchedule(stages=(Stage(1.0, 4, 0.9, 0.0),))
    assert TUNED_SCHEDULE.total_steps == 25
    assert 50 / DEFAULT_SCHEDULE.relative_cost(0.5) > 3.0


@pytest.mark.parametrize("kernel", KERNELS)
def test_resize_keeps_constants_and_frames(kernel: str) -> None:
    x = torch.full((2, 3, 5, 16, 20), 0.7)
    down = resize(x, (8, 10), kernel)
    assert down.shape == (2, 3, 5, 8, 10)
    assert torch.allclose(down, torch.full_like(down, 0.7), atol=1e-5)
    assert resize(down, (16, 20), kernel).shape == x.shape


def test_fourier_resize_is_exact_on_band_limited_signals() -> None:
    n = 32
    u = torch.arange(n) / n
    sig = torch.cos(2 * math.pi * 3 * u)[:, None] * torch.sin(2 * math.pi * 5 * u)[None, :]
    x = sig.expand(1, 1, n, n)
    up = resize(resize(x, (16, 16), "fourier"), (n, n), "fourier")
    assert torch.allclose(up, x, atol=1e-5)
    lz = resize(x, (16, 16), "lanczos3")  # low-res pixel centres sit at (2i + 0.5) / n
    c = (torch.arange(16) * 2 + 0.5) / n
    want = torch.cos(2 * math.pi * 3 * c)[:, None] * torch.sin(2 * math.pi * 5 * c)[None, :]
    assert torch.allclose(lz[0, 0], want, atol=0.1)


def test_low_first_stage_starts_from_its_own_noise() -> None:
    rec = Recorder()
    sched = BottleneckSchedule(stages=(Stage(0.5, 3, 1.0, 0.0), Stage(1.0, 4, 0.7, 0.0)))  # cascaded low -> high
    out = bottleneck_sample(rec, torch.randn(2, 3, 16, 16), sched, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16)
    assert [c[0][-2:] for c in rec.calls] == [(8, 8)] * 3 + [(16, 16)] * 4
