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
import os
import threading
from collections import deque
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
    "PARALLEL_MIN_BYTES",
    "TRACE_SUFFIXES",
    "can_fork",
    "find_traces",
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


def _parse_blob(blob: bytes, final: bool, path: str) -> tuple[EventColumns, dict[str, Any] | None]:
    cols = EventColumns()
    meta = _add_blob(cols, blob, final, path)
    return cols, meta


def _trace_bytes(path: Path) -> int:
    size = path.stat().st_size
    with path.open("rb") as fh:
        return size * 8 if fh.read(2) == b"\x1f\x8b" else size  # Kineto JSON gzips ~8-12x


def _parallel_workers(path: Path) -> int:
    env = os.environ.get("STALLSCOPE_PARSE_WORKERS")
    if env is not None:
        return int(env) if env.isdigit() else 0
    if _trace_bytes(path) < PARALLEL_MIN_BYTES or (os.cpu_count() or 1) < 2 or not can_fork():
        return 0
    if threading.active_count() > 1:  # forking a threaded process can deadlock: parse here
        return 0
    if idle_cores() < 2:  # a helper on a busy core only adds its copying to our time
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


def _read_parallel(path: Path, workers: int) -> tuple[EventColumns, dict[str, Any]]:
    """Parse with ``workers`` forked helpers: this process reads and cuts the file and parses
    every ``workers + 1``-th blob itself; results are merged in file order."""
    import multiprocessing

    cols = EventColumns()
    meta: dict[str, Any] = {}
    pending: deque[Any] = deque()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for i, (blob, final) in enumerate(tracefile.iter_trace_segments(path, tracefile.CHUNK_BYTES)):
            if i % (workers + 1) == workers or final:
                own, m = _parse_blob(blob, final, str(path))  # while the helpers parse theirs
                while pending:
                    cols.merge(pending.popleft().get()[0])
                cols.merge(own)
            else:
                pending.append(pool.apply_async(_parse_blob, (blob, final, str(path))))
                continue
            if m is not None:
                meta = m
        while pending:
            cols.merge(pending.popleft().get()[0])
    return cols, meta


def _read_segments(path: Path) -> tuple[EventColumns, dict[str, Any]]:
    cols = EventColumns()
    meta: dict[str, Any] = {}
    for blob, final in tracefile.iter_trace_segments(path, tracefile.CHUNK_BYTES):
        m = _add_blob(cols, blob, final, str(path))
        if m is not None:
            meta = m
    return cols, meta
