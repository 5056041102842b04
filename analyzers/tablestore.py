"""Event tables in a columnar binary file: the cache of repeated diagnoses and the per-rank
tables a rank writes at the end of its trace window.

Two forms, one format:

* the **full table** of a trace: the linked, time-sorted :class:`EventTable` and the metadata
  :func:`analyzers.loader.load_trace` returns for it (:func:`load_cached` reads it instead of
  parsing the trace again);
* the **compact form** of a rank (:func:`compact_rank_cached`): what
  :func:`analyzers.compact.compact_rank` keeps for the cross-rank analysis (steps, data waits,
  collectives, communication kernels, blocking calls), the rank's steps, its per-step breakdown,
  its metadata and the notices its load gave. A run of 1,024 ranks is diagnosed from 1,024 of
  these small files.

**Format.** An uncompressed numpy ``.npz`` (a ZIP of ``.npy`` members, stored): one member per
column with its exact dtype, ``names`` / ``extra`` / ``meta`` / ``rank`` as UTF-8 JSON bytes,
``extra`` shared dicts stored once (``extra_rows`` -> ``extra_ref`` -> ``extra``), and a JSON
``header`` with the format version, the hash of the code that decides the table's contents and
the key of the trace it was made from. Chosen by measurement (this project's 2-core CPU machine,
a 60 MB-JSON / 152k-row H200 trace whose table is 16.3 MB, warm page cache, best of 9 fresh
processes): the stored npz loads in 39 ms through :func:`read_table_file` with every check below
(30 ms through ``np.load`` unchecked); a deflated npz is 1.6 MB but takes 51 ms (inflating);
Arrow IPC takes 15 ms (zstd: 4.2 MB, 20 ms) but pyarrow is a 170 MB dependency whose import
alone costs ~100 ms in a fresh process. Parsing the trace takes 0.8-1.1 s.

**Safety.** A table file is data from disk, like a trace: :func:`read_table_file` never unpickles
(no object dtype is accepted), reads only stored members of the expected names, dtypes and
lengths, bounds every JSON blob, checks every member's CRC, every index column against the table
(names, links, sparse rows) and the time order. Any doubt makes the file a cache miss (one
notice, :data:`TABLE_NOTICE` in the returned metadata), never an exception.

**Where.** ``STALLSCOPE_TABLE_CACHE`` (:func:`cache_mode`): unset or ``auto`` writes next to a
rank's trace in a run directory (``.<trace name>.stallscope-table.npz``,
``.<trace name>.stallscope-compact.npz``) when its folder is writable, and for any other trace
(or a read-only run directory) into the user cache (``$XDG_CACHE_HOME/stallscope/tables``, default
``~/.cache/stallscope/tables``); ``user`` writes only into the user cache; ``off`` neither reads
nor writes; any other value is a folder used as the user cache (tests point it into their own
temporary folder). Tables next to a trace are read in every mode but ``off``. A table is used
only when its trace still has the size, modification time and first/last bytes it had
(:func:`source_key`) and the table was written by the same code (:func:`code_hash`). The user
cache keeps its newest :data:`USER_CACHE_MAX_BYTES`.

No torch import; numpy and the standard library only.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from stallscope.analyzers import reportcache
from stallscope.analyzers.arrays import unique
from stallscope.analyzers.model import EventTable, Kind, RankData, Step, StepBreakdown, empty_table
from stallscope.analyzers.reportcache import blake2b

__all__ = [
    "CACHE_ENV",
    "COMPACT_KEY_SPAN",
    "COMPACT_SUFFIX",
    "FORMAT_VERSION",
    "KEY_SPAN",
    "TABLE_NOTICE",
    "TABLE_SUFFIX",
    "USER_CACHE_MAX_BYTES",
    "StoredTable",
    "TableFileError",
    "cache_mode",
    "code_hash",
    "compact_rank_cached",
    "load_cached",
    "read_table_file",
    "sidecar",
    "source_key",
    "user_cache_dir",
    "write_compact",
    "write_table",
]

FORMAT = "stallscope-table"
FORMAT_VERSION = 1
TABLE_SUFFIX = ".stallscope-table.npz"
COMPACT_SUFFIX = ".stallscope-compact.npz"
CACHE_ENV = reportcache.CACHE_ENV
# The metadata key under which load_cached returns its one notice about a table file it refused.
TABLE_NOTICE = "stallscope_table_notice"

# The trace's identity: size, mtime and a hash of its first and last KEY_SPAN bytes. 1 MiB each
# end covers a gzip trailer (CRC32 + length) and Kineto's trailing metadata, and costs ~2 ms.
# The compact forms of a 1,024-rank run use 64 KiB: the same ends, 16x less to read per rank.
KEY_SPAN = 1 << 20
COMPACT_KEY_SPAN = 64 << 10

# The user cache keeps the newest 2 GB of tables: a full table is ~100 bytes per event, a quarter
# of the trace's JSON, so 2 GB holds the tables of ~8 GB of JSON traces (dozens of big traces,
# the working set of anyone re-diagnosing), while a CI machine that diagnoses thousands of
# traces cannot fill its disk with them.
USER_CACHE_MAX_BYTES = 2 << 30

# Bounds of what a table file may hold. Rows are indexed by int64 links but names by int32; a
# per-rank trace of 1 GB of JSON has ~4 M events. The JSON blobs of real traces are far smaller
# (a 60 MB H200 trace: 22 kB of names, 33 kB of distinct args); 256 MiB each leaves room for
# traces of several GB of JSON and keeps a hostile file from making us allocate more.
MAX_ROWS = 2**31 - 1
MAX_BLOB_BYTES = 256 << 20
MAX_MEMBERS = 64
MAX_NPY_HEADER = 4096

_COLUMN_NAMES = tuple(f.name for f in dataclasses.fields(EventTable) if f.name not in ("names", "extra"))
_BLOBS = ("header", "names", "extra", "meta", "rank")
# The modules whose source decides a full table's contents (and their shared bounds), and, for
# the compact form, also the ones that decide steps, breakdown and what compaction keeps.
_TABLE_SOURCES = (
    "analyzers/loader.py",
    "analyzers/decode.py",
    "analyzers/link.py",
    "analyzers/vocab.py",
    "analyzers/kineto_structs.py",
    "analyzers/tracefile.py",
    "analyzers/model.py",
    "analyzers/tablestore.py",
    "profiler/common.py",
)
# The compact form is also what context.load_rank (steps, clock checks) and compact_rank
# (breakdown, the rows kept) make of the table; a module absent from this version counts as such.
_COMPACT_SOURCES = (
    "analyzers/context.py",
    "analyzers/clock.py",
    "analyzers/steps.py",
    "analyzers/compact.py",
    "analyzers/breakdown.py",
)
_PACKAGE = Path(__file__).resolve().parents[1]


class TableFileError(ValueError):
    """A table file that is not one we wrote for this trace with this code (a cache miss)."""


@dataclasses.dataclass
class StoredTable:
    """What a table file holds: ``events``, the trace ``meta``, and for the compact form the
    rank's ``steps``, ``breakdown``, ``rank_meta`` (RankData.meta) and load ``notices``."""

    events: EventTable
    meta: dict[str, Any]
    form: str = "full"
    rank: int = -1
    steps: list[Step] = dataclasses.field(default_factory=list)
    breakdown: list[StepBreakdown] = dataclasses.field(default_factory=list)
    rank_meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    notices: list[str] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------------- identity
