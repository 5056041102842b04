"""Optimized implementations and the patches that swap them in, one folder per fix.

``fixes.apply(model, ids=None)`` and ``fixes.revert(handles)`` are the Python API
(:mod:`stallscope.fixes.api`); ``fixes.advice_for(fix_id)`` is the advice a report prints for
a finding that names the fix. Importing this package (and calling ``advice_for``) stays cheap:
no torch, no triton.
"""

from __future__ import annotations

from stallscope.fixes.api import apply, revert
from stallscope.fixes.base import advice_for

__all__ = ["advice_for", "apply", "revert"]
