"""Housekeeping of one recorder on the sampler thread: the heartbeat, late CUDA events, the files,
the watch on the ``profile`` parent.

The sampler calls :meth:`Upkeep.tick` between samples. It reads finished CUDA events when the
training thread has not for a while, rewrites ``.status.json`` for the parent's live status line,
and appends what is new to the rank's CSV files (whole lines) with rank.yaml rewritten. The
recorder calls :meth:`Upkeep.flush` once more at the end.

When the ``stallscope profile`` process dies first (SIGKILL, OOM killer), nobody would complete
``meta.yaml``: the target notices it (:class:`ParentWatch`), flushes its files and marks the
run ``orphaned`` (:func:`mark_orphaned`), then trains on; the user's job is never stopped by us.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from stallscope.profiler import runformat
from stallscope.profiler.rundir import utc_now

if TYPE_CHECKING:
    from stallscope.profiler.recorder import Recorder

__all__ = [
    "Upkeep",
    "ParentWatch",
    "mark_orphaned",
    "FLUSH_PERIOD_S",
    "INFO_PERIOD_S",
    "STATUS_PERIOD_S",
    "POLL_STALE_NS",
    "PARENT_CHECK_PERIOD_S",
]

# A SIGKILL of the target loses at most this much of its per-step rows (plus one sampler tick):
# the CSV files take whole appended lines, so a flush costs what is new, a few rows a second.
FLUSH_PERIOD_S = 1.0
# rank.yaml is rewritten whole (its YAML dump costs milliseconds on the sampler thread, which
# shares the GIL with the training loop), so less often; and at the end of the run.
INFO_PERIOD_S = 5.0
STATUS_PERIOD_S = 0.5
# The sampler thread reads finished CUDA events only when the training thread has not for this
# long (a long step, a stall, the end of the run), so steps.csv never waits on a paused loop.
POLL_STALE_NS = 1_000_000_000
# How often the target checks that the `profile` parent lives (a signal 0 and one /proc read).
PARENT_CHECK_PERIOD_S = 1.0


def _proc_state(pid: int) -> Optional[tuple[str, str]]:
    """``(state, start time in clock ticks)`` of ``pid`` from /proc (None without /proc or pid)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return (fields[0], fields[19]) if len(fields) > 19 else None


class ParentWatch:
    """Whether the process ``pid`` (the ``stallscope profile`` parent) still lives.

    The target's direct parent is not the one to watch: under torchrun it is torchrun, and a
    process whose parent died is re-parented, so ``os.getppid()`` says nothing reliable. The pid
    comes from the environment the parent built; its /proc start time, read now while it waits
    for us, tells a reused pid apart. A zombie (dead, not yet reaped) counts as gone.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        state = _proc_state(pid)
        self.start = state[1] if state is not None else None

    def gone(self) -> bool:
        """True once the watched process has ended (or its pid belongs to another process)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # EPERM: it lives under another user (a reuse, or a target that changed user)
            pass
        state = _proc_state(self.pid)
        if state is None:  # no /proc (macOS): signal 0 is all there is
            return False
        return state[0] in ("Z", "X") or (self.start is not None and state[1] != self.start)


def orphan_notice(parent_pid: int) -> str:
    """The one line that meta.yaml, rank.yaml and the diagnosis carry for an orphaned run."""
    return (
        f"orphaned run: the stallscope profile process (pid {parent_pid}) ended while the target ran on; "
        "the target's rows are on disk but meta.yaml was not completed (exit.status orphaned)"
    )


def mark_orphaned(run_dir: Path, parent_pid: int) -> bool:
    """Set ``exit.status: orphaned`` in ``run_dir``'s meta.yaml (atomically), with the time it was
    noticed and the notice line; only while it says ``running`` (a finished status is never
    overwritten). Returns whether it wrote. Every rank may call it: they write the same status."""
    meta = runformat.read_meta(run_dir)
    old = meta.get("exit") if isinstance(meta.get("exit"), dict) else None
    if old is None or old.get("status") != "running":
        return False
    meta["exit"] = {
        **old,
        "status": "orphaned",
        "error": f"the stallscope profile process (pid {parent_pid}) ended before the target",
        "orphaned_utc": utc_now(),
    }
    line = orphan_notice(parent_pid)
    notices = [n for n in (meta.get("notices") or []) if n != line]
    meta["notices"] = [line, *notices]
    meta["ranks"] = [r for r, _ in runformat.rank_dirs(run_dir)]
    runformat.write_meta(run_dir, meta)
    return True