@functools.cache
def code_hash(form: str = "full") -> str | None:
    """Hash of the source text of the modules that decide a table's contents (read once per
    process, ~1 ms); None when a source file is missing (then nothing is cached)."""
    h = blake2b(digest_size=16)
    h.update(f"{FORMAT}/{FORMAT_VERSION}/{form}".encode())
    for rel in _TABLE_SOURCES:
        try:
            h.update(rel.encode() + b"\0" + (_PACKAGE / rel).read_bytes())
        except OSError:  # no source to key on (an install without it): nothing is cached
            return None
    for rel in _COMPACT_SOURCES if form == "compact" else ():
        path = _PACKAGE / rel
        h.update(rel.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"\0absent"))
    return h.hexdigest()


def source_key(path: Path, span: int = KEY_SPAN) -> dict[str, Any]:
    """The identity of the trace at ``path``: size, mtime (ns) and a hash of its first and last
    ``span`` bytes. Raises OSError when the file cannot be read."""
    size, mtime_ns, digest = reportcache.file_key(path, span)
    return {"size": size, "mtime_ns": mtime_ns, "span": span, "hash": digest}


def _unchanged(path: Path, key: dict[str, Any]) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == key["size"] and st.st_mtime_ns == key["mtime_ns"]


# ---------------------------------------------------------------------------------- locations
def cache_mode() -> str:
    """``auto``, ``user``, ``off``, or a folder path (``STALLSCOPE_TABLE_CACHE``; see module doc;
    one reading for both caches)."""
    return reportcache.cache_mode()


