"""Read one Kineto trace file into a linked, time-sorted event table.

:func:`load_trace` accepts any trace torch.profiler writes (``*.json``, ``*.json.gz``, including
``tensorboard_trace_handler`` names). The file is cut into blobs of whole events
(:mod:`analyzers.tracefile`); each blob is decoded into records (msgspec Structs when
available, else a generic JSON parse, :mod:`analyzers.kineto_structs`), the records become
numpy columns (:mod:`analyzers.decode`), and the table is sorted and linked
(:mod:`analyzers.link`). Large files are parsed by this process and a forked helper. This layer
knows nothing of steps, ranks or run directories (:mod:`analyzers.context` does). No torch import.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stallscope.analyzers import kineto_structs, tracefile
from stallscope.analyzers.decode import EventColumns
from stallscope.analyzers.link import sort_and_link
from stallscope.analyzers.model import EventTable
from stallscope.analyzers.vocab import MTIA_DEVICE_CATEGORY, MTIA_NOT_WORK, SKIP, Kind, is_mtia_copy
from stallscope.profiler.common import ToolError

__all__ = [
    "CATEGORIES",
    "EVENT_COUNTS",
    "PARENT_SHARE",
    "PARALLEL_MIN_BYTES",
    "TRACE_SUFFIXES",
    "can_fork",
    "find_traces",
    "free_cores",
    "idle_cores",
    "is_trace_file",
    "load_trace",
]

TRACE_SUFFIXES = (".json", ".json.gz")
# The metadata key of {"in_file": event records read, "usable": rows kept, "bad_time": rows left
# out for a timestamp that is no usable time}.
EVENT_COUNTS = "stallscope_events"
# The metadata key of {category as written: the kind it was read as (a Kind name, or "skipped")}.
CATEGORIES = "stallscope_categories"
PARALLEL_MIN_BYTES = 24 << 20  # below this, a second process costs more than it saves
# The part of the JSON this process parses when one helper parses the rest. Half: the helper's
# extra work (inflating and cutting all the text before its part, pickling its columns) and this
# process's (unpickling and merging them) came out about equal on the 64 MB benchmark trace.
PARENT_SHARE = 0.5


def is_trace_file(p: Path) -> bool:
    """Whether ``p`` is a file with a trace's name (``.json`` / ``.json.gz``, not hidden)."""
    return p.is_file() and p.name.endswith(TRACE_SUFFIXES) and not p.name.startswith(".")


def find_traces(folder: Path) -> list[Path]:
    """Trace files directly in ``folder`` (sorted by name)."""
    return sorted(p for p in Path(folder).iterdir() if is_trace_file(p))


def load_trace(path: str | Path) -> tuple[EventTable, dict[str, Any]]:
    """Parse one trace file into a linked, time-sorted :class:`EventTable` and its metadata (the
    document's keys besides ``traceEvents``, plus ``process_names`` and ``EVENT_COUNTS``).

    Files over ``PARALLEL_MIN_BYTES`` of JSON are parsed by this process and a forked helper
    (``STALLSCOPE_PARSE_WORKERS=0`` turns that off); any doubt (a cut inside a string, a worker
    error) falls back to the one-process parse, and that to the validating reader, which raises
    the :class:`ToolError` that names what is wrong with the file.
    """
    with _gc_paused():
        return _load_trace(Path(path))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic collector off while parsing: the parse allocates millions of acyclic objects,
    and the collector's passes over them cost ~10 % of the parse time for nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load_trace(path: Path) -> tuple[EventTable, dict[str, Any]]:
    cols: EventColumns | None = None
    meta: dict[str, Any] = {}
    readers = []
    if path.is_file():
        workers = _parallel_workers(path)
        if workers > 0:
            readers.append(lambda: _read_parallel(path, workers))
        readers.append(lambda: _read_segments(path))
    for read in readers:
        try:
            cols, meta = read()
            break
        except ToolError:  # the validating reader below gives the precise error
            cols = None
        except Exception:  # noqa: BLE001 - a cut inside a string, worker trouble: the validating reader decides
            cols = None
    if cols is None:
        cols = EventColumns()
        for events, m in tracefile.iter_trace_batches(path):
            cols.add_dicts(events)
            if m is not None:
                meta = m
    table = cols.table()
    if any(isinstance(c, str) and c.lower() == MTIA_DEVICE_CATEGORY for c in cols.categories):
        _mtia_kinds(table)
    table = sort_and_link(table)
    meta = dict(meta)
    meta["process_names"] = {str(k): v for k, v in cols.process_names.items()}
    meta[EVENT_COUNTS] = {"in_file": cols.seen, "usable": len(table), "bad_time": cols.dropped}
    meta[CATEGORIES] = {
        c: ("skipped" if k == SKIP else Kind(k).name.lower()) for c, k in cols.categories.items() if isinstance(c, str)
    }
    return table, meta


