"""Python API: profile code that cannot be started from the shell (notebooks, custom launchers).

    from stallscope.profiler import Session
    with Session(out="runs/nb1", skip=5, steps=5) as s:
        for batch in loader:
            train_step(batch)
            s.step()          # optional: optimizer steps and module calls are found anyway

It writes the same run directory as ``stallscope profile``. Inside a process that
``stallscope profile`` already captures, a Session does not start a second recorder: its
``step()`` marks steps of the existing one.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, List, Optional

from stallscope.profiler.rundir import MetaWriter, default_run_dir, prepare_run_dir

__all__ = ["Session", "step"]


def step() -> None:
    """Mark the end of a step in the current process (no-op when nothing is being profiled)."""
    runtime = sys.modules.get("stallscope.profiler.runtime")
    rec = runtime.active() if runtime is not None else None
    if rec is not None and rec.live():
        rec.boundary("api")


class Session:
    """Context manager that profiles the enclosed code and writes a run directory."""

    def __init__(self, out: Optional[os.PathLike] = None, skip: int = 5, steps: int = 5, sample_hz: float = 25.0,
                 stack: bool = False, memory: bool = False, command: Optional[List[str]] = None) -> None:
        from stallscope.profiler.command import _check_options

        _check_options(skip, steps, sample_hz, 2)
        self.out = Path(out) if out is not None else None
        self.skip, self.steps, self.sample_hz = skip, steps, sample_hz
        self.stack, self.memory = stack, memory
        self.command = list(command) if command is not None else list(sys.argv)
        self.recorder: Any = None
        self.meta: Optional[MetaWriter] = None
        self.nested = False
        self.run_dir: Optional[Path] = None
        self.result: Optional[dict] = None

    def __enter__(self) -> "Session":
        from stallscope.profiler import runtime

        existing = runtime.active()
        if existing is not None and existing.live() and existing.origin == "bootstrap":
            self.nested = True
            self.recorder = existing
            self.run_dir = existing.cfg.run_dir
            return self
        self.run_dir = self.out if self.out is not None else default_run_dir([sys.argv[0] if sys.argv and sys.argv[0] else "session"])
        prepare_run_dir(self.run_dir)
        options = {"sample_hz": self.sample_hz, "stack": self.stack, "memory": self.memory, "api": True}
        self.meta = MetaWriter(self.run_dir, self.command, self.skip, self.steps, options)
        self.meta.write()
        cfg = runtime.Config(run_dir=self.run_dir, skip=self.skip, steps=self.steps, sample_hz=self.sample_hz,
                             stack=self.stack, memory=self.memory, nvml=os.environ.get("STALLSCOPE_NVML", "1") != "0")
        from stallscope.profiler.runtime import RANK_VARS, env_int

        rank = env_int(RANK_VARS, 0)
        self.recorder = runtime.attach(cfg, rank_dir=self.run_dir / f"rank{rank}", origin="api")
        return self

    def step(self) -> None:
        """Mark the end of a step."""
        if self.recorder is not None and self.recorder.live():
            self.recorder.boundary("api")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if self.nested or self.recorder is None:
            return False
        from stallscope.profiler import hooks, runtime

        error = None
        if exc_type is not None:
            lines = str(exc).strip().splitlines()
            error = f"{exc_type.__name__}: {lines[0] if lines else ''}".strip().rstrip(":")
        self.recorder.finish(error=error)
        if runtime._active is self.recorder:
            runtime._active = None
            hooks._recorder = None
        signal_name = "SIGINT" if exc_type is KeyboardInterrupt else None
        code = 0 if exc_type is None else (130 if signal_name else 1)
        assert self.meta is not None
        self.result = self.meta.finalize(code, signal_name, [], error)
        return False