def user_cache_dir() -> Path:
    """The user cache folder of table files (:func:`reportcache.user_cache_dir`, ``tables``)."""
    return reportcache.user_cache_dir("tables")


def sidecar(trace: Path, suffix: str = TABLE_SUFFIX) -> Path:
    """The table file next to ``trace`` (hidden: ``.<name><suffix>``)."""
    return trace.with_name(f".{trace.name}{suffix}")


def in_run_dir(trace: Path) -> bool:
    """Whether ``trace`` is a rank's trace in a stallscope run directory (``RUN/rankN/...`` next to
    ``RUN/meta.yaml``): the profiler writes that rank's tables beside it, so diagnose may too. Any
    other trace is the user's file, and its folder is left alone: its tables (about eight times the
    gzipped trace) go to the size-bounded user cache."""
    return trace.parent.name.startswith("rank") and (trace.parent.parent / "meta.yaml").is_file()


def _user_entry(trace: Path, suffix: str) -> Path:
    digest = blake2b(str(trace.resolve()).encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
    return user_cache_dir() / f"{digest}{suffix}"


def _read_locations(trace: Path, suffix: str) -> list[Path]:
    mode = cache_mode()
    if mode == "off":
        return []
    return [sidecar(trace, suffix), _user_entry(trace, suffix)]


def _write_locations(trace: Path, suffix: str) -> list[Path]:
    mode = cache_mode()
    if mode == "off":
        return []
    out = []
    if mode == "auto" and in_run_dir(trace) and os.access(trace.parent, os.W_OK):
        out.append(sidecar(trace, suffix))
    out.append(_user_entry(trace, suffix))
    return out


# ---------------------------------------------------------------------------------- cache
def load_cached(
    path: Path, load: Callable[[Path], tuple[EventTable, dict[str, Any]]]
) -> tuple[EventTable, dict[str, Any]]:
    """``load(path)``'s table and metadata, read from a stored table of the same trace and code
    when there is one, else loaded and stored for next time. Storing never fails the load (a
    read-only folder, a full disk: the table is just not stored). A table file that is damaged
    or not ours is a miss; the returned metadata then says so once under :data:`TABLE_NOTICE`."""
    path = Path(path)
    code = code_hash("full")
    if cache_mode() == "off" or code is None or not path.is_file():
        return load(path)
    try:
        key = source_key(path, KEY_SPAN)
    except OSError:
        return load(path)
    refused: list[str] = []
    for loc in _read_locations(path, TABLE_SUFFIX):
        got = _try_read(loc, "full", code, key, refused)
        if got is not None:
            return got.events, got.meta
    table, meta = load(path)
    if _unchanged(path, key):  # the file did not change while it was parsed
        _store(_write_locations(path, TABLE_SUFFIX), lambda fh: _write(fh, "full", code, key, table, meta))
    if refused:
        meta = dict(meta)
        meta[TABLE_NOTICE] = refused[0]
    return table, meta


def compact_rank_cached(
    trace: Path, rank: int | None, notices: list[str], build: Callable[[list[str]], RankData]
) -> RankData:
    """The compact form of the rank whose trace is ``trace``: from its stored compact table when
    there is one for this trace and code, else ``build(own_notices)`` (load the rank, compact it)
    stored for next time. ``rank`` overrides the stored rank number (a run directory's folder);
    the rank's load notices (stored with it) are added to ``notices`` once each."""
    trace = Path(trace)
    code = code_hash("compact")
    key = None
    if cache_mode() != "off" and code is not None:
        try:
            key = source_key(trace, COMPACT_KEY_SPAN)
        except OSError:
            key = None
    if key is not None and code is not None:
        refused: list[str] = []
        for loc in _read_locations(trace, COMPACT_SUFFIX):
            got = _try_read(loc, "compact", code, key, refused)
            if got is not None:
                _add_notices(notices, got.notices)
                return _rank_data(got, trace, rank)
        _add_notices(notices, refused[:1])
    own: list[str] = []
    rd = build(own)
    _add_notices(notices, own)
    if key is not None and code is not None and _unchanged(trace, key) and rd.meta.get("compacted"):
        _store(_write_locations(trace, COMPACT_SUFFIX), lambda fh: _write_compact(fh, code, key, rd, own))
    return rd


def _add_notices(notices: list[str], new: Iterable[str]) -> None:
    for n in new:
        if n and n not in notices:
            notices.append(n)


def _rank_data(got: StoredTable, trace: Path, rank: int | None) -> RankData:
    r = got.rank if rank is None else rank
    for b in got.breakdown:
        b.rank = r
    meta = dict(got.rank_meta)
    meta["trace"] = got.meta
    meta["compacted"] = True
    return RankData(
        rank=r, events=got.events, steps=got.steps, breakdown=got.breakdown, meta=meta, trace_path=str(trace)
    )


def _try_read(loc: Path, form: str, code: str, key: dict[str, Any], refused: list[str]) -> StoredTable | None:
    """The stored table at ``loc`` when it is one for ``key`` and ``code``; a damaged or foreign
    file adds a line to ``refused``; a stale or missing one is a silent miss."""
    if not loc.is_file():
        return None
    try:
        got = read_table_file(loc, form=form, code=code, key=key)
    except FileNotFoundError:
        return None
    except _Stale:
        return None
    except (OSError, TableFileError) as exc:
        refused.append(f"table file {loc} not used ({_short(exc)}); the trace was read instead")
        return None
    if loc.parent == user_cache_dir():
        try:
            os.utime(loc)  # newest first when the user cache is pruned
        except OSError:
            pass
    return got


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _store(locations: list[Path], write: Callable[[Any], None]) -> Path | None:
    """Write a table to the first location that takes it (atomically); None when none does."""
    for loc in locations:
        try:
            reportcache.atomic_write(loc, write)
        except (OSError, ValueError, TypeError, OverflowError):
            continue
        if loc.parent == user_cache_dir():
            prune_user_cache()
        return loc
    return None


def prune_user_cache(limit: int = USER_CACHE_MAX_BYTES) -> None:
    """Remove the oldest tables of the user cache until it holds at most ``limit`` bytes."""
    folder = user_cache_dir()
    entries = []
    try:
        for e in os.scandir(folder):
            if e.name.endswith((TABLE_SUFFIX, COMPACT_SUFFIX)) and e.is_file(follow_symlinks=False):
                st = e.stat(follow_symlinks=False)
                entries.append((st.st_mtime_ns, st.st_size, e.path))
    except OSError:
        return
    total = 0
    for _, size, p in sorted(entries, reverse=True):
        total += size
        if total > limit:
            try:
                os.unlink(p)
            except OSError:
                pass


# ---------------------------------------------------------------------------------- writing
def write_table(path: Path, table: EventTable, meta: dict[str, Any], key: dict[str, Any]) -> Path:
    """Write the full table of the trace whose :func:`source_key` is ``key`` to ``path``
    (atomically). Raises OSError / ValueError when it cannot."""
    code = code_hash("full")
    if code is None:
        raise ValueError("the package's source files are missing; tables cannot be keyed to the code")
    reportcache.atomic_write(Path(path), lambda fh: _write(fh, "full", code, key, table, meta))
    return Path(path)


def write_compact(path: Path, rd: RankData, notices: list[str], key: dict[str, Any]) -> Path:
    """Write the compact form of ``rd`` (compacted by ``analyzers.compact.compact_rank``) with the
    notices its load gave to ``path`` (atomically). ``key`` is the trace's :func:`source_key`
    over :data:`COMPACT_KEY_SPAN`."""
    code = code_hash("compact")
    if code is None:
        raise ValueError("the package's source files are missing; tables cannot be keyed to the code")
    reportcache.atomic_write(Path(path), lambda fh: _write_compact(fh, code, key, rd, notices))
    return Path(path)


def _write_compact(fh: Any, code: str, key: dict[str, Any], rd: RankData, notices: list[str]) -> None:
    rank_meta = {k: v for k, v in rd.meta.items() if k not in ("trace", "compacted")}
    part = {
        "rank": int(rd.rank),
        "steps": [[int(s.index), int(s.start_ns), int(s.end_ns), str(s.source)] for s in rd.steps],
        "breakdown": [dataclasses.asdict(b) for b in rd.breakdown],
        "rank_meta": rank_meta,
        "notices": [str(n) for n in notices],
    }
    _write(fh, "compact", code, key, _used_names(rd.events), rd.meta.get("trace") or {}, part)


def _used_names(t: EventTable) -> EventTable:
    """``t`` with only the names its rows use (a compacted table keeps the whole trace's names)."""
    used = unique(t.name)
    if used.size == len(t.names):
        return t
    names = [t.names[i] for i in used.tolist()]
    return dataclasses.replace(t, names=names, name=np.searchsorted(used, t.name).astype(t.name.dtype))


def _write(
    fh: Any,
    form: str,
    code: str,
    key: dict[str, Any],
    table: EventTable,
    meta: dict[str, Any],
    part: dict[str, Any] | None = None,
) -> None:
    n = len(table)
    rows = np.fromiter(table.extra.keys(), dtype=np.int64, count=len(table.extra))
    # each shared dict once, numbered in the order rows first use it
    values = list(table.extra.values())
    ids = np.fromiter(map(id, values), dtype=np.uint64, count=len(values))
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    by_first_use = np.argsort(first, kind="stable")
    ref_of = np.empty(len(first), dtype=np.int64)
    ref_of[by_first_use] = np.arange(len(first))
    refs = ref_of[inverse]
    order = np.argsort(rows, kind="stable")
    arrays: dict[str, np.ndarray] = {}
    for c in _COLUMN_NAMES:
        col = np.ascontiguousarray(getattr(table, c))
        if col.dtype != _DTYPES[c] or col.shape != (n,):
            raise ValueError(f"column {c}: {col.dtype} {col.shape}, expected {_DTYPES[c]} ({n},)")
        arrays[c] = col
    arrays["extra_rows"] = rows[order]
    arrays["extra_ref"] = refs[order]
    blobs: dict[str, Any] = {
        "names": table.names,
        "extra": [values[i] for i in first[by_first_use].tolist()],
        "meta": meta,
    }
    if part is not None:
        blobs["rank"] = part
    encoded = {k: _json_bytes(v) for k, v in blobs.items()}
    header = {"format": FORMAT, "version": FORMAT_VERSION, "form": form, "code": code, "key": key, "rows": n}
    encoded["header"] = _json_bytes(header)
    for k, b in encoded.items():
        if len(b) > MAX_BLOB_BYTES:
            raise ValueError(f"{k}: {len(b)} bytes of JSON, over the {MAX_BLOB_BYTES} a table file may hold")
        arrays[k] = np.frombuffer(b, dtype=np.uint8)
    members: dict[str, Any] = arrays  # numpy's stubs read **kwargs as its allow_pickle flag
    np.savez(fh, allow_pickle=False, **members)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(f"{type(o).__name__} is not stored in a table file")


def _json_bytes(value: Any) -> bytes:
    # The standard encoder: exact for ints of any size and for NaN/Infinity, which args from a
    # generic JSON parse can hold (orjson would write NaN as null and refuse big ints).
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default).encode(
        "utf-8", "surrogatepass"
    )


