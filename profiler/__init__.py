"""Capture: run the target, record telemetry and a windowed Kineto trace, write a run directory.

Importing this package is cheap (no torch). Public API:

* ``Session`` — context manager that profiles the enclosed code (``stallscope.Session``).
* ``step()`` — mark the end of a step in a custom loop (no-op when nothing is profiled).
"""

from typing import Any

from stallscope.profiler.common import __version__

__all__ = ["__version__", "Session", "step"]


def step() -> None:
    """Mark the end of a step in the current process (no-op when nothing is being profiled)."""
    from stallscope.profiler.api import step as _step

    _step()


def __getattr__(name: str) -> Any:
    if name == "Session":
        from stallscope.profiler.api import Session

        return Session
    raise AttributeError(f"module 'stallscope.profiler' has no attribute {name!r}")