class Upkeep:
    """The periodic and final writing of one recorder's rank folder (see module docstring)."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.last_flush = 0.0
        self.last_info = 0.0
        self.last_status = 0.0
        self.parent: Optional[ParentWatch] = None
        self.last_parent = 0.0
        self.orphaned = False

    def watch_parent(self, pid: int) -> None:
        """Watch the ``profile`` process ``pid``; its death makes the run orphaned (module docstring)."""
        if pid > 0 and pid != os.getpid():
            self.parent = ParentWatch(pid)

    def tick(self) -> None:
        """Sampler-thread housekeeping: read finished CUDA events, heartbeat, periodic flush, and
        every second the check that the ``profile`` parent lives."""
        rec = self.rec
        rec.log.drain()
        if rec.gpu.pending and time.time_ns() - rec._polled_ns > POLL_STALE_NS:
            rec.gpu.poll()
        now = time.monotonic()
        if self.parent is not None and now - self.last_parent >= PARENT_CHECK_PERIOD_S:
            self.last_parent = now
            if self.parent.gone():
                self.orphan()
        if now - self.last_status >= STATUS_PERIOD_S and not self.orphaned:
            self.last_status = now
            self.write_status()
        if rec.log.dirty and now - self.last_flush >= FLUSH_PERIOD_S:
            self.flush(info=now - self.last_info >= INFO_PERIOD_S)

    def orphan(self) -> None:
        """The parent died: write every row and rank.yaml now, drop the heartbeat nobody reads,
        mark meta.yaml orphaned. Training goes on; later rows keep reaching the files."""
        rec, watch = self.rec, self.parent
        self.parent = None
        if watch is None or not rec.live():
            return
        self.orphaned = True
        rec.notice_once(orphan_notice(watch.pid))
        self.flush(info=True)
        if rec.files is not None:
            rec.files.remove_status()
        try:
            mark_orphaned(rec.run_dir, watch.pid)
        except Exception as exc:
            sys.stderr.write(f"stallscope: could not mark {rec.run_dir} orphaned: {exc}\n")

    def write_status(self) -> None:
        """Rewrite the heartbeat ``.status.json`` (read by the parent's live status line)."""
        rec = self.rec
        if rec.files is None or not rec.live():
            return
        rec.files.write_status(
            {
                "rank": rec.rank,
                "pid": rec.pid,
                "steps": rec.index,
                "last_step_ms": rec.log.last_wall_ms,
                "gpu_util_pct": rec.sampler.last_gpu_util if rec.sampler else None,
                "window": rec.window.state,
                "t_ns": time.time_ns(),
            }
        )

    def flush(self, final: bool = False, info: bool = True) -> None:
        """Append the settled steps and new samples to the CSV files; rewrite rank.yaml when
        ``info`` (always when ``final``).

        Each row is written once; the cost of a flush is proportional to what is new.
        """
        rec = self.rec
        files = rec.files
        if files is None:
            return
        rec.log.drain()
        with rec.log.lock:
            self.last_flush = time.monotonic()
            if info or final:
                self.last_info = self.last_flush
            try:
                ready = rec.log.take_settled()
                if ready or final:
                    files.steps.append(ready)
                if rec.sampler is not None:
                    host, nvml = rec.sampler.take_rows()
                    if rec.sampler.host_available:
                        files.host.append(host)
                    if nvml:
                        files.nvml.append(nvml)
                if info or final:
                    files.write_info(rec.rank_info(final=final))
            except Exception as exc:
                sys.stderr.write(f"stallscope: could not write {files.folder}: {exc}\n")