def _mtia_kinds(t: EventTable) -> None:
    """MTIA device rows come as one category (read as kernels): copies become memcpy rows, waits
    and event records no device work (see ``vocab.MTIA_NOT_WORK``)."""
    kernel = t.kind == Kind.KERNEL
    t.kind[kernel & np.isin(t.name, t.name_ids_matching(is_mtia_copy))] = Kind.MEMCPY
    t.kind[kernel & np.isin(t.name, t.name_ids_matching(MTIA_NOT_WORK.__contains__))] = Kind.OTHER


def _add_blob(cols: EventColumns, blob: bytes, final: bool, path: str) -> dict[str, Any] | None:
    """Decode one blob of ``iter_trace_segments`` into ``cols``; returns the trace metadata with
    the final blob. Typed decoding (msgspec) when available, else the generic parse."""
    if kineto_structs.AVAILABLE:
        try:
            if final:
                records, meta = kineto_structs.decode_document(blob)
            else:
                records, meta = kineto_structs.decode_events(blob), None
        except Exception:  # noqa: BLE001 - odd types or layout: the generic parse decides
            records = None
        if records is not None:
            cols.add(records)
            return meta
    events, meta = tracefile.parse_segment(blob, final, Path(path))
    cols.add_dicts(events)
    return meta


def _parallel_workers(path: Path) -> int:
    env = os.environ.get("STALLSCOPE_PARSE_WORKERS")
    if env is not None:
        return int(env) if env.isdigit() else 0
    if _json_bytes(path) < PARALLEL_MIN_BYTES or (os.cpu_count() or 1) < 2 or not can_fork():
        return 0
    if threading.active_count() > 1:  # forking a threaded process can deadlock: parse here
        return 0
    if free_cores() < 2:  # a helper on a busy core only adds its copying to our time
        return 0
    return 1


def can_fork() -> bool:
    """Whether worker processes can be forked here."""
    import multiprocessing  # here, not at the top: ~6 ms of imports that small diagnoses never need

    return "fork" in multiprocessing.get_all_start_methods()


def idle_cores() -> float:
    """Cores not busy by the 1-minute load average (this process counts as one of the busy ones
    only once it has run a while): forked helpers pay off only on idle cores."""
    try:
        return (os.cpu_count() or 1) - os.getloadavg()[0]
    except OSError:  # no load average on this platform
        return float(os.cpu_count() or 1)


def free_cores() -> int:
    """Cores free at this moment: the cores this process may run on less the other tasks the
    kernel has runnable right now (``/proc/loadavg``'s fourth field, which counts this process
    too); :func:`idle_cores` where there is no ``/proc``. Unlike the 1-minute load average, this
    does not count a command's own run of a moment ago as load on the next one."""
    try:
        cores = len(os.sched_getaffinity(0))
        with open("/proc/loadavg", encoding="ascii") as fh:
            running = int(fh.read().split()[3].split("/")[0])
    except (AttributeError, OSError, ValueError, IndexError):  # no affinity call or no /proc
        return int(idle_cores())
    return max(0, cores - max(0, running - 1))