# ---------------------------------------------------------------------------------- reading
_DTYPES: dict[str, np.dtype[Any]] = {c: getattr(empty_table(), c).dtype for c in _COLUMN_NAMES}
_ARRAY_DTYPES: dict[str, np.dtype[Any]] = {
    **_DTYPES,
    "extra_rows": np.dtype(np.int64),
    "extra_ref": np.dtype(np.int64),
    **{b: np.dtype(np.uint8) for b in _BLOBS},
}
_KNOWN_KIND = np.zeros(256, dtype=bool)  # indexed by a kind's byte
_KNOWN_KIND[np.asarray([int(k) for k in Kind], dtype=np.int8).view(np.uint8)] = True
_BREAKDOWN_FIELDS = {f.name for f in dataclasses.fields(StepBreakdown)}


class _Stale(Exception):
    """A well-formed table file for another version of the trace or of the code (a silent miss)."""


def read_table_file(
    path: Path, *, form: str, code: str | None = None, key: dict[str, Any] | None = None
) -> StoredTable:
    """Read and check a table file. ``code`` / ``key`` given: the file must have been written by
    that code for that trace (else a silent-miss exception, internal). Raises
    :class:`TableFileError` for anything that is not a well-formed table file of ``form``, and
    OSError when it cannot be read."""
    path = Path(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        try:
            zf = zipfile.ZipFile(fh)
            infos = zf.infolist()
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            EOFError,
            ValueError,
            struct.error,
            UnicodeDecodeError,
        ) as exc:
            raise TableFileError(f"not a readable npz file: {_short(exc)}") from None
        members = _Members(fh, infos, size)
        header = members.json("header", 1 << 16)
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise TableFileError("not a stallscope table file")
        if header.get("version") != FORMAT_VERSION or header.get("form") != form:
            raise _Stale()
        if code is not None and header.get("code") != code:
            raise _Stale()
        if key is not None and not _same_key(header.get("key"), key):
            raise _Stale()
        n = header.get("rows")
        if type(n) is not int or not 0 <= n <= MAX_ROWS:
            raise TableFileError(f"row count {n!r} out of range")
        cols = {c: members.array(c, n) for c in _COLUMN_NAMES}
        names = members.json("names", MAX_BLOB_BYTES)
        extra_list = members.json("extra", MAX_BLOB_BYTES)
        meta = members.json("meta", MAX_BLOB_BYTES)
        rows = members.array("extra_rows", None)
        refs = members.array("extra_ref", rows.size)
        part = members.json("rank", MAX_BLOB_BYTES) if form == "compact" else None
    if not isinstance(names, list) or not all(type(s) is str for s in names):
        raise TableFileError("names is not a list of strings")
    if not isinstance(extra_list, list) or not all(type(d) is dict for d in extra_list):
        raise TableFileError("extra is not a list of mappings")
    if not isinstance(meta, dict):
        raise TableFileError("meta is not a mapping")
    _check_columns(cols, n, len(names))
    if rows.size and (rows[0] < 0 or rows[-1] >= n or np.any(rows[1:] <= rows[:-1])):
        raise TableFileError("extra rows out of range or not increasing")
    if refs.size and (refs.min() < 0 or refs.max() >= len(extra_list)):
        raise TableFileError("extra references out of range")
    extra = dict(zip(rows.tolist(), map(extra_list.__getitem__, refs.tolist()), strict=True))
    table = EventTable(names=names, extra=extra, **cols)
    out = StoredTable(events=table, meta=meta, form=form)
    if part is not None:
        _fill_compact(out, part)
    return out


