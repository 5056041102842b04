"""Phase ranges (data, forward, backward, optimizer): NVTX for Nsight Systems, and
``record_function`` ranges in the window trace.

NVTX calls only matter when a tool listens (Nsight Systems sets ``NVTX_INJECTION64_PATH``;
``STALLSCOPE_NVTX=1`` forces them), so without one the ranges exist only inside the window.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from stallscope.profiler.gputime import GpuTimer

__all__ = ["PHASE_PREFIX", "PhaseMarks", "end_phase", "nvtx_listening"]

PHASE_PREFIX = "stallscope.phase/"


def nvtx_listening() -> bool:
    """Whether a tool reads NVTX ranges in this process."""
    env = os.environ
    return bool(
        env.get("NVTX_INJECTION64_PATH") or env.get("NVTX_INJECTION32_PATH") or env.get("STALLSCOPE_NVTX") == "1"
    )


class PhaseMarks:
    """Opens and closes phase ranges; a token from :meth:`begin` goes to :func:`end_phase`."""

    def __init__(self, torch: Any, gpu: GpuTimer) -> None:
        self.torch = torch
        self.gpu = gpu
        self.nvtx_on = nvtx_listening()
        self._nvtx: Any = None
        self._nvtx_checked = False

    def _nvtx_calls(self) -> Any:
        if not self._nvtx_checked:
            self._nvtx_checked = True
            try:
                import nvtx

                self._nvtx = (nvtx.push_range, nvtx.pop_range)
            except Exception:
                try:
                    self._nvtx = (self.torch.cuda.nvtx.range_push, self.torch.cuda.nvtx.range_pop)
                except Exception:
                    self._nvtx = None
        return self._nvtx

    def begin(self, name: str, in_window: bool) -> tuple[Any, Any]:
        """Open phase ``name``: an NVTX range when a tool listens, a trace range ``in_window``."""
        nv = None
        if self.nvtx_on and (self.gpu.ready or self.gpu.check()):
            nv = self._nvtx_calls()
            if nv is not None:
                try:
                    nv[0](PHASE_PREFIX + name)
                except Exception:
                    nv = None
        rf = None
        if in_window:
            rf = self.torch.autograd.profiler.record_function(PHASE_PREFIX + name)
            rf.__enter__()
        return (nv, rf)


def end_phase(token: Optional[tuple[Any, Any]]) -> None:
    """Close the ranges a :meth:`PhaseMarks.begin` opened (None: nothing was opened)."""
    if not token:
        return
    nv, rf = token
    if rf is not None:
        try:
            rf.__exit__(None, None, None)
        except Exception:
            pass
    if nv is not None:
        try:
            nv[1]()
        except Exception:
            pass
