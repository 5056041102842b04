"""Read a Kineto chrome trace (``.json`` or ``.json.gz``) in bounded memory.

Small files are parsed in one call. Large files are read in chunks: the ``traceEvents`` array
is cut at top-level ``}, {`` boundaries and each batch is parsed on its own. A cut at the wrong
place (inside a string or a nested object) always yields invalid JSON, so a failed batch is
simply retried with more input; nothing is ever guessed. The keys around the array
(``deviceProperties``, ``distributedInfo`` ...) are returned as the trace's metadata.

No torch import; orjson when installed, the standard json module otherwise.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stallscope.profiler.common import MAX_DEPTH, ToolError

try:  # orjson is ~5x faster than json on Kineto traces
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
    _JSONError: tuple[type[BaseException], ...] = (orjson.JSONDecodeError, ValueError)
except ImportError:  # pragma: no cover - depends on the environment
    import json

    def _loads(data: bytes) -> Any:
        return json.loads(data)

    _JSONError = (ValueError,)

__all__ = ["CHUNK_BYTES", "TEXT_REPLACED", "iter_trace_batches", "json_depth"]

CHUNK_BYTES = 1 << 20  # ~2-5k events: their Python objects stay around 10 MB
_HEAD = re.compile(rb'"traceEvents"\s*:\s*\[')
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_READ_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile)
# Set in a trace's metadata when its text held invalid Unicode that was replaced by U+FFFD.
TEXT_REPLACED = "stallscope_text_replaced"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
# An escaped backslash (kept, so the "u" after it is no escape), an escaped surrogate pair (kept),
# a lone escaped surrogate (replaced).
_ESCAPES = re.compile(
    rb"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
)


def _open(path: Path) -> Any:
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return path.open("rb")


def _unreadable(path: Path, why: str) -> ToolError:
    return ToolError(f"{path}: {why}; re-export the trace (torch.profiler export_chrome_trace) or pass another file")


def iter_trace_batches(
    path: str | Path, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any] | None]]:
    """Yield ``(events, meta)`` batches; ``meta`` (the keys besides ``traceEvents``) comes with the
    last batch, ``None`` before. Raises :class:`ToolError` on unreadable or invalid input."""
    path = Path(path)
    try:
        fh = _open(path)
    except FileNotFoundError:
        raise ToolError(f"{path}: no such file; check the path") from None
    except _READ_ERRORS as exc:
        raise _unreadable(path, f"cannot read ({exc.__class__.__name__})") from None
    with fh:
        yield from _batches(fh, path, chunk_bytes)


def _read(fh: Any, n: int, path: Path) -> bytes:
    try:
        return fh.read(n)
    except (EOFError, zlib.error, gzip.BadGzipFile):
        raise _unreadable(path, "the gzip stream is truncated or corrupt") from None
    except OSError as exc:
        raise _unreadable(path, f"cannot read ({exc})") from None


def json_depth(data: bytes) -> int:
    """How deeply JSON text nests, counted in C and numpy: brackets first (an upper bound, as
    brackets inside strings count too), exactly with the strings taken out when that bound is
    over ``MAX_DEPTH``."""
    for text in (data, None):
        if text is None:
            text = _STRING.sub(b'""', data)
        brackets = np.frombuffer(text.translate(None, _NOT_BRACKETS), dtype=np.uint8)
        if brackets.size <= MAX_DEPTH:
            return int(brackets.size)
        opens = (brackets == ord("[")) | (brackets == ord("{"))
        depth = int(np.cumsum(np.where(opens, 1, -1), dtype=np.int64).max(initial=0))
        if depth <= MAX_DEPTH:
            return depth
    return depth


def _loads_bounded(data: bytes, path: Path) -> Any:
    """Parse JSON that nests at most ``MAX_DEPTH`` levels (a C parser's stack and every recursive
    walk after it stay safe; Kineto writes a handful)."""
    if json_depth(data) > MAX_DEPTH:
        raise _unreadable(path, f"nested more than {MAX_DEPTH} levels deep, which torch.profiler never writes")
    return _loads(data)


def _replace_bad_text(data: bytes) -> bytes:
    """``data`` with bytes that are not UTF-8 and lone ``\\uD800``-style escapes turned into U+FFFD."""
    text = data.decode("utf-8", "replace").encode("utf-8")
    return _ESCAPES.sub(lambda m: m.group() if len(m.group()) != 6 else b"\\ufffd", text)


def _parse_whole(data: bytes, path: Path) -> tuple[Any, bool]:
    """(the parsed document, whether invalid Unicode in it was replaced to parse it). A UTF-8 byte
    order mark before the document is skipped."""
    try:
        return _loads_bounded(data, path), False
    except _JSONError:
        if not data.strip():
            raise _unreadable(path, "the file is empty") from None
    plain = data.removeprefix(b"\xef\xbb\xbf")
    fixed = _replace_bad_text(plain)
    if fixed != data:
        try:
            return _loads_bounded(fixed, path), fixed != plain
        except _JSONError:
            pass
    raise _unreadable(path, "not valid JSON (truncated or corrupt)")


def _split_whole(parsed: tuple[Any, bool], path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    doc, replaced = parsed
    if isinstance(doc, list):  # the bare-array chrome trace form
        events, meta = doc, {}
    elif isinstance(doc, dict) and isinstance(doc.get("traceEvents", None), list):
        events, meta = doc.pop("traceEvents"), doc
    else:
        raise _unreadable(path, "not a chrome trace (no traceEvents array)")
    if replaced:
        meta[TEXT_REPLACED] = True
    return [e for e in events if isinstance(e, dict)], meta


def _batches(fh: Any, path: Path, chunk_bytes: int) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any] | None]]:
    buf = _read(fh, chunk_bytes, path)
    more = _read(fh, 1, path)
    if not more:  # small file: one parse
        events, meta = _split_whole(_parse_whole(buf, path), path)
        yield events, meta
        return
    buf += more
    head_match = _HEAD.search(buf[: 1 << 20])
    if head_match is None:  # not Kineto's layout: read it all (correct, not bounded)
        rest = [buf]
        while True:
            piece = _read(fh, chunk_bytes, path)
            if not piece:
                break
            rest.append(piece)
        events, meta = _split_whole(_parse_whole(b"".join(rest), path), path)
        yield events, meta
        return
    head = buf[: head_match.end()]
    buf = buf[head_match.end() :]
    eof = False
    while not eof:
        piece = _read(fh, chunk_bytes, path)
        eof = not piece
        buf += piece
        if eof:
            break
        cut = _last_boundary(buf, max(0, len(buf) - len(piece) - 16))
        if cut is None:
            continue
        segment = buf[: cut.start() + 1]
        try:
            events = _loads_bounded(b"[" + segment + b"]", path)
        except _JSONError:
            continue  # cut inside a string or a nested object: wait for more input
        buf = buf[cut.end() - 1 :]
        yield [e for e in events if isinstance(e, dict)], None
    doc = _parse_whole(head + buf, path)
    events, meta = _split_whole(doc, path)
    yield events, meta


def _last_boundary(buf: bytes, start: int) -> re.Match[bytes] | None:
    """The last ``}, {`` in ``buf[start:]``: looked for in the tail first (events are short),
    the whole range only when the tail has none."""
    for lo in (max(start, len(buf) - (64 << 10)), start):
        last = None
        for last in _BOUNDARY.finditer(buf, lo):  # noqa: B007 - the loop only walks to the last match
            pass
        if last is not None:
            return last
        if lo == start:
            break
    return None


def iter_trace_segments(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[bytes, bool]]:
    """Yield ``(blob, final)``: ``blob`` is the JSON text of a run of whole events (``[...]``)
    cut at a top-level boundary, not yet parsed; the last item (``final``) is the rest of the
    document, parseable on its own. For parallel parsing: a cut that turns out to be inside a
    string makes that blob invalid JSON, and the caller falls back to :func:`iter_trace_batches`.
    Small files and non-Kineto layouts come as one final blob."""
    path = Path(path)
    try:
        fh = _open(path)
    except FileNotFoundError:
        raise ToolError(f"{path}: no such file; check the path") from None
    except _READ_ERRORS as exc:
        raise _unreadable(path, f"cannot read ({exc.__class__.__name__})") from None
    with fh:
        buf = _read(fh, chunk_bytes, path)
        more = _read(fh, 1, path)
        head_match = _HEAD.search(buf[: 1 << 20]) if more else None
        if head_match is None:
            rest = [buf, more]
            while more:
                more = _read(fh, chunk_bytes, path)
                rest.append(more)
            yield b"".join(rest), True
            return
        buf += more
        head = buf[: head_match.end()]
        buf = buf[head_match.end() :]
        while True:
            piece = _read(fh, chunk_bytes, path)
            if not piece:
                break
            buf += piece
            cut = _last_boundary(buf, max(0, len(buf) - len(piece) - 16))
            if cut is None:
                continue
            yield b"".join((b"[", memoryview(buf)[: cut.start() + 1], b"]")), False  # one copy of the events
            buf = buf[cut.end() - 1 :]
        yield head + buf, True


def parse_segment(blob: bytes, final: bool, path: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Parse one blob of :func:`iter_trace_segments`: (events, meta or None)."""
    if final:
        return _split_whole(_parse_whole(blob, path), path)
    events = _loads_bounded(blob, path)
    return [e for e in events if isinstance(e, dict)], None
