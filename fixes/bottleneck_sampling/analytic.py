"""A flow-matching "model" whose exact velocity is known, valid at every resolution.

Data: a stationary Gaussian field on the periodic unit domain with an isotropic power spectrum
``P(k) = (1 + (|k|/k0)^2)^(-alpha/2)`` (k in cycles per domain), sampled on an ``N``-point grid per axis
and band-limited to that grid. In the orthonormal DFT basis its covariance is diagonal with
per-mode variance ``lam_m = c * prod(N) * P(k_m)``, so the same continuous field (the same "model") is
valid at every resolution and keeps its per-position variance.

For ``x_t = (1 - t) x0 + t eps`` every mode is an independent 1-D Gaussian problem and the optimal
velocity ``E[eps - x0 | x_t]`` is, per mode,

    v_m = (t - (1 - t) lam_m) / ((1 - t)^2 lam_m + t^2) * x_m

(the posterior means of ``eps`` and ``x0`` are ``t/D * x_m`` and ``(1-t) lam_m/D * x_m`` with
``D = (1-t)^2 lam_m + t^2``). Samplers are scored by the Frechet distance per Fourier mode between
the samples' distribution and the truth (both Gaussian: ``|mu|^2 + (sqrt(var) - sqrt(lam))^2``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch

from stallscope.fixes.bottleneck_sampling.sampler import plan_stages
from stallscope.fixes.bottleneck_sampling.schedule import ShiftRule, full_sigmas

__all__ = ["GaussianField", "SpectrumScore", "exact_power_ratio", "exact_quality"]

_HALF_CACHE: dict = {}
_NORM_CACHE: dict = {}


@dataclass(frozen=True)
class SpectrumScore:
    """How far samples are from the true field, per Fourier mode and in total.

    ``fd_rel``: sum of per-mode Frechet distances over the trace of the true covariance (energy
    weighted; 0 is perfect). ``mode_error``: RMS over modes of the per-mode Frechet distance relative to
    that mode's variance, i.e. the RMS relative amplitude error per mode (every mode counts the same,
    so lost fine detail shows). ``quality = 1 - mode_error``. ``mc_floor``: about the ``mode_error``
    that Monte-Carlo noise alone gives with this many samples (``sqrt(1.25 / count)``)."""

    fd_rel: float
    mode_error: float
    quality: float
    mc_floor: float
    radial_k: list[float]
    radial_power_ratio: list[float]

    def to_dict(self) -> dict:
        return {
            "fd_rel": self.fd_rel,
            "mode_error": self.mode_error,
            "quality": self.quality,
            "mc_floor": self.mc_floor,
        }


@dataclass(frozen=True)
class GaussianField:
    """The analytic benchmark's data distribution and its exact velocity field."""

    alpha: float = 3.0
    k0: float = 2.0
    ref_size: int = 256

    def _kgrid(self, size: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
        axes = [torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64, device=device) for n in size]
        grids = torch.meshgrid(*axes, indexing="ij")
        return torch.sqrt(cast(torch.Tensor, sum(g**2 for g in grids)))  # size is never empty: a tensor sum

    def _power(self, k: torch.Tensor) -> torch.Tensor:
        return (1.0 + (k / self.k0) ** 2) ** (-self.alpha / 2.0)

    def _norm(self, dims: int) -> float:
        """Unit per-position variance at ``ref_size`` (64 per axis beyond 2-D, to keep it cheap)."""
        key = (self, dims)
        if key not in _NORM_CACHE:
            side = self.ref_size if dims <= 2 else 64
            _NORM_CACHE[key] = 1.0 / float(self._power(self._kgrid((side,) * dims)).sum())
        return _NORM_CACHE[key]

    def spectrum(self, size: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
        """Per-mode variance ``lam_m`` on the orthonormal DFT grid of this size (float64)."""
        size = tuple(int(n) for n in size)
        return self._norm(len(size)) * math.prod(size) * self._power(self._kgrid(size, device))

    def sample(
        self, n: int, channels: int, size: Sequence[int], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` exact data samples ``(n, channels, *size)`` (float32)."""
        size = tuple(int(s) for s in size)
        white = torch.randn((n, channels, *size), generator=generator, dtype=torch.float64)
        axes = tuple(range(2, 2 + len(size)))
        spec = torch.fft.fftn(white, dim=axes, norm="ortho") * self.spectrum(size).sqrt()
        return torch.fft.ifftn(spec, dim=axes, norm="ortho").real.float()

    def _half_spectrum(self, size: tuple[int, ...], device: torch.device) -> torch.Tensor:
        key = (self, size, str(device))
        lam = _HALF_CACHE.get(key)
        if lam is None:
            lam = self.spectrum(size)[..., : size[-1] // 2 + 1].to(device=device, dtype=torch.float32)
            _HALF_CACHE[key] = lam
        return lam

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The exact optimal velocity ``E[eps - x0 | x_sigma]`` for latents ``(B, C, *size)``."""
        size = tuple(int(n) for n in x.shape[2:])
        axes = tuple(range(2, x.ndim))
        lam = self._half_spectrum(size, x.device)
        t = sigma.to(torch.float32).reshape(-1, *([1] * (x.ndim - 1)))
        gain = (t - (1 - t) * lam) / ((1 - t) ** 2 * lam + t**2)
        spec = torch.fft.rfftn(x.float(), dim=axes, norm="ortho")
        return torch.fft.irfftn(spec * gain, s=size, dim=axes, norm="ortho").to(x.dtype)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.velocity(x, sigma)

    def score(self, samples: torch.Tensor, bins: int = 24) -> SpectrumScore:
        """Frechet distance per Fourier mode of ``samples`` ``(B, C, *size)`` against the truth."""
        size = tuple(samples.shape[2:])
        axes = tuple(range(2, samples.ndim))
        spec = torch.fft.fftn(samples.to(torch.float64), dim=axes, norm="ortho").flatten(0, 1)
        mean = spec.mean(dim=0)
        var = (spec - mean).abs().pow(2).mean(dim=0)
        lam = self.spectrum(size)
        fd = mean.abs() ** 2 + (var.sqrt() - lam.sqrt()) ** 2
        count = spec.shape[0]
        k = self._kgrid(size)
        edges = torch.linspace(0.0, float(k.max()) + 1e-9, bins + 1, dtype=torch.float64)
        which = torch.bucketize(k.flatten(), edges) - 1
        ratio = var.flatten() / lam.flatten()
        radial_k, radial_ratio = [], []
        for b in range(bins):
            sel = which == b
            if bool(sel.any()):
                radial_k.append(float(k.flatten()[sel].mean()))
                radial_ratio.append(float(ratio[sel].mean()))
        mode_error = float((fd / lam).mean().sqrt())
        return SpectrumScore(
            fd_rel=float(fd.sum() / lam.sum()),
            mode_error=mode_error,
            quality=1.0 - mode_error,
            mc_floor=math.sqrt(1.25 / count),
            radial_k=radial_k,
            radial_power_ratio=radial_ratio,
        )


def _mode_gain(sigma: float, lam: torch.Tensor) -> torch.Tensor:
    return (sigma - (1 - sigma) * lam) / ((1 - sigma) ** 2 * lam + sigma**2)


def _euler_modes(sigmas: Sequence[float], lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mode factors of one Euler stage: ``x_end = a * x_start`` and ``x0_hat = b * x_start``."""
    a = torch.ones_like(lam)
    b = a
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=False):
        g = _mode_gain(s, lam)
        b = a * (1 - s * g)  # x - sigma * v at this step: the clean estimate Euler hands on
        a = a * (1 + (s_next - s) * g)
    return a, b


def exact_power_ratio(field: GaussianField, size: Sequence[int], schedule=None, steps: int = 50) -> torch.Tensor:
    """Per-mode ratio ``sampled variance / true variance`` at full resolution, computed exactly (no
    Monte Carlo): the plain Euler sampler with ``steps`` if ``schedule`` is None, else the staged
    sampler with ideal band-limited (Fourier) resampling. Everything is linear and Gaussian per mode."""
    size = tuple(int(n) for n in size)
    lam = field.spectrum(size)
    if schedule is None:
        a, _ = _euler_modes(full_sigmas(steps, ShiftRule().shift_for(size)), lam)
        return a**2 / lam
    d = schedule.spatial_dims
    k_axes = [torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64) for n in size]
    var = torch.ones_like(lam)  # variance of the stage's starting x, in full-resolution ortho units
    x0_var = torch.zeros_like(lam)
    for p in plan_stages(size, schedule):
        ratio = math.prod(p.size) / math.prod(size)
        present = torch.ones_like(lam, dtype=torch.bool)
        for axis in range(len(size) - d, len(size)):
            half = p.size[axis] / 2
            k = k_axes[axis].reshape([-1 if i == axis else 1 for i in range(len(size))])
            present = present & (k >= -half) & (k < half)
        if p.index > 0:
            s = p.stage.sigma_start
            var = torch.where(present, (1 - s) ** 2 * x0_var + s**2 / ratio, torch.zeros_like(lam))
        a, b = _euler_modes(p.sigmas, lam * ratio)
        var = var * a**2
        x0_var = torch.where(present, var / a**2 * b**2, torch.zeros_like(lam))
        x0_var = torch.nan_to_num(x0_var)
    return var / lam


def exact_quality(field: GaussianField, size: Sequence[int], schedule=None, steps: int = 50) -> float:
    """``quality = 1 - RMS relative amplitude error per mode`` from :func:`exact_power_ratio`."""
    ratio = exact_power_ratio(field, size, schedule, steps)
    return float(1.0 - ((ratio.sqrt() - 1) ** 2).mean().sqrt())
