"""Optimized implementations and the patches that swap them in, one folder per fix.

``fixes.apply(model, ids=None)`` and ``fixes.revert(handles)`` are the Python API
(:mod:`fixes.api`); they load lazily so ``import fixes`` stays cheap (no torch).
"""
from __future__ import annotations

from typing import Any

__all__ = ["apply", "revert"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from stallscope.fixes import api

        return getattr(api, name)
    raise AttributeError(f"module 'fixes' has no attribute {name!r}")
