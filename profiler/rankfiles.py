"""The rank folder a profiled process writes: claiming it, the CSV files, rank.yaml, the heartbeat.

:class:`RankFiles` is the writing side of :mod:`profiler.runformat` for one process. The CSV
files only grow: each flush appends whole lines (a reader or a kill never sees half a row), and
rank.yaml and ``.status.json`` are rewritten through a temporary file.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from stallscope.profiler import runformat
from stallscope.profiler.runformat import SCHEMA_VERSION

__all__ = ["CsvSink", "RankFiles", "claim_rank_dir", "plain", "process_identity", "rank_info"]


def _step_lines(rows: list[list]) -> str:
    """steps.csv lines: numbers and a source name, so no quoting (csv.writer costs ~3x more per row
    on the sampler thread, which shares the GIL with the training loop)."""
    return "".join(
        f"{r[0]},{r[1]},{r[2]},{r[3]:.4f},{'' if r[4] is None else format(r[4], '.4f')},{r[5]:.4f},{r[6]},{r[7]}\n"
        for r in rows
    )


def _csv_lines(rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow(["" if v is None else v for v in r])
    return buf.getvalue()


def plain(value: Any) -> Any:
    """``value`` with only YAML-safe builtins (str subclasses such as TorchVersion become str)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


class CsvSink:
    """An append-only CSV file: the header on creation, then whole lines, flushed per append.
    ``lines`` formats rows that need no quoting faster than the csv module."""

    def __init__(self, path: Path, header: list[str], lines: Optional[Callable[[list[list]], str]] = None) -> None:
        self.path = path
        self.header = header
        self.lines = lines or _csv_lines
        self.created = False

    def append(self, rows: list[list]) -> None:
        """Append ``rows`` (the file with its header is created by the first call, even empty)."""
        if not self.created:
            runformat.replace_file(self.path, (",".join(self.header) + "\n" + self.lines(rows)).encode())
            self.created = True
            return
        if rows:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(self.lines(rows))

    def reset(self) -> None:
        """Remove the file; the next append starts it again."""
        self.created = False
        try:
            self.path.unlink()
        except OSError:
            pass


def claim_rank_dir(run: Path, rank: int, pid: int) -> Path:
    """Create this rank's folder; when another process has it already, a folder under ``.procs/``
    (the parent settles who keeps the rank at the end)."""
    run.mkdir(parents=True, exist_ok=True)
    wanted = runformat.rank_dir(run, rank)
    try:
        wanted.mkdir()
        return wanted
    except FileExistsError:
        extra = runformat.extra_process_dir(run, rank, pid)
        extra.mkdir(parents=True, exist_ok=True)
        return extra


class RankFiles:
    """The files of one rank folder (see module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.steps = CsvSink(folder / runformat.STEPS_CSV, runformat.STEP_FIELDS, _step_lines)
        self.host = CsvSink(folder / runformat.HOST_CSV, runformat.HOST_FIELDS)
        self.nvml = CsvSink(folder / runformat.NVML_CSV, runformat.NVML_FIELDS)

    def write_info(self, info: dict[str, Any]) -> None:
        """Rewrite rank.yaml."""
        runformat.write_rank_info(self.folder, plain(info))

    def write_status(self, status: dict[str, Any]) -> None:
        """Rewrite the heartbeat the live status line reads."""
        runformat.write_status(self.folder, status)

    def remove_status(self) -> None:
        """Remove the heartbeat (the rank has finished)."""
        runformat.remove_status(self.folder)


def process_identity() -> dict[str, Any]:
    """The parts of rank.yaml that describe the process and do not change while it runs."""
    return {
        "pid": os.getpid(),
        "argv": list(sys.argv),
        "executable": sys.executable,
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
    }


def rank_info(rec: Any, final: bool = True) -> dict[str, Any]:
    """The content of rank.yaml for recorder ``rec`` (``final``: with the window's slowdown figures)."""
    torch, sampler = rec.torch, rec.sampler
    mod = sys.modules.get("stallscope.profiler.distclock")  # loaded only when distributed
    rank_clock = mod.clock_info() if mod is not None else {}
    info: dict = {
        "schema_version": SCHEMA_VERSION,
        "rank": rec.rank,
        "local_rank": rec.local_rank,
        "world_size": rec.world_size,
        **process_identity(),
        "torch": str(torch.__version__),
        "cuda": None if getattr(torch.version, "cuda", None) is None else str(torch.version.cuda),
        "gpu": None,
        "driver": sampler.driver if sampler else None,
        "nvml": sampler.nvml_state if sampler else "off",
        "step_source": rec.source or ("whole-run" if rec.log.count else None),
        "steps": rec.log.count,
        "window": rec.window.info(),
        "clock": {**rec.window.clock_info(), **rank_clock},
        "overhead": {
            **rec.window.overhead,
            **(rec.window.slowdown(rec.log.walls, rec.log.window_flags) if final else {}),
        },
        "error": rec.error,
        "notices": list(rec.notices),
    }
    if rec.gpu.props:
        gpu = dict(rec.gpu.props)
        nv = (sampler.gpu_info() if sampler is not None else None) or {}
        gpu["uuid"] = nv.get("uuid") or gpu.get("uuid")
        gpu["name"] = nv.get("name") or gpu.get("name")
        info["gpu"] = gpu
    return info
