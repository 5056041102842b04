"""Bottleneck Sampling schedules: stages, per-stage sigma grids with a resolution-aware shift, cost.

Sigma is the flow-matching noise level: ``x_sigma = (1 - sigma) * x0 + sigma * eps``; sampling runs
from sigma = 1 (pure noise) to sigma = 0. Every stage has its own grid from ``sigma_start`` (the
re-noise level it starts from) to ``sigma_end``. The grid is uniform in *unshifted* sigma and then
shifted, with its end points pinned exactly (the shift is inverted on the end points first), so the
re-noise levels mean what they say whatever the shift.

The shift is the SD3 form ``s*sigma / (1 + (s-1)*sigma)``; FLUX's exponential shift with parameter
``mu`` is the same map with ``s = exp(mu)``. A resolution-aware shift takes ``mu`` linear in the
stage's own token count (0.5 at 256 tokens, 1.15 at 4096, as diffusers' ``calculate_shift``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

__all__ = [
    "ShiftRule",
    "Stage",
    "BottleneckSchedule",
    "shift_sigma",
    "unshift_sigma",
    "stage_sigmas",
    "full_sigmas",
    "DEFAULT_SCHEDULE",
    "PAPER_SCHEDULE",
    "TUNED_SCHEDULE",
]


def shift_sigma(sigma: float, shift: float) -> float:
    """SD3-style time shift ``s*sigma / (1 + (s-1)*sigma)`` (identity for ``shift == 1``)."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def unshift_sigma(sigma: float, shift: float) -> float:
    """Inverse of :func:`shift_sigma`."""
    return sigma / (shift - (shift - 1.0) * sigma)


