"""The fix contract: find targets in a live program, apply, verify parity, revert. Registry by id.

A fix lives in its own folder ``fixes/<name>/`` with the implementation and a ``fix.py`` that
defines one :class:`Fix` subclass decorated with :func:`register`. ``fix.py`` must import
cheaply (torch and triton lazily inside methods) so ``stallscope patch plan`` and
:func:`advice_for` (called while a report is rendered) stay fast and torch-free.

Rules every fix keeps (checked by the generic contract tests over ``tests/fix_settings.py``):

* ``apply`` and ``revert`` are instance-scoped: they change the target object only, never a
  class or a module-level function that other instances share.
* Parameter identity, ``state_dict`` keys, hooks and device stay as they were.
* ``revert`` restores the target bit-identically (same parameters, same outputs).
* ``tolerance`` states the parity bounds used to keep or roll back the fix.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from stallscope.profiler.common import ToolError

__all__ = ["Diagnosis", "Fix", "PatchHandle", "Target", "Tolerance", "advice_for", "register", "registered_fixes"]


@dataclass(frozen=True)
class Tolerance:
    """Parity bounds: ``|patched - original| <= atol + rtol * |original|`` elementwise, for
    outputs and for input/parameter gradients."""

    rtol: float = 1e-5
    atol: float = 1e-5
    grad_rtol: float = 1e-5
    grad_atol: float = 1e-5
    note: str = ""
    # "element": the bound holds for every element. "tensor": |original| is the largest magnitude
    # of that tensor, so reordered sums (TF32, cuDNN algorithms, atomics) are judged against the
    # tensor's scale and not against outputs that happen to cancel to nearly zero.
    scale: str = "element"
    # With scale "tensor": a tensor's scale is at least this fraction of the largest magnitude
    # among the tensors of its kind (outputs, gradients) in the same check. A gradient that is
    # zero by structure (the bias of a layer feeding BatchNorm) holds only rounding noise;
    # judged against its own noise it would fail any reordering fix.
    floor: float = 1e-3
    # Precision-changing fixes (TF32): when set, a gradient that misses the elementwise bound
    # still passes if it points the same way (cosine >= this) with the same norm (within
    # grad_rtol). Rounding flips a few ReLU/dropout/max decisions near zero; each flipped
    # element's gradient changes completely, so the largest elementwise error is set by a
    # handful of elements while the update direction barely moves (docs/auto-patch.md).
    grad_min_cosine: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rtol": self.rtol,
            "atol": self.atol,
            "grad_rtol": self.grad_rtol,
            "grad_atol": self.grad_atol,
            "scale": self.scale,
            "floor": self.floor,
            "grad_min_cosine": self.grad_min_cosine,
            "note": self.note,
        }

    def bound(self, kind: str) -> tuple[float, float]:
        """(rtol, atol) for ``kind`` "output" or "grad"."""
        return (self.grad_rtol, self.grad_atol) if kind == "grad" else (self.rtol, self.atol)


@dataclass
class Target:
    """Something a fix can patch: a module (by qualified name), a DataLoader, a process setting."""

    name: str
    obj: Any
    kind: str = "module"  # module | dataloader | process | pipeline | callable


@dataclass
class PatchHandle:
    """What ``apply`` returns; ``revert`` needs nothing else. ``saved`` holds the originals."""

    fix_id: str
    target: Target
    saved: dict[str, Any] = field(default_factory=dict)
    reverted: bool = False


@dataclass(frozen=True)
class Diagnosis:
    """Whether a fix is called for on a target, and the one-line reason either way."""

    called_for: bool
    why: str


class Fix:
    """Base class of every fix. Subclasses set ``id``, ``answers``, ``tolerance``, ``advice`` and
    implement ``find_targets``, ``apply`` and ``revert``; ``why_not`` explains a target it must refuse."""

    id: ClassVar[str] = ""
    answers: ClassVar[tuple[str, ...]] = ()  # finding ids (or categories) this fix addresses
    description: ClassVar[str] = ""
    tolerance: ClassVar[Tolerance] = Tolerance()
    scope: ClassVar[str] = "module"  # module | process | dataloader
    requires_cuda: ClassVar[bool] = False  # no effect unless the program runs on a CUDA device
    advisory: ClassVar[str] = ""  # non-empty: cannot be patched into a live program; the reason
    # What the user should do, printed with the findings that name this fix: the change in a
    # few lines, and how stallscope applies it (``--auto-patch``, ``fixes.apply``) or why it cannot.
    advice: ClassVar[str] = ""

    def find_targets(self, root: Any) -> list[Target]:
        """Targets inside ``root`` (a model, a DataLoader, ``None`` for process-wide fixes),
        found by duck typing (parameter names and shapes, class names), not a per-model list."""
        raise NotImplementedError

    def why_not(self, target: Target) -> str | None:
        """A one-line reason this target must not be patched, or None when it may be."""
        return None

    def apply(self, target: Target) -> PatchHandle:
        raise NotImplementedError

    def revert(self, handle: PatchHandle) -> None:
        raise NotImplementedError

    # Optional parts of the contract, with defaults that suit most fixes.

    def diagnose(self, target: Target, context: Mapping[str, Any] | None = None) -> Diagnosis:
        """Is the fix called for on ``target``? ``context`` may carry ``findings`` (report
        findings as dicts), ``cuda`` (the program runs on a CUDA device) and measured figures
        such as ``data_wait_pct``. Default: called for when a finding names this fix, or, with
        no findings at hand, whenever the target exists."""
        context = context or {}
        findings: Sequence[Mapping[str, Any]] = context.get("findings") or ()
        for finding in findings:
            if self.id in {str(f).replace("_", "-") for f in (finding.get("fixes") or ())}:
                return Diagnosis(True, f"finding {finding.get('id', '?')} names {self.id}")
        if findings and context.get("findings_complete"):
            return Diagnosis(False, "no finding of the diagnosis names this fix")
        return Diagnosis(True, f"{target.kind} {target.name} matches")

    def tolerance_for(self, target: Target) -> Tolerance:
        """The parity bounds for this target (default: the class-wide ``tolerance``)."""
        return self.tolerance

    def parity_module(self, handle: PatchHandle) -> Any:
        """The module whose inputs parity is checked on: the target's module (for a process-wide
        fix, the model it was found in); ``None`` means the fix verifies itself (:meth:`verify`)."""
        if handle.target.kind in ("module", "process") and hasattr(handle.target.obj, "named_parameters"):
            return handle.target.obj
        return None

    def verify(self, handle: PatchHandle) -> dict[str, Any] | None:
        """Self-check for fixes without a module to compare on (DataLoader settings): a parity
        record ``{"passed": bool, ...figures}``, or None when module parity applies."""
        return None

    @contextlib.contextmanager
    def suspended(self, handle: PatchHandle) -> Iterator[None]:
        """Run the original behaviour for a moment (parity's reference run), then re-apply.
        The handle stays valid: its ``saved`` is refreshed from the re-application."""
        self.revert(handle)
        try:
            yield
        finally:
            again = self.apply(handle.target)
            handle.saved = again.saved
            handle.reverted = False


_REGISTRY: dict[str, type[Fix]] = {}
_DISCOVERED = False
_FIXES_DIR = Path(__file__).resolve().parent


def register(cls: type[Fix]) -> type[Fix]:
    """Class decorator: add a fix to the registry under its ``id``."""
    if not cls.id:
        raise ValueError(f"{cls.__name__} has no id")
    existing = _REGISTRY.get(cls.id)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"two fixes have id {cls.id!r}")
    _REGISTRY[cls.id] = cls
    return cls


def registered_fixes(ids: Iterable[str] | None = None) -> dict[str, type[Fix]]:
    """All fixes by id (importing each ``fixes/<name>/fix.py`` once), or only those named."""
    global _DISCOVERED
    if not _DISCOVERED:
        for info in pkgutil.iter_modules([str(_FIXES_DIR)]):
            if info.ispkg and not info.name.startswith("_"):
                try:
                    importlib.import_module(f"stallscope.fixes.{info.name}.fix")
                except ModuleNotFoundError as exc:
                    if exc.name != f"stallscope.fixes.{info.name}.fix":
                        raise
        _DISCOVERED = True
    if ids is None:
        return dict(sorted(_REGISTRY.items()))
    missing = [i for i in ids if i not in _REGISTRY]
    if missing:
        raise ToolError(f"unknown fix id(s) {', '.join(missing)}; known: {', '.join(sorted(_REGISTRY))}")
    return {i: _REGISTRY[i] for i in ids}


def advice_for(fix_id: str) -> str | None:
    """The advice text of the registered fix ``fix_id`` (``_`` and ``-`` alike), or None when no
    fix has that id. Imports only the fixes' ``fix.py`` modules, never torch or triton."""
    cls = registered_fixes().get(str(fix_id).replace("_", "-"))
    return (cls.advice or None) if cls is not None else None
