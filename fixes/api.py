"""Python API for users who patch in code: ``fixes.apply(model)`` / ``fixes.revert(handles)``.

``apply`` finds each fix's targets in ``model`` (and in ``loaders`` for DataLoader fixes),
skips targets a fix refuses, and returns one :class:`~stallscope.fixes.base.PatchHandle` per patched
target. It does not measure or check parity (there is no input yet); ``stallscope profile
--auto-patch`` does both. ``revert`` undoes handles in reverse order.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

from stallscope.fixes.base import PatchHandle, registered_fixes
from stallscope.fixes.parity import unwrap_model

__all__ = ["NoEffectWarning", "apply", "revert"]


class NoEffectWarning(UserWarning):
    """A fix asked for by id found nothing to patch."""


def apply(model: Any, ids: Sequence[str] | None = None, *, loaders: Iterable[Any] = ()) -> list[PatchHandle]:
    """Apply the fixes ``ids`` (default: every registered fix that can patch) to ``model``.

    Process-wide fixes (``tf32``, ``cudnn-benchmark``) change process settings when ``model``
    has the layers they help. Refused targets are skipped; with explicit ``ids`` a fix that
    patched nothing emits :class:`NoEffectWarning` with the reasons.
    """
    registry = registered_fixes([i.replace("_", "-") for i in ids] if ids is not None else None)
    model = unwrap_model(model)
    loaders = list(loaders)
    handles: list[PatchHandle] = []
    for fix_id, cls in registry.items():
        fix = cls()
        if getattr(fix, "advisory", ""):
            continue
        roots = loaders if fix.scope == "dataloader" else [model]
        reasons: list[str] = []
        applied = 0
        for root in roots:
            for target in fix.find_targets(root):
                reason = fix.why_not(target)
                if reason:
                    reasons.append(f"{target.name}: {reason}")
                    continue
                try:
                    handles.append(fix.apply(target))
                    applied += 1
                except Exception:
                    revert(handles)
                    raise
        if ids is not None and applied == 0:
            why = "; ".join(reasons[:3]) or "no target found"
            warnings.warn(f"fix {fix_id!r} patched nothing ({why})", NoEffectWarning, stacklevel=2)
    return handles


def revert(handles: Iterable[PatchHandle]) -> None:
    """Undo ``handles`` (from :func:`apply`) in reverse order; already reverted ones are skipped."""
    registry = registered_fixes()
    for handle in reversed(list(handles)):
        if handle.reverted:
            continue
        registry[handle.fix_id]().revert(handle)
        handle.reverted = True
