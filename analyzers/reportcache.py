"""Finished ``stallscope diagnose`` reports, kept so that a repeated diagnose of unchanged inputs
writes the same bytes without loading the trace, running the analyzers or importing them.

**What is kept.** One entry per target and *kind*: the text diagnose printed and wrote in
``yaml``, ``json`` or ``md`` (one text serves stdout and ``-o``). A console diagnose keeps the
``json`` text (the report, drawn again by rich on a hit) and, with ``-o``, the file's text.
:func:`store` keeps them after a diagnose that succeeded (analyzers/command.py); nothing is kept
when diagnose failed, when an analyzer failed (the report would keep saying so after the bug is
gone only by chance) or when a table file was refused (that notice belongs to one run).

**Key.** An entry is used only when everything its text depends on is as it was:

* the inputs (:func:`input_key`): a trace file by its size, modification time (ns) and a hash of
  its first and last MiB (tablestore's source key); a folder by the same for every file below it
  whose name diagnose may read (:func:`is_input_name`: traces and NCCL flight-recorder dumps
  ``*.json`` / ``*.json.gz``, the ``*.csv`` telemetry, ``meta.yaml``, ``patches.yaml``,
  ``rank.yaml``), their first and last 64 KiB (the compact form's span: a 1,024-rank folder
  costs 128 MiB of reads, not 2 GiB; a gzip trace ends with the CRC of its whole content). Other
  files (an HTML page, a ``report.yaml`` written into the run directory) are not inputs, so
  writing them does not stale the entry;
* the target as typed (the report names it) and resolved (the same words from another folder
  are another target);
* the code (:func:`code_stamp`): path, size and modification time of every file of
  ``analyzers/``, ``profiler/``, ``fixes/``, ``cli.py`` and ``__init__.py`` (the test Python
  applies before it reuses compiled code, here with nanoseconds), the Python version and the
  installed numpy, PyYAML and orjson;
* every ``STALLSCOPE_*`` environment variable (worker counts, the table cache) and, for ``md``,
  the fix-advice function the text was written with.

**Where.** The table cache's rules (``STALLSCOPE_TABLE_CACHE``, analyzers/tablestore.py): unset
or ``auto`` keeps the entries of a run directory, or of a rank's trace in one, in that folder
(``.<digest>.stallscope-report``) when it is writable, anything else in
``$XDG_CACHE_HOME/stallscope/reports`` (default ``~/.cache/stallscope/reports``); ``user`` only
there; ``off`` neither reads nor writes (``STALLSCOPE_REPORT_CACHE=off``: this cache alone, the
tables stay); any other value is the folder to use. A folder keeps its newest
:data:`USER_MAX_BYTES` (user cache) or :data:`LOCAL_MAX_BYTES` (a run directory) of entries.
Entries are written atomically (temporary file, rename).

**Safety.** An entry is a JSON header line (format, version, the key's digest, the kind, the
text's length and hash) and the UTF-8 text. A file that is damaged, truncated, too big, of
another format or for another key is a silent miss: the diagnosis runs.

Standard library only (plus :mod:`stallscope.profiler`'s stdlib-only helpers): the hit path of
``stallscope diagnose`` imports neither typer nor numpy nor the analyzers; a console hit imports
the renderer and rich.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

try:  # blake2b from its own module: importing hashlib also loads OpenSSL (~3 ms a process), unused here
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import blake2b

from stallscope.profiler import runformat
from stallscope.profiler.common import ToolError, atomic_write_text, check_outputs

__all__ = [
    "FORMATS",
    "Hit",
    "Prepared",
    "Request",
    "cacheable",
    "callable_id",
    "code_stamp",
    "file_format",
    "input_key",
    "is_input_name",
    "lookup",
    "parse_diagnose",
    "prepare",
    "serve",
    "store",
    "user_cache_dir",
]

FORMAT = "stallscope-report-cache"
FORMAT_VERSION = 1
SUFFIX = ".stallscope-report"
FORMATS = ("console", "yaml", "json", "md")
CACHE_ENV = "STALLSCOPE_TABLE_CACHE"  # one switch for both caches (tablestore takes it from here)
REPORT_CACHE_ENV = "STALLSCOPE_REPORT_CACHE"  # `off`: this cache alone off (to time the table's path)

# Spans of the inputs' identity: tablestore's KEY_SPAN for a trace file (its full table's key),
# its COMPACT_KEY_SPAN for the files of a folder (see the module doc).
FILE_SPAN = 1 << 20
FOLDER_SPAN = 64 << 10
# A folder with more entries than this is not keyed (walking it would cost more than a hit
# saves): a 1,024-rank run directory has ~8,000 (traces, telemetry, their table files).
MAX_ENTRIES = 100_000
# A report is at most what a report file may be (profiler.common.YAML_MAX_BYTES); a 1,024-rank
# report is ~1 MB (its per_rank section: ~0.6 kB of JSON a rank). An entry is named by its whole key, so an entry of inputs or code that
# changed since stays until its folder is pruned (oldest first; the newest entry always stays):
# the user cache's 64 MiB hold a thousand reports of a few ranks (16-60 kB each), a run
# directory's 4 MiB its reports in every kind, for several versions of its inputs and code.
MAX_TEXT_BYTES = 64 << 20
MAX_HEADER_BYTES = 4096
USER_MAX_BYTES = 64 << 20
LOCAL_MAX_BYTES = 4 << 20

_INPUT_SUFFIXES = (".json", ".json.gz", ".csv")
_INPUT_NAMES = frozenset({runformat.META, runformat.PATCHES, runformat.RANK_INFO})
_FILE_SUFFIXES = {".json": "json", ".md": "md", ".markdown": "md"}
_PACKAGE = Path(__file__).resolve().parents[1]
_CODE_DIRS = ("analyzers", "profiler", "fixes")
_CODE_FILES = ("cli.py", "__init__.py")
_DEPENDENCIES = ("numpy", "yaml", "orjson")
# tablestore's notice for a table file it refused (tablestore._try_read): that run's own news.
_REFUSED_TABLE = ("table file ", "the trace was read instead")


class Request(NamedTuple):
    """A ``diagnose`` the cache can answer: ``target`` and ``output`` as typer passes them
    (``str(Path(arg))``), ``fmt`` one of :data:`FORMATS`."""

    target: str
    fmt: str = "console"
    output: str | None = None

    def kinds(self) -> list[str]:
        """The texts that answer it: the format's, or for the console the report (``json``) and
        the ``-o`` file's."""
        if self.fmt != "console":
            return [self.fmt]
        wanted = ["json"]
        if self.output is not None and file_format(self.fmt, Path(self.output)) != "json":
            wanted.append(file_format(self.fmt, Path(self.output)))
        return wanted


