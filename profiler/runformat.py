"""The run directory's layout, format version 1: its names and the small helpers that read and write them.

Every module that touches a run directory (the recorder in the target, the ``profile`` parent,
the analyzers, auto-patch) takes the names from here. The user-facing description is
docs/run-format.md::

    RUN/
      meta.yaml              the run: command, exit, environment, ranks, notices   (META)
      patches.yaml           rank 0's auto-patch decisions, copied up               (PATCHES)
      rank0/                 one folder per rank                                    (rank_dir)
        trace.json.gz        Kineto trace of the window                             (TRACE)
        steps.csv            one row per step (STEP_FIELDS)                         (STEPS_CSV)
        host.csv             host CPU samples (HOST_FIELDS)                         (HOST_CSV)
        nvml.csv             GPU samples (NVML_FIELDS)                              (NVML_CSV)
        rank.yaml            the rank's environment, window, clock, overhead        (RANK_INFO)
        patches.yaml         auto-patch decisions of this rank                      (PATCHES)
        .status.json         heartbeat while the rank runs (removed at its end)     (STATUS)
      .procs/rankN-pidP/     a second process that claimed rank N, while running    (PROCS)
      extra-processes/       the same folders once the run is settled               (EXTRA_PROCESSES)

Kept free of torch; numpy and yaml are imported only inside the readers that need them, so the
profiler's bootstrap and ``stallscope --help`` stay light.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stallscope.profiler.common import ToolError, read_yaml, write_yaml

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "RUN_KIND",
    "META",
    "PATCHES",
    "REPORT",
    "RANK_INFO",
    "STEPS_CSV",
    "HOST_CSV",
    "NVML_CSV",
    "TRACE",
    "TRACE_PLAIN",
    "STATUS",
    "CLAIM",
    "PROCS",
    "EXTRA_PROCESSES",
    "STEP_FIELDS",
    "HOST_FIELDS",
    "NVML_FIELDS",
    "rank_dir",
    "rank_of",
    "rank_dirs",
    "extra_process_dir",
    "parse_extra_process",
    "is_run_dir_entry",
    "looks_like_run_dir",
    "rank_trace",
    "read_meta",
    "write_meta",
    "read_rank_info",
    "write_rank_info",
    "write_status",
    "read_statuses",
    "remove_status",
    "read_csv_columns",
    "read_csv_rows",
    "replace_file",
]

SCHEMA_VERSION = 1
RUN_KIND = "stallscope-run"

META = "meta.yaml"
PATCHES = "patches.yaml"
REPORT = "report.yaml"
RANK_INFO = "rank.yaml"
STEPS_CSV = "steps.csv"
HOST_CSV = "host.csv"
NVML_CSV = "nvml.csv"
TRACE = "trace.json.gz"
TRACE_PLAIN = "trace.json"  # accepted when reading (a user may have unpacked the trace)
STATUS = ".status.json"
CLAIM = ".stallscope-claim"  # the O_EXCL marker that makes a run directory one run's (host, pid)
PROCS = ".procs"
EXTRA_PROCESSES = "extra-processes"

STEP_FIELDS = ["step", "start_ns", "end_ns", "wall_ms", "gpu_ms", "data_wait_ms", "in_window", "source"]
HOST_FIELDS = ["t_ns", "proc_cpu_pct", "workers", "workers_cpu_pct", "max_worker_cpu_pct", "rss_mb"]
NVML_FIELDS = [
    "t_ns",
    "gpu_util_pct",
    "mem_util_pct",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "sm_clock_max_mhz",
    "power_w",
    "power_limit_w",
    "temp_c",
    "mem_used_mb",
    "mem_total_mb",
    "clock_event_reasons",
    "pcie_tx_kbps",
    "pcie_rx_kbps",
]

_RANK_NAME = re.compile(r"rank(\d+)")
_EXTRA_NAME = re.compile(r"rank(\d+)-pid(\w+)")
_RUN_DIR_ENTRY = re.compile(r"rank\d+|meta\.yaml|patches\.yaml|\..*")


# ---------------------------------------------------------------------------------- paths
def rank_dir(run: Path, rank: int) -> Path:
    """The folder of ``rank`` in the run directory ``run``."""
    return Path(run) / f"rank{int(rank)}"


def rank_of(path: Path) -> int | None:
    """The rank number of a rank folder (``rank3`` -> 3), None for any other name."""
    m = _RANK_NAME.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def rank_dirs(run: Path) -> list[tuple[int, Path]]:
    """``(rank, folder)`` of every rank folder in ``run``, by rank number."""
    found = []
    try:
        entries = list(Path(run).iterdir())
    except OSError:
        return []
    for p in entries:
        r = rank_of(p)
        if r is not None and p.is_dir():
            found.append((r, p))
    return sorted(found)


def extra_process_dir(run: Path, rank: int, pid: int | str) -> Path:
    """Where a second process that claims ``rank`` writes while the run is going (under ``.procs/``)."""
    return Path(run) / PROCS / f"rank{int(rank)}-pid{pid}"


def parse_extra_process(path: Path) -> tuple[int, str] | None:
    """``(rank, pid)`` of an extra-process folder name (``rank0-pid123``), None for other names."""
    m = _EXTRA_NAME.fullmatch(Path(path).name)
    return (int(m.group(1)), m.group(2)) if m else None


def is_run_dir_entry(path: Path) -> bool:
    """Whether ``path``'s name is one a run directory holds (rank folders, meta.yaml, hidden files):
    the tasks of one job may write their rank folders into the same, already populated folder."""
    return _RUN_DIR_ENTRY.fullmatch(Path(path).name) is not None


def looks_like_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory (its meta.yaml, or a rank folder with a trace)."""
    p = Path(path)
    return (p / META).is_file() or any(p.glob(f"rank[0-9]*/{TRACE_PLAIN}*"))