def _same_key(stored: Any, key: dict[str, Any]) -> bool:
    if not isinstance(stored, dict):
        return False
    return all(stored.get(k) == key[k] for k in ("size", "mtime_ns", "span", "hash"))


class _Members:
    """The stored members of an open table file: ``name -> (data offset, length, crc)``; anything
    but stored members of the expected names is refused."""

    def __init__(self, fh: Any, infos: list[zipfile.ZipInfo], size: int) -> None:
        if len(infos) > MAX_MEMBERS:
            raise TableFileError(f"{len(infos)} members, more than a table file has")
        self.fh, self.size = fh, size
        self.index: dict[str, tuple[int, int, int]] = {}
        for info in infos:
            name = info.filename
            if not name.endswith(".npy") or name[:-4] not in _ARRAY_DTYPES or name[:-4] in self.index:
                raise TableFileError(f"unexpected member {name[:80]!r}")
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                raise TableFileError(f"member {name} is compressed or encrypted")
            if info.compress_size != info.file_size:
                raise TableFileError(f"member {name}: sizes disagree")
            self.index[name[:-4]] = (info.header_offset, info.file_size, info.CRC)

    def locate(self, name: str) -> tuple[int, int, int]:
        """``(start of the member's data, its length, its CRC)``."""
        if name not in self.index:
            raise TableFileError(f"member {name} missing")
        offset, length, crc = self.index[name]
        self.fh.seek(offset)
        local = self.fh.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise TableFileError(f"member {name}: bad local header")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = offset + 30 + name_len + extra_len
        if start + length > self.size:
            raise TableFileError(f"member {name} runs past the end of the file (truncated)")
        return start, length, crc

    def array(self, name: str, n: int | None) -> np.ndarray:
        """The 1-D array of member ``name`` with its expected dtype and ``n`` elements (any when
        None), read straight into an aligned, writable array; its CRC checked."""
        start, length, crc = self.locate(name)
        self.fh.seek(start)
        head = self.fh.read(min(length, MAX_NPY_HEADER))
        count, dtype, skip = _npy_header(head, name)
        want = _ARRAY_DTYPES[name]
        if dtype != want:
            raise TableFileError(f"member {name}: {dtype}, expected a column of {want}")
        if n is not None and count != n:
            raise TableFileError(f"member {name}: {count} values for {n} rows")
        if skip + count * want.itemsize != length:
            raise TableFileError(f"member {name}: {length} bytes do not hold {count} values")
        arr = np.empty(count, dtype=want)
        view = arr.view(np.uint8).data
        self.fh.seek(start + skip)
        got = self.fh.readinto(view) if count else 0
        if got != arr.nbytes:
            raise TableFileError(f"member {name}: truncated")
        if zlib.crc32(view, zlib.crc32(head[:skip])) != crc:
            raise TableFileError(f"member {name}: CRC mismatch (a damaged file)")
        return arr

    def json(self, name: str, limit: int) -> Any:
        """Member ``name`` (UTF-8 JSON bytes, at most ``limit``) decoded."""
        _, length, _ = self.locate(name)
        if length > limit + MAX_NPY_HEADER:
            raise TableFileError(f"member {name}: {length} bytes, over the {limit} a table file may hold")
        raw = self.array(name, None)
        try:
            return json.loads(raw.tobytes().decode("utf-8", "surrogatepass"))
        except (ValueError, RecursionError) as exc:
            raise TableFileError(f"member {name}: not JSON ({_short(exc)})") from None