class Prepared(NamedTuple):
    """A request with its target's identity (keyed before the diagnosis reads its inputs), the
    folder that keeps its entries when it is a run directory, the fix advice's name."""

    request: Request
    resolved: str
    inputs: list[Any]
    local: Path | None
    advice: str | None


class Hit(NamedTuple):
    """A request whose texts are all in the cache (``texts``: kind -> text)."""

    request: Request
    texts: dict[str, str]


def file_format(fmt: str, output: Path) -> str:
    """The format of the ``-o`` file: ``fmt``, or for the console the file's suffix (``.json``,
    ``.md``, else YAML)."""
    if fmt != "console":
        return fmt
    return _FILE_SUFFIXES.get(output.suffix.lower(), "yaml")


def callable_id(fn: Callable[..., Any] | None) -> str | None:
    """``module.qualname`` of the fix-advice function an ``md`` text was written with."""
    if fn is None:
        return None
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"


# ---------------------------------------------------------------------------------- requests
def parse_diagnose(argv: Sequence[str]) -> Request | None:
    """``diagnose TARGET [-f FMT] [-o FILE]`` (options before or after TARGET, each at most once,
    ``--format=`` / ``--output=`` spellings too) as a :class:`Request`; None for anything else
    (another command, a global option, ``--deep``, ``--annotated-trace``, ``--help``, a value that
    typer would read differently): those go the normal way."""
    if len(argv) < 2 or argv[0] != "diagnose":
        return None
    target: str | None = None
    values: dict[str, str] = {}
    names = {"-f": "fmt", "--format": "fmt", "-o": "output", "--output": "output"}
    i = 1
    while i < len(argv):
        arg = argv[i]
        opt, eq, val = arg.partition("=")
        if arg in names and i + 1 < len(argv):
            name, value, i = names[arg], argv[i + 1], i + 2
        elif eq and opt.startswith("--") and opt in names:
            name, value, i = names[opt], val, i + 1
        elif arg and not arg.startswith("-") and target is None:
            target, i = arg, i + 1
            continue
        else:
            return None
        if name in values or not value or value.startswith("-"):
            return None
        values[name] = value
    fmt = values.get("fmt", "console")
    if target is None or fmt not in FORMATS:
        return None
    output = values.get("output")
    return Request(str(Path(target)), fmt, None if output is None else str(Path(output)))


