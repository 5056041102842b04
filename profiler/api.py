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
from typing import Any, Literal, Optional

from stallscope.profiler import runformat
from stallscope.profiler.options import ProfileOptions
from stallscope.profiler.ranks import RANK_VARS, env_int
from stallscope.profiler.rundir import MetaWriter, default_run_dir, prepare_run_dir

__all__ = ["Session", "step"]

DEFAULTS = ProfileOptions()


def step() -> None:
    """Mark the end of a step in the current process (no-op when nothing is being profiled)."""
    runtime = sys.modules.get("stallscope.profiler.runtime")
    rec = runtime.active() if runtime is not None else None
    if rec is not None and rec.live():
        rec.boundary("api")


class Session:
    """Context manager that profiles the enclosed code and writes a run directory.

    ``skip``, ``steps``, ``sample_hz``, ``stack`` and ``memory`` are the ``stallscope profile``
    options of the same names (:class:`~profiler.options.ProfileOptions`); a bad value raises
    ``ToolError`` here, before anything is created.
    """

    def __init__(
        self,
        out: Optional[os.PathLike] = None,
        skip: int = DEFAULTS.skip,
        steps: int = DEFAULTS.steps,
        sample_hz: float = DEFAULTS.sample_hz,
        stack: bool = False,
        memory: bool = False,
        command: Optional[list[str]] = None,
    ) -> None:
        self.options = ProfileOptions.from_user(skip=skip, steps=steps, sample_hz=sample_hz, stack=stack, memory=memory)
        self.out = Path(out) if out is not None else None
        self.command = list(command) if command is not None else list(sys.argv)
        self.recorder: Any = None
        self.meta: Optional[MetaWriter] = None
        self.nested = False
        self.run_dir: Optional[Path] = None
        self.result: Optional[dict] = None

    def __enter__(self) -> Session:
        from stallscope.profiler import runtime

        existing = runtime.active()
        if existing is not None and existing.live() and existing.origin == "bootstrap":
            self.nested = True
            self.recorder = existing
            self.run_dir = existing.run_dir
            return self
        self.run_dir = (
            self.out
            if self.out is not None
            else default_run_dir([sys.argv[0] if sys.argv and sys.argv[0] else "session"])
        )
        prepare_run_dir(self.run_dir)
        opts = self.options
        self.meta = MetaWriter(
            self.run_dir,
            self.command,
            opts.skip,
            opts.steps,
            {"sample_hz": opts.sample_hz, "stack": opts.stack, "memory": opts.memory, "api": True},
        )
        self.meta.write()
        rank_dir = runformat.rank_dir(self.run_dir, env_int(RANK_VARS, 0))
        self.recorder = runtime.attach(opts, self.run_dir, rank_dir=rank_dir, origin="api")
        return self

    def step(self) -> None:
        """Mark the end of a step."""
        if self.recorder is not None and self.recorder.live():
            self.recorder.boundary("api")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if self.nested or self.recorder is None:
            return False
        from stallscope.profiler import runtime

        error = None
        if exc_type is not None:
            lines = str(exc).strip().splitlines()
            error = f"{exc_type.__name__}: {lines[0] if lines else ''}".strip().rstrip(":")
        self.recorder.finish(error=error)
        runtime.detach(self.recorder)
        signal_name = "SIGINT" if exc_type is KeyboardInterrupt else None
        code = 0 if exc_type is None else (130 if signal_name else 1)
        assert self.meta is not None
        self.result = self.meta.finalize(code, signal_name, [], error)
        return False
