"""Bottleneck Sampling: training-free high -> low -> high resolution sampling for flow-matching models.

Generic API (torch only): :func:`bottleneck_sample`, :func:`euler_sample`, :class:`BottleneckSchedule`.
The diffusers adapter lives in ``diffusers_adapter.py`` (optional dependency), the weight-free
analytic benchmark model in ``analytic.py``. See docs/bottleneck-sampling.md.
Names are imported lazily so that ``fix.py`` (and ``stallscope patch plan``) stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BottleneckRefused": "sampler",
    "bottleneck_sample": "sampler",
    "check_native_resolution": "sampler",
    "euler_sample": "sampler",
    "plan_stages": "sampler",
    "BottleneckSchedule": "schedule",
    "DEFAULT_SCHEDULE": "schedule",
    "PAPER_SCHEDULE": "schedule",
    "TUNED_SCHEDULE": "schedule",
    "ShiftRule": "schedule",
    "Stage": "schedule",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