def _read_parallel(path: Path, workers: int) -> tuple[EventColumns, dict[str, Any]]:
    """Parse with ``workers`` forked helpers, each taking one contiguous range of the file's
    blobs (this process the first). Every process cuts the file itself, up to the end of its
    range, so no blob crosses a pipe; a helper sends back its range's columns, pickled, once. The
    parts are merged in file order. A helper's failure raises here (the caller parses again)."""
    ends = _range_ends(_json_bytes(path), workers)
    helpers: dict[int, int] = {}  # pid -> read end of its pipe, until reaped
    try:
        for i in range(1, workers + 1):
            pid, fd = _fork_helper(path, ends[i - 1], ends[i])
            helpers[pid] = fd
        cols, meta = _parse_range(path, 0, ends[0])
        for pid in list(helpers):
            part, m = _collect(pid, helpers.pop(pid))
            cols.merge(part)
            if m is not None:
                meta = m
        return cols, meta
    finally:
        for pid, fd in helpers.items():  # after an error here: no helper left running or unreaped
            os.close(fd)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _range_ends(total: int, workers: int) -> list[float]:
    """Where each process's range of the JSON ends: this process ``PARENT_SHARE`` of the bytes
    when it has one helper (a helper also cuts all that comes before its range), the helpers
    equal parts of the rest; the last range reaches past any end."""
    first = total * (PARENT_SHARE if workers == 1 else 1.0 / (workers + 1))
    step = (total - first) / workers
    return [first + step * i for i in range(workers)] + [math.inf]


def _parse_range(path: Path, start: float, end: float) -> tuple[EventColumns, dict[str, Any]]:
    """Parse the blobs that begin at ``start`` or later and before ``end`` (offsets in the
    events' JSON text, counted over the blobs before them), cutting no further than needed."""
    cols = EventColumns()
    meta: dict[str, Any] = {}
    at = 0
    for blob, final in tracefile.iter_trace_segments(path, tracefile.CHUNK_BYTES):
        if at >= end:
            break
        if at >= start:
            m = _add_blob(cols, blob, final, str(path))
            if m is not None:
                meta = m
        at += len(blob)
    return cols, meta


def _fork_helper(path: Path, start: float, end: float) -> tuple[int, int]:
    """A forked process that parses one range and writes ``(ok, (columns, metadata) or the
    error's text)`` pickled to a pipe; returns its pid and the pipe's read end."""
    import pickle

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the helper: never returns, never runs this process's exit handlers
        code = 1
        try:
            os.close(r)
            try:
                out: tuple[bool, Any] = (True, _parse_range(path, start, end))
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
                out = (False, f"{exc.__class__.__name__}: {exc}")
            with os.fdopen(w, "wb") as fh:
                pickle.dump(out, fh, protocol=pickle.HIGHEST_PROTOCOL)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _collect(pid: int, fd: int) -> tuple[EventColumns, dict[str, Any] | None]:
    """A helper's columns and metadata (None when its range did not hold the metadata), read
    from the pipe as they come (no second copy of them in bytes), the helper then reaped; raises
    when it failed or died."""
    import pickle

    try:
        with os.fdopen(fd, "rb") as fh:
            ok, value = pickle.load(fh)
    finally:
        _, status = os.waitpid(pid, 0)
    if not ok:
        raise RuntimeError(f"parse helper failed: {value}")
    if status != 0:
        raise RuntimeError(f"parse helper ended with status {status}")
    cols, meta = value
    return cols, (meta or None)


def _json_bytes(path: Path) -> int:
    """The size of the trace's JSON text: a gzip file's own record of it (the last four bytes,
    modulo 4 GiB) when that is plausible, else an estimate from the compressed size."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return size
        fh.seek(max(0, size - 4))
        isize = int.from_bytes(fh.read(4), "little")
    return isize if isize >= size else size * 8


def _read_segments(path: Path) -> tuple[EventColumns, dict[str, Any]]:
    cols = EventColumns()
    meta: dict[str, Any] = {}
    for blob, final in tracefile.iter_trace_segments(path, tracefile.CHUNK_BYTES):
        m = _add_blob(cols, blob, final, str(path))
        if m is not None:
            meta = m
    return cols, meta