def rank_trace(folder: Path) -> Path | None:
    """The window trace of a rank folder, None when the window was not recorded."""
    for name in (TRACE, TRACE_PLAIN):
        p = Path(folder) / name
        if p.is_file():
            return p
    return None


# ---------------------------------------------------------------------------------- YAML files
def read_meta(run: Path) -> dict[str, Any]:
    """``meta.yaml`` of ``run`` ({} when absent). A file that is not a mapping or has an unknown
    ``schema_version`` is a ToolError: this reader knows version 1 only."""
    path = Path(run) / META
    if not path.is_file():
        return {}
    meta = read_yaml(path)
    if not isinstance(meta, dict):
        raise ToolError(f"{path}: not a mapping; regenerate the run directory")
    version = meta.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ToolError(
            f"{path}: unknown run format schema_version {version!r}; "
            f"this stallscope reads version {SCHEMA_VERSION}, upgrade stallscope"
        )
    return meta


def write_meta(run: Path, meta: dict[str, Any]) -> Path:
    """Write ``meta.yaml`` atomically."""
    return write_yaml(Path(run) / META, meta)


def read_rank_info(folder: Path) -> dict[str, Any]:
    """``rank.yaml`` of a rank folder; {} when it is absent, unreadable or not a mapping (a process
    killed before its first flush leaves none)."""
    path = Path(folder) / RANK_INFO
    if not path.is_file():
        return {}
    try:
        info = read_yaml(path)
    except ToolError:
        return {}
    return info if isinstance(info, dict) else {}


def write_rank_info(folder: Path, info: dict[str, Any]) -> None:
    """Rewrite ``rank.yaml`` (temp file then rename; no fsync, it is rewritten every few seconds)."""
    try:
        import yaml

        text = yaml.safe_dump(info, sort_keys=False, default_flow_style=False, allow_unicode=True)
    except ImportError:  # JSON is valid YAML
        text = json.dumps(info, indent=1)
    replace_file(Path(folder) / RANK_INFO, text.encode("utf-8"))


# ---------------------------------------------------------------------------------- heartbeat
def write_status(folder: Path, status: dict[str, Any]) -> None:
    """Rewrite the rank's ``.status.json`` heartbeat (errors ignored: it is advisory)."""
    try:
        replace_file(Path(folder) / STATUS, json.dumps(status).encode())
    except OSError:
        pass


def remove_status(folder: Path) -> None:
    """Remove the heartbeat once the rank has finished."""
    try:
        (Path(folder) / STATUS).unlink()
    except OSError:
        pass


def read_statuses(run: Path) -> list[dict[str, Any]]:
    """The heartbeat of every rank that has one (unreadable ones are skipped)."""
    out = []
    for p in sorted(Path(run).glob(f"rank*/{STATUS}")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            pass
    return out


# ---------------------------------------------------------------------------------- CSV files
def read_csv_columns(path: Path) -> dict[str, np.ndarray] | None:
    """A CSV file as column name -> array: floats (empty cell = nan), or strings for a column that
    is not numeric. None when the file is absent or has no header; rows with the wrong number of
    cells (a line cut by a kill) are skipped."""
    import csv
    import math

    import numpy as np

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with path.open("r", encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                return None
            rows = [r for r in reader if len(r) == len(header)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ToolError(f"{path}: cannot read ({exc.__class__.__name__}); regenerate the run directory") from None
    out: dict[str, np.ndarray] = {}
    for j, col in enumerate(header):
        raw = [r[j] for r in rows]
        try:
            out[col] = np.asarray([float(v) if v != "" else math.nan for v in raw], dtype=np.float64)
        except ValueError:
            out[col] = np.asarray(raw, dtype=object)
    return out


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """A CSV file as a list of ``{column: cell}`` rows ([] when absent or unreadable); no numpy."""
    import csv

    try:
        with Path(path).open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


# ---------------------------------------------------------------------------------- writing
def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name next to ``path``, then rename it over ``path``.

    Readers never see a half-written file. No fsync: the recorder rewrites these files every few
    seconds from a live process, and a lost last version after a host crash costs one period.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
