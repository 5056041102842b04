"""Euler samplers for flow-matching (velocity) models: the plain full-resolution baseline and the
staged high -> low -> high Bottleneck Sampling loop.

A denoiser is any callable ``v(x, sigma)`` returning the velocity ``eps - x0`` for a latent ``x`` of
any spatial size (``(B, C, H, W)`` images, ``(B, C, T, H, W)`` video) and ``sigma`` a ``(B,)`` float
tensor. ``x_sigma = (1 - sigma) * x0 + sigma * eps``; an Euler step is ``x += (sigma_next - sigma) * v``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .resample import resize
from .schedule import DEFAULT_SCHEDULE, BottleneckSchedule, ShiftRule, Stage, full_sigmas, stage_sigmas

__all__ = [
    "BottleneckRefused",
    "Denoiser",
    "StagePlan",
    "bottleneck_sample",
    "check_native_resolution",
    "euler_sample",
    "plan_stages",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepHook = Callable[[int, int, float, torch.Tensor], None]


class BottleneckRefused(ValueError):
    """The schedule would run the model below the resolution it was trained on (one-line reason)."""


@dataclass(frozen=True)
class StagePlan:
    """A stage resolved for one latent shape: its size (all axes after channels), sigmas and shift."""

    index: int
    stage: Stage
    size: tuple[int, ...]
    shift: float
    sigmas: tuple[float, ...]


def _stage_size(full: Sequence[int], scale: float, spatial_dims: int, multiple: int) -> tuple[int, ...]:
    keep = tuple(full[: len(full) - spatial_dims])
    scaled = []
    for n in full[len(full) - spatial_dims :]:
        m = n if scale == 1.0 else max(multiple, int(round(n * scale / multiple)) * multiple)
        scaled.append(min(n, m))
    return keep + tuple(scaled)


def plan_stages(
    full_size: Sequence[int], schedule: BottleneckSchedule = DEFAULT_SCHEDULE, multiple: int = 1
) -> list[StagePlan]:
    """Resolve every stage for a latent whose axes after channels are ``full_size``; resized axes
    are rounded to a ``multiple`` (2 for 2x2 patching)."""
    full = tuple(int(n) for n in full_size)
    if len(full) < schedule.spatial_dims:
        raise ValueError(f"latent has {len(full)} axes after channels, schedule resizes {schedule.spatial_dims}")
    plans = []
    for i, st in enumerate(schedule.stages):
        size = _stage_size(full, st.scale, schedule.spatial_dims, multiple)
        shift = st.shift if st.shift is not None else schedule.shift_rule.shift_for(size)
        plans.append(StagePlan(i, st, size, shift, tuple(stage_sigmas(st, shift))))
    return plans


def check_native_resolution(
    plans: Sequence[StagePlan], native_min_size: int | Sequence[int] | None, spatial_dims: int = 2, unit: str = "latent"
) -> None:
    """Raise :class:`BottleneckRefused` if a stage's resized axes fall below ``native_min_size``
    (the smallest size the model was trained at, per resized axis; None: unknown, no check)."""
    if native_min_size is None:
        return
    native = (native_min_size,) * spatial_dims if isinstance(native_min_size, int) else tuple(native_min_size)
    for p in plans:
        got = p.size[-spatial_dims:]
        if any(g < n for g, n in zip(got, native, strict=False)):
            fmt = "x".join
            raise BottleneckRefused(
                f"bottleneck sampling refused: stage {p.index + 1} would run at {fmt(map(str, got))} {unit}, below the "
                f"model's native {fmt(map(str, native))}; generate at a larger size or use a milder downscale"
            )


def _sigma_batch(sigma: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(sigma), device=x.device, dtype=torch.float32)


def _euler(
    v: Denoiser, x: torch.Tensor, sigmas: Sequence[float], hook: StepHook | None, stage: int
) -> tuple[torch.Tensor, torch.Tensor]:
    vel = torch.zeros_like(x)
    for j, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=False)):
        vel = v(x, _sigma_batch(s, x))
        x = (x.float() + (s_next - s) * vel.float()).to(x.dtype)
        if hook is not None:
            hook(stage, j, s, x)
    return x, vel


def euler_sample(
    v: Denoiser,
    noise: torch.Tensor,
    steps: int = 50,
    shift: float | None = None,
    shift_rule: ShiftRule = ShiftRule(),
    hook: StepHook | None = None,
) -> torch.Tensor:
    """The baseline: ``steps`` Euler steps at full resolution from ``noise`` (sigma 1) to sigma 0,
    with a fixed ``shift`` or, if None, the resolution-aware one for this latent size."""
    if shift is None:
        shift = shift_rule.shift_for(noise.shape[2:])
    with torch.no_grad():
        x, _ = _euler(v, noise, full_sigmas(steps, shift), hook, 0)
    return x


def bottleneck_sample(
    v: Denoiser,
    noise: torch.Tensor,
    schedule: BottleneckSchedule = DEFAULT_SCHEDULE,
    generator: torch.Generator | None = None,
    native_min_size: int | Sequence[int] | None = None,
    multiple: int = 1,
    hook: StepHook | None = None,
) -> torch.Tensor:
    """Staged sampling from full-resolution ``noise``: each stage runs its Euler steps; between stages
    the clean estimate ``x0 = x - sigma * v`` is resized to the next stage's size and re-noised to
    its ``sigma_start`` with fresh noise from ``generator``. Refuses (``BottleneckRefused``) to go
    below ``native_min_size``."""
    plans = plan_stages(noise.shape[2:], schedule, multiple)
    check_native_resolution(plans, native_min_size, schedule.spatial_dims)
    x = noise
    if tuple(noise.shape[2:]) != plans[0].size:  # a first stage below full size starts from its own pure noise
        x = torch.randn(
            (*noise.shape[:2], *plans[0].size), generator=generator, device=noise.device, dtype=torch.float32
        ).to(noise.dtype)
    x0 = x  # the clean estimate, set at the end of each stage and read from the second stage on
    with torch.no_grad():
        for p in plans:
            if p.index > 0:
                x0 = resize(x0, p.size[-schedule.spatial_dims :], _kernel(schedule, x0.shape[2:], p.size))
                eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)
                x = ((1.0 - p.stage.sigma_start) * x0.float() + p.stage.sigma_start * eps).to(noise.dtype)
            with torch.profiler.record_function(f"bottleneck_sampling.stage{p.index + 1}"):
                x, vel = _euler(v, x, p.sigmas, hook, p.index)
            x0 = x.float() - p.stage.sigma_end * vel.float()
    return x


def _kernel(schedule: BottleneckSchedule, before: Sequence[int], after: Sequence[int]) -> str:
    return schedule.down if math.prod(after) < math.prod(before) else schedule.up
