"""The steps of one process as rows of steps.csv, kept until they are written.

A row is ``[step, start_ns, end_ns, wall_ms, gpu_ms, data_wait_ms, in_window, source, settled]``
(``runformat.STEP_FIELDS`` plus a flag): it is *settled* once its GPU time is known or known to
be unknowable, and only settled rows are written, each once. Steady-state steps arrive as marks
(a tuple appended by the recorder's short path) and become rows in :meth:`StepLog.drain`, on
whichever thread gets there first.
"""

from __future__ import annotations

import threading
from array import array
from typing import Any, Optional

from stallscope.profiler.gputime import GpuTimer

__all__ = ["StepLog"]


class StepLog:
    """Rows not yet written, and the per-step wall times of the whole run (for the window's cost)."""

    def __init__(self, gpu: GpuTimer) -> None:
        self.gpu = gpu
        # (index, start_ns, end_ns, data_ns, start event, end event, source) of short-path steps: each
        # mark carries its source, so a drain on another thread cannot label it with a source read
        # before a change
        self.marks: list[tuple] = []
        self.rows: list[list] = []
        self.count = 0
        self.walls = array("d")
        self.window_flags = array("b")
        self.last_wall_ms: Optional[float] = None
        self.dirty = False  # rows or samples not flushed yet
        # Held by drain, flush and reset: a caller about to append a row itself waits for a drain in
        # progress, so rows stay in order.
        self.lock = threading.RLock()

    def add(
        self, index: int, start: int, end: int, data_ns: int, in_window: bool, source: str, start_ev: Any, end_ev: Any
    ) -> None:
        """One step closed on the full path (the marks before it already drained)."""
        wall_ms = (end - start) / 1e6
        row = [index, start, end, wall_ms, None, data_ns / 1e6, 1 if in_window else 0, source, True]
        self.rows.append(row)
        self.count += 1
        self.walls.append(wall_ms)
        self.window_flags.append(1 if in_window else 0)
        self.last_wall_ms = wall_ms
        if end_ev is not None and start_ev is not None:
            self.gpu.watch(row, start_ev, end_ev)
        self.dirty = True

    def drain(self) -> None:
        """Make the marks so far into rows (any thread)."""
        with self.lock:
            marks = self.marks
            batch = marks[: len(marks)]
            del marks[: len(batch)]  # one C-level operation: a concurrent append is kept
            if not batch:
                return
            rows, walls, flags, watch = self.rows, self.walls, self.window_flags, self.gpu.watch
            wall_ms = None
            for index, start, t, data_ns, start_ev, end_ev, source in batch:
                wall_ms = (t - start) / 1e6
                row = [index, start, t, wall_ms, None, data_ns / 1e6, 0, source, True]
                rows.append(row)
                walls.append(wall_ms)
                flags.append(0)
                if start_ev is not None and end_ev is not None:
                    watch(row, start_ev, end_ev)
            self.count += len(batch)
            self.last_wall_ms = wall_ms
            self.dirty = True

    def take_settled(self) -> list[list]:
        """Remove and return the leading settled rows (call under :attr:`lock`)."""
        settled = 0
        for row in self.rows:
            if not row[8]:
                break
            settled += 1
        ready = self.rows[:settled]
        del self.rows[:settled]  # one C-level operation: a concurrent append is kept
        self.dirty = False
        return ready

    def reset(self) -> None:
        """Drop every step (the step source changed); call under :attr:`lock`."""
        self.rows = []
        self.gpu.reset()
        self.count = 0
        self.walls = array("d")
        self.window_flags = array("b")
