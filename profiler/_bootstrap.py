"""Arms stallscope in a target process: run callbacks right after ``import torch`` completes.

Used by the one bootstrap (``profiler/boot/sitecustomize.py``) for both ``stallscope profile``
(attach the profiler) and ``stallscope run --patch-from`` (apply kept patches). Stdlib only.
Processes that never import torch are not touched beyond this finder.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any, Optional

__all__ = ["arm", "attach_patches", "attach_profiler", "inject"]

BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boot")
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_callbacks: list[Callable[[], None]] = []


class _TorchImportWatcher(importlib.abc.MetaPathFinder):
    """Finds ``torch`` through the other finders, then wraps its loader to attach afterwards."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Optional[Any]:
        if name != "torch":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            original(module)
            _run_callbacks()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _run_callbacks() -> None:
    for fn in _callbacks:
        fn()


def attach_profiler() -> None:
    """Attach the profiler (``STALLSCOPE_RUN_DIR`` and friends configure it)."""
    try:
        from stallscope.profiler import runtime

        runtime.attach_from_env()
    except Exception as exc:  # the target must run even if profiling cannot
        sys.stderr.write(f"stallscope: profiler not attached in pid {os.getpid()}: {exc.__class__.__name__}: {exc}\n")


def attach_patches() -> None:
    """Apply the patches an earlier auto-patch run kept (``STALLSCOPE_PATCH_FROM``)."""
    try:
        from stallscope.fixes import autopatch

        autopatch.attach_from_report(os.environ["STALLSCOPE_PATCH_FROM"])
    except Exception as exc:  # the target must run even if patching cannot
        sys.stderr.write(f"stallscope: patches not applied in pid {os.getpid()}: {exc.__class__.__name__}: {exc}\n")


def arm(callback: Callable[[], None] = attach_profiler) -> None:
    """Run ``callback`` now if torch is already imported, else right after it is."""
    if "torch" in sys.modules:
        callback()
        return
    _callbacks.append(callback)
    if not any(isinstance(f, _TorchImportWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchImportWatcher())


def inject(env: dict) -> dict:
    """``env`` with the bootstrap first on PYTHONPATH and the package's folder as STALLSCOPE_HOME.

    Only the bootstrap's folder goes on the path: the target imports ``stallscope`` under that one
    name (a fallback in the bootstrap loads it from STALLSCOPE_HOME), never our subpackages as
    top-level modules that could shadow the target's own ``profiler`` or ``cli``.
    """
    old = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = BOOT_DIR + (os.pathsep + old if old else "")
    env["STALLSCOPE_HOME"] = PACKAGE_DIR
    return env