# ---------------------------------------------------------------------------------- identity
def is_input_name(name: str) -> bool:
    """Whether diagnose may read a file of this name in a target folder (see the module doc)."""
    return name.endswith(_INPUT_SUFFIXES) or name in _INPUT_NAMES


def file_key(path: str | os.PathLike[str], span: int) -> list[Any]:
    """``[size, mtime_ns, hash of the first and last span bytes]``: a file's identity for both
    caches (tablestore.source_key is this as a mapping). Raises OSError."""
    st = os.stat(path)
    h = blake2b(digest_size=16)
    with open(path, "rb") as fh:
        h.update(fh.read(span))
        if st.st_size > span:
            fh.seek(max(span, st.st_size - span))
            h.update(fh.read(span))
    return [st.st_size, st.st_mtime_ns, h.hexdigest()]


def input_key(target: str | os.PathLike[str]) -> list[Any] | None:
    """The identity of what a diagnosis of ``target`` reads (see the module doc); None when it
    cannot be keyed (missing, unreadable, a folder of more than :data:`MAX_ENTRIES` entries)."""
    path = os.fspath(target)
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return [["", *file_key(path, FILE_SPAN)]]
    except OSError:
        return None
    return _folder_key(path) if stat.S_ISDIR(st.st_mode) else None


def _folder_key(root: str) -> list[Any] | None:
    out: list[Any] = []
    seen: set[tuple[int, int]] = set()
    todo = [("", root)]
    count = 0
    while todo:
        rel, folder = todo.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:  # a link back up the tree
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            out.append([rel, "unreadable folder"])
            continue
        count += len(entries)
        if count > MAX_ENTRIES:
            return None
        for e in entries:
            name = rel + e.name
            try:
                if e.is_dir():  # links followed, as pathlib's globs and is_dir() do
                    todo.append((name + os.sep, e.path))
                elif is_input_name(e.name) and e.is_file():
                    out.append([name, *file_key(e.path, FOLDER_SPAN)])
            except OSError:
                out.append([name, "unreadable"])
    return sorted(out)


