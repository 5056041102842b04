"""Arms the profiler in a target process: attach right after ``import torch`` completes.

Stdlib only. Processes that never import torch are not touched beyond this finder.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from typing import Any, Optional

__all__ = ["arm"]


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
            _attach()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _attach() -> None:
    try:
        from profiler import runtime

        runtime.attach_from_env()
    except Exception as exc:  # the target must run even if profiling cannot
        sys.stderr.write(f"stallscope: profiler not attached in pid {os.getpid()}: {exc.__class__.__name__}: {exc}\n")


def arm() -> None:
    """Attach now if torch is already imported, else when it is."""
    if "torch" in sys.modules:
        _attach()
        return
    if not any(isinstance(f, _TorchImportWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchImportWatcher())
