"""stallscope: profile a PyTorch run, name what holds it back, fix it, and guard it in CI.

Installed as one import package: ``stallscope.profiler`` (capture), ``stallscope.analyzers``
(diagnosis), ``stallscope.fixes`` (optimized implementations and patches), ``stallscope.cli``.
Importing it is cheap (no torch). In a training script::

    import stallscope
    with stallscope.Session(out="runs/nb") as s:   # or run the script under `stallscope profile`
        for batch in loader:
            train_step(batch)
            stallscope.step()                      # optional: optimizer steps are found anyway
"""

from typing import Any

from stallscope.profiler import step
from stallscope.profiler.common import __version__

__all__ = ["__version__", "Session", "step"]


def __getattr__(name: str) -> Any:
    if name == "Session":
        from stallscope.profiler.api import Session

        return Session
    raise AttributeError(f"module 'stallscope' has no attribute {name!r}")