@functools.cache
def code_stamp() -> str:
    """What decides a report's text besides its inputs: the package's files (path, size,
    mtime_ns), the Python version and the installed numpy / PyYAML / orjson (their
    ``__init__``'s path, size and mtime). Computed once per process (a few ms: ~130 stats)."""
    h = blake2b(digest_size=16)
    h.update(f"{FORMAT}/{FORMAT_VERSION}\0{sys.version}\0{sys.implementation.cache_tag}\0".encode())
    paths = [_PACKAGE / f for f in _CODE_FILES]
    for top in _CODE_DIRS:
        for folder, dirs, files in os.walk(_PACKAGE / top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            paths += [Path(folder) / f for f in sorted(files)]
    for name in _DEPENDENCIES:
        paths.append(Path(_module_origin(name) or f"<no {name}>"))
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{p}\0absent\0".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _module_origin(name: str) -> str | None:
    """Where ``name`` would be imported from, without importing it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None


def _environment() -> list[list[str]]:
    return sorted([k, v] for k, v in os.environ.items() if k.startswith("STALLSCOPE_"))


def _digest(value: Any, size: int) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return blake2b(text.encode("ascii"), digest_size=size).hexdigest()


def _key(p: Prepared, kind: str) -> str:
    key = {
        "kind": kind,
        "target": p.request.target,
        "resolved": p.resolved,
        "inputs": p.inputs,
        "code": code_stamp(),
        "env": _environment(),
        "advice": p.advice if kind == "md" else None,
    }
    return _digest(key, 16)


# ---------------------------------------------------------------------------------- places
def cache_mode() -> str:
    """``auto``, ``user``, ``off`` or a folder (tablestore.cache_mode's reading of the variable)."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    low = raw.lower()
    if low in ("", "auto", "on", "1"):
        return "auto"
    if _off(low):
        return "off"
    return "user" if low == "user" else raw


def _off(value: str) -> bool:
    return value.strip().lower() in ("off", "0", "no", "false", "none")


def user_cache_dir(kind: str = "reports") -> Path:
    """The user cache folder of one cache (``reports`` here, ``tables`` for the table cache):
    ``STALLSCOPE_TABLE_CACHE`` when it names a folder, else ``$XDG_CACHE_HOME/stallscope/KIND``
    (default ``~/.cache/stallscope/KIND``)."""
    mode = cache_mode()
    if mode not in ("auto", "user", "off"):
        return Path(mode).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "stallscope" / kind


def _local_dir(resolved: Path, is_dir: bool) -> Path | None:
    """The run directory (or rank folder) whose entries stay in it; None for other targets."""
    if is_dir:
        return resolved if runformat.looks_like_run_dir(resolved) else None
    parent = resolved.parent
    return parent if parent.name.startswith("rank") and (parent.parent / runformat.META).is_file() else None


def _read_places(key: str, local: Path | None) -> list[Path]:
    if cache_mode() == "off":
        return []
    name = key + SUFFIX
    return [*([local / f".{name}"] if local is not None else []), user_cache_dir() / name]


def _write_places(key: str, local: Path | None) -> list[tuple[Path, int]]:
    """Where to keep an entry, in order, with the bound of that folder."""
    mode = cache_mode()
    if mode == "off":
        return []
    name = key + SUFFIX
    out = []
    if mode == "auto" and local is not None and os.access(local, os.W_OK):
        out.append((local / f".{name}", LOCAL_MAX_BYTES))
    return [*out, (user_cache_dir() / name, USER_MAX_BYTES)]


# ---------------------------------------------------------------------------------- cache
def prepare(
    target: str | os.PathLike[str],
    fmt: str = "console",
    output: str | os.PathLike[str] | None = None,
    advice: str | None = None,
) -> Prepared | None:
    """Key a diagnosis before it reads its inputs (``advice``: the fix advice's
    :func:`callable_id`); None when the cache is off or the target cannot be keyed."""
    if cache_mode() == "off" or _off(os.environ.get(REPORT_CACHE_ENV, "")) or fmt not in FORMATS:
        return None
    request = Request(str(Path(target)), fmt, None if output is None else str(Path(output)))
    inputs = input_key(request.target)
    if inputs is None:
        return None
    try:
        resolved = Path(request.target).resolve()
    except (OSError, RuntimeError):
        return None
    local = _local_dir(resolved, os.path.isdir(resolved))
    return Prepared(request, str(resolved), inputs, local, advice)


def lookup(argv: Sequence[str], advice: str | None = None) -> Hit | None:
    """The cached texts that answer the command line ``argv`` (without the program name), or
    None: not a diagnose the cache answers, or not every text it needs is cached for these
    inputs, this code and this environment. ``advice`` names the fix-advice function the
    command would pass (:func:`callable_id`)."""
    request = parse_diagnose(argv)
    if request is None:
        return None
    p = prepare(request.target, request.fmt, request.output, advice)
    if p is None:
        return None
    hit = Hit(request, {})
    for kind in request.kinds():
        text = _find(p, kind)
        if text is None:
            return None
        hit.texts[kind] = text
    return hit


def _find(p: Prepared, kind: str) -> str | None:
    key = _key(p, kind)
    for place in _read_places(key, p.local):
        text = _read_entry(place, key, kind)
        if text is not None:
            try:
                os.utime(place)  # newest first when the folder is pruned
            except OSError:
                pass
            return text
    return None


def _read_entry(path: Path, key: str, kind: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_TEXT_BYTES + MAX_HEADER_BYTES + 1)
    except OSError:
        return None
    head, sep, body = data.partition(b"\n")
    if not sep or len(head) > MAX_HEADER_BYTES or len(data) > MAX_TEXT_BYTES + MAX_HEADER_BYTES:
        return None
    try:
        header = json.loads(head)
        text = body.decode("utf-8")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(header, dict) or header != _header(key, kind, body):
        return None
    return text


def _header(key: str, kind: str, body: bytes) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "key": key,
        "kind": kind,
        "bytes": len(body),
        "hash": blake2b(body, digest_size=16).hexdigest(),
    }


def cacheable(report: dict[str, Any], notices: Sequence[Any]) -> bool:
    """Whether a finished report may be kept: no analyzer failed, no table file was refused."""
    analyzers = report.get("analyzers")
    if isinstance(analyzers, dict) and analyzers.get("failed"):
        return False
    start, end = _REFUSED_TABLE
    return not any(isinstance(n, str) and n.startswith(start) and n.endswith(end) for n in notices)


def store(p: Prepared, texts: dict[str, str]) -> list[Path]:
    """Keep ``texts`` (kind -> text) of the diagnosis keyed by ``p`` when its inputs did not
    change while it ran. Never raises for a folder that does not take them; returns where they
    went."""
    if not texts or input_key(p.request.target) != p.inputs:
        return []
    written = []
    for kind, text in texts.items():
        try:
            body = text.encode("utf-8")
        except UnicodeEncodeError:  # not a text diagnose could have written either
            continue
        key = _key(p, kind)
        head = json.dumps(_header(key, kind, body), separators=(",", ":")).encode("ascii")
        for path, limit in _write_places(key, p.local) if len(body) <= MAX_TEXT_BYTES else []:
            try:
                atomic_write(path, functools.partial(_write_bytes, head + b"\n" + body))
            except OSError:
                continue
            _prune(path.parent, limit, keep=path)
            written.append(path)
            break
    return written


def _write_bytes(data: bytes, fh: Any) -> None:
    fh.write(data)


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """``write(fh)`` into a temporary file of the same folder, then rename it over ``path`` (mode
    by the umask). Not synced: a torn file fails its reader's hash or CRC check and is a cache
    miss (both caches write this way)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _prune(folder: Path, limit: int, keep: Path) -> None:
    """Remove the oldest entries of ``folder`` until it holds at most ``limit`` bytes of them
    (``keep``, the one just written, stays)."""
    entries = []
    try:
        for e in os.scandir(folder):
            if e.name.endswith(SUFFIX) and e.is_file(follow_symlinks=False):
                st = e.stat(follow_symlinks=False)
                entries.append((e.path == str(keep), st.st_mtime_ns, st.st_size, e.path))
    except OSError:
        return
    total = 0
    for _, _, size, path in sorted(entries, reverse=True):
        total += size
        if total > limit and path != str(keep):
            try:
                os.unlink(path)
            except OSError:
                pass


# ---------------------------------------------------------------------------------- answering
def serve(hit: Hit, fix_advice: Callable[..., Any] | None = None) -> bool:
    """Write what the diagnosis would: the ``-o`` file (atomically), then stdout (the text, or
    the console view drawn by rich with ``fix_advice``). False, with nothing written, when the
    output is refused or cannot be written: then the normal path runs and says why."""
    req = hit.request
    try:
        check_outputs({"--output": req.output}, (req.target,))
        if req.output is not None:
            atomic_write_text(req.output, hit.texts[file_format(req.fmt, Path(req.output))])
    except (ToolError, OSError):
        return False
    if req.fmt != "console":
        sys.stdout.write(hit.texts[req.fmt])
        return True
    from rich.console import Console  # as analyzers/command.py draws it

    from stallscope.analyzers.render import ReportView

    console = Console()
    console.print(ReportView(json.loads(hit.texts["json"]), fix_advice=fix_advice))
    if req.output is not None:
        console.print(f"report written to {req.output}", style="dim")
    return True
