"""Which patches each step ran with, under ``--auto-patch``: the run's phases.

Auto-patch changes the program while it runs (a fix applied for a trial, kept or rolled back), so
a run's steps fall into phases: before patches, trying a fix, with the kept fixes. ``patches.yaml``
lists them as ``phases: [{name, first_step}, ...]`` (a phase lasts until the next one starts);
every figure that summarises steps is taken within one phase and says which. This module reads
that list (hostile input: anything malformed reads as "no phases") and maps steps to phases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BEFORE_PATCHES", "Phase", "phase_name", "read_phases", "phase_of", "phase_mask"]

BEFORE_PATCHES = "before patches"
MAX_PHASES = 1000  # one per patch decision; a longer list is not ours


@dataclass(frozen=True)
class Phase:
    """Steps ``first_step`` .. ``last_step`` (None: to the end of the run) ran with patches ``name``."""

    name: str
    first_step: int
    last_step: int | None

    def label(self) -> str:
        """``name (steps a-b)`` for figures and tables."""
        end = "end" if self.last_step is None else str(self.last_step)
        return f"{self.name} (steps {self.first_step}-{end})"


def phase_name(kept: Sequence[str], trying: str | None = None) -> str:
    """The name of the phase with fixes ``kept`` in place and ``trying`` on trial."""
    with_kept = f"with {'+'.join(kept)}" if kept else ""
    if trying:
        return f"trying {trying}" + (f" ({with_kept})" if with_kept else "")
    return with_kept or BEFORE_PATCHES


def read_phases(patches: Any) -> list[Phase]:
    """The phases of a ``patches.yaml`` document; [] when it has none (or they are malformed)."""
    raw = patches.get("phases") if isinstance(patches, dict) else None
    if not isinstance(raw, list) or not raw or len(raw) > MAX_PHASES:
        return []
    starts: list[tuple[int, str]] = []
    for p in raw:
        if not isinstance(p, dict):
            return []
        first, name = p.get("first_step"), p.get("name")
        if not isinstance(first, int) or isinstance(first, bool) or not isinstance(name, str) or first < 0:
            return []
        if starts and first <= starts[-1][0]:
            return []
        starts.append((first, name[:200]))
    return [
        Phase(name, first, starts[i + 1][0] - 1 if i + 1 < len(starts) else None)
        for i, (first, name) in enumerate(starts)
    ]


def phase_of(phases: Sequence[Phase], step: int) -> Phase | None:
    """The phase that step ``step`` ran in (None without phases)."""
    found = None
    for p in phases:
        if p.first_step <= step:
            found = p
    return found


def phase_mask(phase: Phase | None, steps: np.ndarray) -> np.ndarray:
    """Which of ``steps`` (step indices) ran in ``phase``; all of them when ``phase`` is None."""
    steps = np.asarray(steps)
    if phase is None:
        return np.ones(steps.shape, dtype=bool)
    m = steps >= phase.first_step
    if phase.last_step is not None:
        m &= steps <= phase.last_step
    return m
