"""The run directory: choosing and creating it safely, and writing ``meta.yaml`` (format v1).

See docs/run-format.md. The parent process (``stallscope profile``) or the Python API writes
``meta.yaml`` twice: once with ``status: running`` before the target starts, and once at the
end with the exit status, every rank's environment and the notices of all ranks.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from stallscope.profiler import runformat
from stallscope.profiler.common import ToolError, __version__
from stallscope.profiler.ranks import WORLD_SIZE_VARS, env_int

__all__ = ["default_run_dir", "prepare_run_dir", "shared_out", "git_info", "utc_now", "MetaWriter", "collect_ranks"]


def utc_now() -> str:
    """Now, as ISO 8601 UTC with microseconds."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def script_name(argv: list[str]) -> str:
    """A short name for the target: the script's stem, the -m module, or the program."""
    for i, a in enumerate(argv):
        if a == "-m" and i + 1 < len(argv):
            return argv[i + 1].split(".")[-1]
        if a.endswith((".py", ".sh")):
            return Path(a).stem
    return Path(argv[0]).name if argv else "run"


def default_run_dir(argv: list[str], base: Optional[Path] = None) -> Path:
    """A new folder ``<base>/<UTC time>-<script>`` (``base``: ./stallscope-runs), not yet existing."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", script_name(argv))[:40] or "run"
    root = (base or Path.cwd() / "stallscope-runs") / f"{stamp}-{name}"
    candidate, n = root, 2
    while candidate.exists():
        candidate = root.with_name(f"{root.name}-{n}")
        n += 1
    return candidate


def shared_out() -> bool:
    """Whether this ``stallscope`` process is one of several that write one run directory: a task
    of SLURM's srun / mpirun (their rank variables are set), or ``STALLSCOPE_SHARED_OUT=1``
    (each node's ``stallscope profile -- torchrun`` of a multi-node job)."""
    return os.environ.get("STALLSCOPE_SHARED_OUT") == "1" or env_int(WORLD_SIZE_VARS, 1) > 1


def prepare_run_dir(out: Path, shared: bool = False) -> list[Path]:
    """Create ``out`` (empty) and return the folders this created, for cleanup on failure.

    Refuses a non-empty folder or a file (nothing the user had is touched) and an unwritable place.
    With ``shared`` (see :func:`shared_out`) a folder holding only other ranks' run-directory
    entries is accepted: the tasks of one job write their rank folders side by side.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise ToolError(f"--out {out}: exists and is not a folder; choose a new run directory path")
        entries = list(out.iterdir())
        if entries and not (shared and all(runformat.is_run_dir_entry(e) for e in entries)):
            raise ToolError(f"--out {out}: folder exists and is not empty; choose a new run directory path")
    created: list[Path] = []
    p = out.absolute()
    missing = []
    while not p.exists():
        missing.append(p)
        p = p.parent
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:  # another stallscope made it first: the claim below decides
                continue
            created.append(d)
        # A probe name of this process's own: the tasks of one job start at the same moment.
        probe = out / f".stallscope-write-probe.{socket.gethostname()}.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        remove_created(created)
        reason = exc.strerror or exc.__class__.__name__
        raise ToolError(
            f"--out {out}: cannot write the run directory there ({reason}); choose a writable path"
        ) from None
    if not shared:
        _claim(out)
    return created


def _claim(out: Path) -> None:
    """Make ``out`` this run's, atomically (``O_EXCL``): of two runs started into the same empty
    folder one wins; the other stops with exit 2 and touches nothing, not even a folder it made
    (the winner may already be writing into it)."""
    marker = out / runformat.CLAIM
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ToolError(
            f"--out {out}: another stallscope run claimed this folder first; choose a new run directory path"
        ) from None
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{socket.gethostname()} {os.getpid()}\n")
    entries = [
        e for e in out.iterdir() if e.name != runformat.CLAIM and not e.name.startswith(".stallscope-write-probe")
    ]
    if entries:  # something arrived between the emptiness check and the claim
        marker.unlink()
        raise ToolError(f"--out {out}: folder is not empty; choose a new run directory path")


def remove_created(created: list[Path]) -> None:
    """Remove the folders :func:`prepare_run_dir` created (innermost first)."""
    for d in reversed(created):
        shutil.rmtree(d, ignore_errors=True)
        if d.exists():
            break


def git_info(cwd: Path) -> Optional[dict]:
    """Commit and dirty flag of the git repository at ``cwd`` (None when it is not one)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def _steps_of(info: dict) -> int:
    try:
        return int(info.get("steps") or 0)
    except (TypeError, ValueError):
        return 0


def collect_ranks(run_dir: Path) -> tuple:
    """Settle rank folders: where two processes claimed one rank, the one with more steps keeps it.

    Returns ``(ranks: {rank: info}, notices)``. Losers stay under ``extra-processes/``.
    """
    notices: list[str] = []
    procs = run_dir / runformat.PROCS
    if procs.is_dir():
        for extra in sorted(procs.iterdir()):
            claim = runformat.parse_extra_process(extra)
            if claim is None or not claim[1].isdigit():
                continue
            rank = claim[0]
            owner = runformat.rank_dir(run_dir, rank)
            e_info, o_info = runformat.read_rank_info(extra), runformat.read_rank_info(owner)
            if _steps_of(e_info) > _steps_of(o_info):
                tmp = run_dir / f".swap-{extra.name}"
                os.replace(owner, tmp)
                os.replace(extra, owner)
                os.replace(tmp, runformat.extra_process_dir(run_dir, rank, o_info.get("pid", "unknown")))
                e_info, o_info = o_info, e_info
            notices.append(
                f"rank {rank} was claimed by more than one process that imported torch; "
                f"pid {o_info.get('pid')} ({_steps_of(o_info)} steps) kept it, the others are in extra-processes/"
            )
        if any(procs.iterdir()):
            os.replace(procs, run_dir / runformat.EXTRA_PROCESSES)
        else:
            procs.rmdir()
    ranks: dict[int, dict] = {}
    for rank, d in runformat.rank_dirs(run_dir):
        info = runformat.read_rank_info(d)
        if not info:
            notices.append(f"{d.name}: {runformat.RANK_INFO} missing (the process was killed before it could flush)")
        ranks[rank] = info
    return ranks, notices


class MetaWriter:
    """Builds and writes ``meta.yaml``."""

    def __init__(
        self, run_dir: Path, command: list[str], skip: int, steps: int, options: Optional[dict] = None
    ) -> None:
        self.run_dir = run_dir
        self.meta: dict[str, Any] = {
            "schema_version": runformat.SCHEMA_VERSION,
            "kind": runformat.RUN_KIND,
            "tool": {"name": "stallscope", "version": __version__},
            "command": list(command),
            "cwd": str(Path.cwd()),
            "start_utc": utc_now(),
            "end_utc": None,
            "exit": {"code": None, "signal": None, "status": "running", "error": None},
            "host": socket.gethostname(),
            "ranks": [],
            "world_size": None,
            "git": git_info(Path.cwd()),
            "window": {"skip": skip, "steps": steps},
            "overhead": {"window_slowdown_pct": None},
            "notices": [],
            "per_rank": {},
            "options": dict(options or {}),
            "python": sys.version.split()[0],
        }

    def write(self) -> Path:
        """Write meta.yaml as it stands (atomically)."""
        return runformat.write_meta(self.run_dir, self.meta)

    def finalize(
        self, code: int, signal_name: Optional[str], parent_notices: list[str], error: Optional[str] = None
    ) -> dict:
        """Complete meta.yaml once the target has ended: settle the rank folders, gather every
        rank's notices and environment, set the exit status; returns the written mapping."""
        ranks, notices = collect_ranks(self.run_dir)
        all_notices: list[str] = []
        for n in list(parent_notices) + notices + [n for info in ranks.values() for n in (info.get("notices") or [])]:
            if n not in all_notices:
                all_notices.append(n)
        errors = [info.get("error") for info in ranks.values() if info.get("error")]
        first_error = error or (errors[0] if errors else None)
        if signal_name:
            status = "signal"
            first_error = first_error or f"terminated by {signal_name}"
        elif code == 0:
            status = "ok"
        elif errors:
            status = "crashed"
        else:
            status = "failed"
        if not ranks:
            all_notices.append(
                "no process of the run imported torch and did any work: nothing was captured "
                "(a Python started with -I, -E or -S does not read PYTHONPATH's sitecustomize)"
            )
        m = self.meta
        m["end_utc"] = utc_now()
        m["exit"] = {"code": code, "signal": signal_name, "status": status, "error": first_error}
        m["ranks"] = sorted(ranks)
        sizes = [info.get("world_size") for info in ranks.values() if info.get("world_size")]
        m["world_size"] = max(sizes) if sizes else (len(ranks) or None)
        lead = ranks.get(0) or (next(iter(ranks.values())) if ranks else {})
        over = dict(lead.get("overhead") or {})
        over.setdefault("window_slowdown_pct", None)
        m["overhead"] = over
        m["notices"] = all_notices
        m["per_rank"] = {
            r: {
                "local_rank": info.get("local_rank"),
                "pid": info.get("pid"),
                "gpu": info.get("gpu"),
                "driver": info.get("driver"),
                "cuda": info.get("cuda"),
                "torch": info.get("torch"),
                "python": info.get("python"),
                "host": info.get("host"),
                "steps": info.get("steps"),
                "step_source": info.get("step_source"),
                "window": info.get("window"),
                "error": info.get("error"),
            }
            for r, info in ranks.items()
        }
        self.write()
        return m
