"""Live status while the target runs, on stderr, without garbling the target's own output.

On a terminal the status owns the bottom line: a scroll region (DECSTBM, as apt's progress bar
does) keeps the target's output scrolling above it, and each refresh is a single write that
saves and restores the cursor. Off a terminal (CI logs, pipes) nothing is drawn while the
target runs; a single line says where the run goes instead.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import time
from pathlib import Path
from typing import IO, Optional

from stallscope.profiler.runformat import read_statuses

__all__ = ["LiveStatus", "read_statuses"]


class StatusLine:
    """The status as a rich renderable (elapsed, steps, last step time, GPU utilization)."""

    def __init__(self, elapsed_s: float, statuses: list[dict], run_dir: Path) -> None:
        self.elapsed_s = elapsed_s
        self.statuses = statuses
        self.run_dir = run_dir

    def __rich__(self) -> object:
        from rich.text import Text

        t = Text()
        t.append(" stallscope ", style="bold white on blue")
        t.append(f" {self.elapsed_s:6.1f} s", style="bold")
        if not self.statuses:
            t.append("  waiting for torch…", style="dim")
        else:
            steps = max(s.get("steps") or 0 for s in self.statuses)
            t.append(f"  steps {steps}", style="cyan")
            last = [s["last_step_ms"] for s in self.statuses if s.get("last_step_ms") is not None]
            if last:
                t.append(f"  last step {max(last):.1f} ms", style="green")
            util = [s["gpu_util_pct"] for s in self.statuses if s.get("gpu_util_pct") is not None]
            if util:
                t.append(f"  GPU {sum(util) / len(util):.0f} %", style="magenta")
            windows = {s.get("window") for s in self.statuses}
            if "active" in windows:
                t.append("  ● tracing window", style="bold red")
            if len(self.statuses) > 1:
                t.append(f"  ranks {len(self.statuses)}", style="dim")
        t.append(f"  → {self.run_dir}", style="dim")
        return t


class LiveStatus:
    """Bottom-line status on a terminal; a no-op elsewhere or when quiet."""

    def __init__(self, run_dir: Path, quiet: bool = False, stream: Optional[IO[str]] = None) -> None:
        self.run_dir = run_dir
        self.stream = stream or sys.stderr
        self.enabled = (not quiet) and self._is_tty() and os.environ.get("TERM", "") not in ("", "dumb")
        self.t0 = time.monotonic()
        self.rows = 0
        self.active = False

    def _is_tty(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def _size(self) -> tuple:
        size = shutil.get_terminal_size((100, 24))
        return size.columns, size.lines

    def start(self) -> None:
        if not self.enabled:
            return
        cols, rows = self._size()
        if rows < 4:
            self.enabled = False
            return
        self.rows = rows
        # make room, reserve the last line, come back to where the output continues
        self._write(f"\n\0337\033[1;{rows - 1}r\0338\033[1A")
        self.active = True

    def _render(self, statuses: list[dict]) -> str:
        from rich.console import Console

        cols, _ = self._size()
        buf = io.StringIO()
        console = Console(
            file=buf, force_terminal=True, width=max(cols - 1, 20), color_system="standard", highlight=False
        )
        line = StatusLine(time.monotonic() - self.t0, statuses, self.run_dir)
        console.print(line, end="", overflow="ellipsis", no_wrap=True, crop=True)
        return buf.getvalue()

    def update(self) -> None:
        if not self.active:
            return
        cols, rows = self._size()
        if rows != self.rows:
            self.rows = rows
            self._write(f"\0337\033[1;{rows - 1}r\0338")
        text = self._render(read_statuses(self.run_dir))
        self._write(f"\0337\033[{rows};1H\033[2K{text}\0338")

    def stop(self) -> None:
        if not self.active:
            return
        self.active = False
        _, rows = self._size()
        self._write(f"\0337\033[r\033[{rows};1H\033[2K\0338")

    def _write(self, s: str) -> None:
        try:
            self.stream.write(s)
            self.stream.flush()
        except (OSError, ValueError):
            self.active = False
