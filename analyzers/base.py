"""The analyzer contract: what an analyzer declares, what it returns, and the registry by name.

An analyzer is one class in one file under ``analyzers/builtin/``. It declares a ``name`` and
the inputs it ``requires``, and ``analyze(ctx)`` returns :class:`Finding` objects. Adding an
analyzer is adding a file: :func:`registered_analyzers` imports every module in
``analyzers.builtin`` and collects the classes decorated with :func:`register`.

This module must not import torch (``diagnose`` reads traces without it).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

from stallscope.analyzers.model import StepBreakdown
from stallscope.profiler.common import ToolError

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext

__all__ = [
    "CATEGORIES",
    "REQUIREMENTS",
    "SLICES",
    "Analyzer",
    "Finding",
    "Impact",
    "Severity",
    "register",
    "registered_analyzers",
    "severity_from_share",
]

CATEGORIES = (
    "memory-bound",
    "input-pipeline",
    "communication",
    "host-bound",
    "synchronization",
    "memory-copy",
    "precision",
    "gpu-health",
    "memory-capacity",
    "cpu-metric",
    "attention",
    "compile",
)

# The parts of the step-time breakdown (``StepBreakdown`` fields, docs/breakdown.md) a finding's
# time can come from: ``Finding.slice`` names some of them (analyzers/accounting.py).
SLICES = StepBreakdown.SUMMED

# What an analyzer may ask for. The context answers ``ctx.has(req)``; an analyzer whose
# requirements are missing is skipped and the report says which input was absent.
REQUIREMENTS = frozenset(
    {
        "trace",  # a Kineto trace with at least one event
        "gpu",  # GPU events (kernels / memcpy / memset) in the trace
        "shapes",  # record_shapes input dims on CPU ops
        "stacks",  # python_function events (with_stack=True)
        "nvml",  # NVML samples from our run directory
        "host",  # psutil samples (process and DataLoader workers)
        "telemetry",  # our per-step table (wall, GPU time, data wait) for the whole run
        "multi-rank",  # more than one rank
        "memory",  # profile_memory / allocator samples
    }
)


class Severity(str, Enum):
    """How much a finding matters. Thresholds live with each analyzer, with their reasoning."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"high": 3, "medium": 2, "low": 1, "info": 0}[self.value]


def severity_from_share(share_pct: float, medium_pct: float, high_pct: float, low_pct: float = 0.0) -> Severity:
    """Grade a share of step time against an analyzer's documented cut points."""
    if share_pct >= high_pct:
        return Severity.HIGH
    if share_pct >= medium_pct:
        return Severity.MEDIUM
    if share_pct > low_pct:
        return Severity.LOW
    return Severity.INFO


@dataclass
class Impact:
    """What fixing the finding is worth: share of step time and milliseconds per step to gain."""

    step_time_pct: float
    est_saving_ms_per_step: float

    def to_dict(self) -> dict[str, float]:
        return {
            "step_time_pct": round(float(self.step_time_pct), 3),
            "est_saving_ms_per_step": round(float(self.est_saving_ms_per_step), 4),
        }


@dataclass
class Finding:
    """One diagnosed problem with the numbers that prove it.

    ``evidence`` keys carry their unit (``_ms``, ``_pct``, ``_gbps``); ``where`` names kernels,
    modules, Python frames and ranks; ``fixes`` are fix ids from the ``fixes`` registry.

    ``slice`` names the breakdown parts (:data:`SLICES`) the finding's time comes from, when the
    analyzer knows better than its category's default (``analyzers.accounting.CATEGORY_SLICES``);
    ``()`` means the whole step (no single part). The accounting caps the estimated saving by
    the time of those parts (docs/analyzers.md, one accounting of the step).
    """

    id: str
    category: str
    title: str
    severity: Severity
    impact: Impact
    evidence: dict[str, Any] = field(default_factory=dict)
    where: dict[str, list[Any]] = field(default_factory=dict)
    confidence: float = 0.8
    fixes: list[str] = field(default_factory=list)
    analyzer: str = ""
    advice: str = ""
    slice: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"finding {self.id!r}: unknown category {self.category!r}")
        if self.slice is not None:
            self.slice = tuple(self.slice)
            unknown = [s for s in self.slice if s not in SLICES]
            if unknown:
                raise ValueError(f"finding {self.id!r}: unknown slice {unknown}; known: {', '.join(SLICES)}")
        self.severity = Severity(self.severity)
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"finding {self.id!r}: confidence must be in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        """The finding as it appears in ``report.yaml`` (plain types only)."""
        out: dict[str, Any] = {
            "id": self.id,
            "category": self.category,
            "title": self.title,
            "severity": self.severity.value,
            "impact": self.impact.to_dict(),
            "evidence": _plain(self.evidence),
            "where": _plain(self.where),
            "confidence": round(float(self.confidence), 3),
            "fixes": list(self.fixes),
            "analyzer": self.analyzer,
        }
        if self.advice:
            out["advice"] = self.advice
        if self.slice is not None:
            out["slice"] = list(self.slice)
        return out


class Analyzer:
    """Base class of every analyzer. Subclasses set ``name`` and ``requires``, implement ``analyze``.

    ``analyze`` must not raise on traces that lack what it looks for: it returns ``[]``. It
    reads only the :class:`~analyzers.model.AnalysisContext` (never raw JSON).
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset({"trace"})
    description: ClassVar[str] = ""

    def analyze(self, ctx: AnalysisContext) -> list[Finding]:  # pragma: no cover - abstract
        raise NotImplementedError


_REGISTRY: dict[str, type[Analyzer]] = {}
_DISCOVERED = False


def register(cls: type[Analyzer]) -> type[Analyzer]:
    """Class decorator: add an analyzer to the registry under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    unknown = set(cls.requires) - REQUIREMENTS
    if unknown:
        raise ValueError(f"analyzer {cls.name!r} requires unknown inputs {sorted(unknown)}")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"two analyzers are named {cls.name!r}: {existing.__qualname__}, {cls.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def registered_analyzers(names: Iterable[str] | None = None) -> dict[str, type[Analyzer]]:
    """All analyzers by name (importing ``analyzers.builtin`` once), or only those named."""
    global _DISCOVERED
    if not _DISCOVERED:
        builtin = importlib.import_module("stallscope.analyzers.builtin")  # plugin discovery
        for info in pkgutil.iter_modules(builtin.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"stallscope.analyzers.builtin.{info.name}")
        _DISCOVERED = True
    if names is None:
        return dict(sorted(_REGISTRY.items()))
    missing = [n for n in names if n not in _REGISTRY]
    if missing:
        raise ToolError(f"unknown analyzer(s) {', '.join(missing)}; known: {', '.join(sorted(_REGISTRY))}")
    return {n: _REGISTRY[n] for n in names}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        return round(value, 4)
    return value
