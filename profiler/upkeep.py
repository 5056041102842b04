"""Housekeeping of one recorder on the sampler thread: the heartbeat, late CUDA events, the files.

The sampler calls :meth:`Upkeep.tick` between samples. It reads finished CUDA events when the
training thread has not for a while, rewrites ``.status.json`` for the parent's live status line,
and appends what is new to the rank's CSV files (whole lines) with rank.yaml rewritten. The
recorder calls :meth:`Upkeep.flush` once more at the end.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stallscope.profiler.recorder import Recorder

__all__ = ["Upkeep", "FLUSH_PERIOD_S", "INFO_PERIOD_S", "STATUS_PERIOD_S", "POLL_STALE_NS"]

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


class Upkeep:
    """The periodic and final writing of one recorder's rank folder (see module docstring)."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.last_flush = 0.0
        self.last_info = 0.0
        self.last_status = 0.0

    def tick(self) -> None:
        """Sampler-thread housekeeping: read finished CUDA events, heartbeat, periodic flush."""
        rec = self.rec
        rec.log.drain(rec.source)
        if rec.gpu.pending and time.time_ns() - rec._polled_ns > POLL_STALE_NS:
            rec.gpu.poll()
        now = time.monotonic()
        if now - self.last_status >= STATUS_PERIOD_S:
            self.last_status = now
            self.write_status()
        if rec.log.dirty and now - self.last_flush >= FLUSH_PERIOD_S:
            self.flush(info=now - self.last_info >= INFO_PERIOD_S)

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
        rec.log.drain(rec.source)
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
