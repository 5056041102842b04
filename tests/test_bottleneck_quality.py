"""The analytic benchmark: the Gaussian field's velocity is exact, the closed-form scores agree with
Monte Carlo through the real sampler, and the staged sampler's quality is within the stated bound."""
from __future__ import annotations

import pytest
import torch

from stallscope.fixes.bottleneck_sampling.analytic import GaussianField, exact_power_ratio, exact_quality
from stallscope.fixes.bottleneck_sampling.sampler import bottleneck_sample, euler_sample
from stallscope.fixes.bottleneck_sampling.schedule import PAPER_SCHEDULE, TUNED_SCHEDULE, BottleneckSchedule

FIELD = GaussianField()


@pytest.fixture(autouse=True)
def _one_thread():
    """Small FFTs on a shared 2-core machine: OpenMP barriers cost more than a second thread gives."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fft(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftn(x.double(), dim=(-2, -1), norm="ortho").flatten(0, 1)


def test_velocity_is_the_conditional_mean() -> None:
    g = torch.Generator().manual_seed(0)
    n, size = 2048, (12, 12)
    x0 = FIELD.sample(n, 1, size, g)
    eps = torch.randn(x0.shape, generator=g)
    for sigma in (0.15, 0.5, 0.9):
        xt = (1 - sigma) * x0 + sigma * eps
        v = FIELD.velocity(xt, torch.full((n,), sigma))
        target = eps - x0
        X, R = _fft(xt), _fft(target - v)
        # orthogonality principle: the optimal predictor's residual is uncorrelated with x, per mode
        corr = (R * X.conj()).mean(0).abs() / ((R.abs() ** 2).mean(0) * (X.abs() ** 2).mean(0)).sqrt()
        assert float(corr.mean()) < 0.05, (sigma, float(corr.mean()))
        mse = float(((target - v) ** 2).mean())
        for k in (0.9, 1.1):
            assert mse < float(((target - k * v) ** 2).mean())


def test_many_euler_steps_recover_the_covariance() -> None:
    size = (16, 16)
    ratio = exact_power_ratio(FIELD, size, steps=400)
    assert float((ratio - 1).abs().max()) < 0.02
    noise = torch.randn(256, 4, *size, generator=torch.Generator().manual_seed(1))
    score = FIELD.score(euler_sample(FIELD, noise, 200))
    assert score.mode_error < 1.6 * score.mc_floor and score.fd_rel < 0.01
    exact = FIELD.score(FIELD.sample(256, 4, size, torch.Generator().manual_seed(2)))
    assert abs(exact.mode_error - score.mode_error) < 0.02
    few = FIELD.score(euler_sample(FIELD, noise, 5))
    assert few.mode_error > 3 * score.mode_error  # the score does see discretisation error


def test_closed_form_matches_monte_carlo_through_the_sampler() -> None:
    size = (32, 32)
    sched = BottleneckSchedule(stages=PAPER_SCHEDULE.stages, down="fourier", up="fourier")
    noise = torch.randn(512, 4, *size, generator=torch.Generator().manual_seed(3))
    out = bottleneck_sample(FIELD, noise, sched, generator=torch.Generator().manual_seed(4))
    spec = _fft(out)
    mc_ratio = ((spec - spec.mean(0)).abs() ** 2).mean(0).reshape(size) / FIELD.spectrum(size)
    exact = exact_power_ratio(FIELD, size, sched)
    # 2048 draws per mode: ~2 % noise per mode; the mean over modes must agree much better
    assert abs(float(mc_ratio.mean() - exact.mean())) < 0.01
    assert float((mc_ratio - exact).abs().mean()) < 0.05
    assert float(exact.min()) < 0.8  # the paper schedule really loses power somewhere: not a vacuous match


def test_staged_quality_within_the_stated_bound() -> None:
    for side in (32, 64):
        full = exact_quality(FIELD, (side, side))
        tuned = exact_quality(FIELD, (side, side), TUNED_SCHEDULE)
        paper = exact_quality(FIELD, (side, side), PAPER_SCHEDULE)
        assert tuned / full >= 0.9, side  # the documented bound: within 10 % of 50 full-resolution steps
        assert paper / full < tuned / full, side  # the spec's schedule scores lower (docs say ~0.84-0.86)
        # at equal cost, staging beats simply taking fewer full-resolution steps
        assert exact_quality(FIELD, (side, side), TUNED_SCHEDULE.with_steps(3, 8, 10)) > exact_quality(
            FIELD, (side, side), steps=15)
    assert exact_quality(FIELD, (128, 128), TUNED_SCHEDULE) / exact_quality(FIELD, (128, 128)) >= 0.9  # the GPU size
    noise = torch.randn(256, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    base = FIELD.score(euler_sample(FIELD, noise, 50)).quality
    staged = FIELD.score(bottleneck_sample(FIELD, noise, TUNED_SCHEDULE, generator=torch.Generator().manual_seed(6)))
    assert staged.quality / base >= 0.9  # with the real area-down / bicubic-up kernels, Monte Carlo


def test_video_latents_keep_their_frames() -> None:
    noise = torch.randn(8, 2, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    sizes = []
    out = bottleneck_sample(lambda x, s: (sizes.append(tuple(x.shape[2:])), FIELD.velocity(x, s))[1], noise,
                            TUNED_SCHEDULE, generator=torch.Generator().manual_seed(8))
    assert out.shape == noise.shape and set(sizes) == {(4, 16, 16), (4, 8, 8)}
    assert FIELD.score(out).quality > 0.5  # a 3-D field sampled sensibly (frames included in the spectrum)