@dataclass(frozen=True)
class ShiftRule:
    """Resolution-aware shift: ``mu`` linear in tokens between two anchor points, ``s = exp(mu)``.

    Defaults are diffusers' FLUX ``calculate_shift`` anchors (256 tokens -> 0.5, 4096 -> 1.15).
    ``tokens_per_position`` divides the latent's spatial size into tokens (4 for 2x2 patching)."""

    base_tokens: int = 256
    max_tokens: int = 4096
    base_mu: float = 0.5
    max_mu: float = 1.15
    tokens_per_position: int = 4

    def tokens(self, spatial: Sequence[int]) -> int:
        """Transformer tokens for a latent with these spatial sizes (frames included for video)."""
        return max(1, math.prod(int(s) for s in spatial) // self.tokens_per_position)

    def shift_for(self, spatial: Sequence[int]) -> float:
        """The shift ``s`` for a latent of these spatial sizes."""
        slope = (self.max_mu - self.base_mu) / (self.max_tokens - self.base_tokens)
        mu = self.base_mu + slope * (self.tokens(spatial) - self.base_tokens)
        return math.exp(mu)


@dataclass(frozen=True)
class Stage:
    """One stage: ``steps`` Euler steps at ``scale`` times the full spatial size, from the re-noise
    level ``sigma_start`` down to ``sigma_end``; ``shift`` None means resolution-aware."""

    scale: float
    steps: int
    sigma_start: float
    sigma_end: float
    shift: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"stage steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.sigma_end < self.sigma_start <= 1.0:
            raise ValueError(
                f"stage needs 0 <= sigma_end < sigma_start <= 1, got {self.sigma_start} -> {self.sigma_end}"
            )
        if not 0.0 < self.scale <= 1.0:
            raise ValueError(f"stage scale must be in (0, 1], got {self.scale}")


@dataclass(frozen=True)
class BottleneckSchedule:
    """High -> low -> high: stages in order, how to resample between them, and the shift rule.

    ``down``/``up`` name the resampling kernels (see ``resample.py``); ``spatial_dims`` is how many
    trailing axes are resized (2: H, W of images and of video, whose frame axis is never resized)."""

    stages: tuple[Stage, ...]
    down: str = "area"
    up: str = "bicubic"
    shift_rule: ShiftRule = field(default_factory=ShiftRule)
    spatial_dims: int = 2

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a schedule needs at least one stage")
        if self.stages[0].sigma_start != 1.0:
            raise ValueError("the first stage must start from pure noise (sigma_start = 1.0)")
        if self.stages[-1].sigma_end != 0.0:
            raise ValueError("the last stage must end at sigma_end = 0.0")
        if self.stages[-1].scale != 1.0:
            raise ValueError("the last stage must run at full resolution (scale = 1.0)")

    @property
    def total_steps(self) -> int:
        """Model evaluations (NFE) of the whole schedule."""
        return sum(s.steps for s in self.stages)

    def relative_cost(self, quadratic_share: float = 0.5) -> float:
        """Cost relative to one full-resolution step, with per-step cost ``a*N + b*N^2`` split so that
        ``quadratic_share`` of a full-resolution step is the ``N^2`` (attention) part."""
        total = 0.0
        for s in self.stages:
            tokens_ratio = s.scale**self.spatial_dims
            total += s.steps * ((1 - quadratic_share) * tokens_ratio + quadratic_share * tokens_ratio**2)
        return total

    def with_steps(self, *steps: int) -> BottleneckSchedule:
        """The same schedule with other step counts per stage."""
        if len(steps) != len(self.stages):
            raise ValueError(f"need {len(self.stages)} step counts, got {len(steps)}")
        return replace(self, stages=tuple(replace(s, steps=n) for s, n in zip(self.stages, steps, strict=False)))

    def to_dict(self) -> dict:
        """Plain data, for reports."""
        return {
            "stages": [
                {
                    "scale": s.scale,
                    "steps": s.steps,
                    "sigma_start": s.sigma_start,
                    "sigma_end": s.sigma_end,
                    "shift": s.shift,
                }
                for s in self.stages
            ],
            "down": self.down,
            "up": self.up,
            "total_steps": self.total_steps,
        }


def stage_sigmas(stage: Stage, shift: float) -> list[float]:
    """``steps + 1`` sigmas from ``sigma_start`` to ``sigma_end``: uniform in unshifted sigma, then
    shifted; end points exact."""
    lo, hi = unshift_sigma(stage.sigma_end, shift), unshift_sigma(stage.sigma_start, shift)
    grid = [hi + (lo - hi) * i / stage.steps for i in range(stage.steps + 1)]
    sig = [shift_sigma(g, shift) for g in grid]
    sig[0], sig[-1] = stage.sigma_start, stage.sigma_end
    return sig


def full_sigmas(steps: int, shift: float) -> list[float]:
    """The plain full-resolution grid (1 -> 0 in ``steps`` Euler steps), as diffusers' FLUX builds it."""
    return stage_sigmas(Stage(scale=1.0, steps=steps, sigma_start=1.0, sigma_end=0.0), shift)


# The spec's defaults: 4 + 13 + 8 steps, re-noise to 1.0 / 0.8 / 0.6, 2x down per axis (a third-party
# port of the paper's schedule; a secondary source). Each stage runs down to the next stage's
# re-noise level; shifts are resolution-aware. See docs/bottleneck-sampling.md for how it scores.
PAPER_SCHEDULE = BottleneckSchedule(
    stages=(
        Stage(scale=1.0, steps=4, sigma_start=1.0, sigma_end=0.8),
        Stage(scale=0.5, steps=13, sigma_start=0.8, sigma_end=0.6),
        Stage(scale=1.0, steps=8, sigma_start=0.6, sigma_end=0.0),
    )
)
DEFAULT_SCHEDULE = PAPER_SCHEDULE

# Checked on the analytic benchmark (bench/bottleneck_quality.py): the low-resolution stage runs to a
# clean sample (re-noising a posterior mean loses variance), and the last stage gets more, unshifted
# steps (fine detail is made near sigma = 0, where a shifted grid is coarsest). Same re-noise levels.
TUNED_SCHEDULE = BottleneckSchedule(
    stages=(
        Stage(scale=1.0, steps=3, sigma_start=1.0, sigma_end=0.8),
        Stage(scale=0.5, steps=10, sigma_start=0.8, sigma_end=0.0),
        Stage(scale=1.0, steps=12, sigma_start=0.6, sigma_end=0.0, shift=1.0),
    )
)
