"""Attaching the recorder to this process: one :class:`~profiler.recorder.Recorder` per process.

The injected bootstrap calls :func:`attach_from_env` right after the target imports torch; a
``Session`` calls :func:`attach` and :func:`detach`. A bootstrap recorder also flushes at exit,
records an uncaught exception's line, writes its files on SIGTERM, and watches the ``profile``
process (``STALLSCOPE_PARENT_PID``) so that its death leaves the run marked ``orphaned``.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from stallscope.profiler import hooks
from stallscope.profiler.options import PARENT_PID_ENV, ProfileOptions
from stallscope.profiler.recorder import Recorder

__all__ = ["active", "attach", "attach_from_env", "detach"]

_active: Optional[Recorder] = None


def active() -> Optional[Recorder]:
    """The recorder of this process, if one is attached."""
    return _active


def attach(
    options: ProfileOptions, run_dir: Path, rank_dir: Optional[Path] = None, origin: str = "bootstrap"
) -> Recorder:
    """Create this process's recorder, install the hooks, and arrange the flush at exit."""
    global _active
    if _active is not None and _active.live():
        return _active
    rec = Recorder(options, run_dir, rank_dir=rank_dir, origin=origin)
    _active = rec
    hooks.install(rec)
    try:  # ranks' clock offsets, measured right after init_process_group (profiler/distclock.py)
        from stallscope.profiler import distclock

        distclock.install()
    except Exception as exc:
        rec.notice_once(f"rank clock alignment not installed ({exc.__class__.__name__}: {exc})")
    if origin == "bootstrap":
        atexit.register(rec.finish)
        _excepthook_chain(rec)
        _sigterm_handler(rec)
    os.register_at_fork(after_in_child=rec.after_fork_in_child)
    return rec


def detach(rec: Recorder) -> None:
    """Stop routing this process's hooks to ``rec`` (after its ``finish``)."""
    global _active
    if _active is rec:
        _active = None
        hooks.detach(rec)


# Processes torch starts for itself in a fresh interpreter that imports torch: inductor's
# compile workers (torch.compile). They train nothing; recorded, they would claim the rank of the
# process that started them and be set aside as a second claimant.
_TORCH_HELPERS = (os.path.join("_inductor", "compile_worker", "__main__.py"),)


def is_torch_helper(argv0: str) -> bool:
    """Whether ``argv0`` (``sys.argv[0]``) is one of torch's own helper processes (not profiled)."""
    return argv0.endswith(_TORCH_HELPERS)


def attach_from_env() -> Optional[Recorder]:
    """Entry point of the injected bootstrap (called right after ``import torch`` finished)."""
    run_dir = os.environ.get("STALLSCOPE_RUN_DIR")
    if not run_dir or is_torch_helper(sys.argv[0] if sys.argv else ""):
        return None
    rec = attach(ProfileOptions.from_env(), Path(run_dir))
    parent = os.environ.get(PARENT_PID_ENV, "")
    if parent.isdigit():
        rec.upkeep.watch_parent(int(parent))
    return rec


def _excepthook_chain(rec: Recorder) -> None:
    previous = sys.excepthook

    def hook(exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            text = str(exc).strip().splitlines()
            rec.error = f"{exc_type.__name__}: {text[0] if text else ''}".strip().rstrip(":")[:500]
        except Exception:
            pass
        previous(exc_type, exc, tb)

    sys.excepthook = hook


def _sigterm_handler(rec: Recorder) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
            return  # the target handles SIGTERM itself; atexit still flushes if it exits
    except Exception:
        return

    def on_term(signum: int, frame: Any) -> None:
        rec.finish(error="terminated by SIGTERM")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