# The header numpy writes for a 1-D array (format 1.0), read without evaluating it; any other
# header goes through numpy's own (safe, bounded) reader.
_NPY_1D = re.compile(
    rb"\{'descr': '([<|>][a-z][0-9]{1,2})', 'fortran_order': False, 'shape': \(([0-9]{1,12}),\), \} *\n"
)


def _npy_header(head: bytes, name: str) -> tuple[int, np.dtype[Any], int]:
    """``(element count, dtype, header length)`` of a 1-D array's .npy header."""
    if head[:8] == b"\x93NUMPY\x01\x00" and len(head) >= 10:
        hlen = 10 + int.from_bytes(head[8:10], "little")
        m = _NPY_1D.fullmatch(head, 10, hlen)
        if m is not None:
            return int(m.group(2)), np.dtype(m.group(1).decode()), hlen
    bio = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(bio)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(bio, max_header_size=MAX_NPY_HEADER)
    except (ValueError, SyntaxError, TypeError, struct.error, UnicodeDecodeError) as exc:
        raise TableFileError(f"member {name}: bad npy header ({_short(exc)})") from None
    if dtype.hasobject or fortran or len(shape) != 1:
        raise TableFileError(f"member {name}: {dtype} {shape}, expected a column")
    return int(shape[0]), dtype, bio.tell()


def _check_columns(cols: dict[str, np.ndarray], n: int, n_names: int) -> None:
    if not n:
        return
    name = cols["name"]
    if name.min() < 0 or name.max() >= n_names:
        raise TableFileError("name ids out of range")
    for c in ("launch_of", "op_of"):
        if cols[c].min() < -1 or cols[c].max() >= n:
            raise TableFileError(f"{c} links out of range")
    if cols["step"].min() < -1:
        raise TableFileError("step numbers out of range")
    if not _KNOWN_KIND[cols["kind"].view(np.uint8)].all():
        raise TableFileError("unknown event kinds")
    ts = cols["ts_ns"]
    if np.any(ts[1:] < ts[:-1]):
        raise TableFileError("rows not in time order")
    if cols["dur_ns"].min() < 0:
        raise TableFileError("negative durations")


def _fill_compact(out: StoredTable, part: Any) -> None:
    if not isinstance(part, dict):
        raise TableFileError("rank part is not a mapping")
    rank, steps, breakdown = part.get("rank"), part.get("steps"), part.get("breakdown")
    rank_meta, notices = part.get("rank_meta"), part.get("notices")
    if type(rank) is not int or not isinstance(steps, list) or not isinstance(breakdown, list):
        raise TableFileError("rank part: rank, steps or breakdown missing")
    if not isinstance(notices, list) or not all(type(x) is str for x in notices):
        raise TableFileError("rank part: notices malformed")
    # RankData.meta sections that load_rank fills (the clock verdict) are flat mappings of scalars
    if not isinstance(rank_meta, dict) or not all(
        isinstance(v, dict) and all(x is None or type(x) in (bool, int, float, str) for x in v.values())
        for v in rank_meta.values()
    ):
        raise TableFileError("rank part: meta malformed")
    for s in steps:
        if not (
            isinstance(s, list)
            and len(s) == 4
            and all(type(v) is int for v in s[:3])
            and type(s[3]) is str
            and abs(s[0]) < 2**31
        ):
            raise TableFileError("rank part: a step is malformed")
        out.steps.append(Step(index=s[0], start_ns=s[1], end_ns=s[2], source=s[3]))
    for b in breakdown:
        if not isinstance(b, dict) or set(b) != _BREAKDOWN_FIELDS:
            raise TableFileError("rank part: a breakdown row is malformed")
        if not all(type(v) in (int, float) for v in b.values()) or type(b["step"]) is not int:
            raise TableFileError("rank part: a breakdown value is not a number")
        out.breakdown.append(StepBreakdown(**b))
    out.rank = rank
    out.rank_meta = rank_meta
    out.notices = list(notices)
