"""The record shape every Kineto event takes before the decoder reads it.

The decoder (:mod:`analyzers.decode`) reads events through one set of attribute names: ``ph``,
``cat``, ``name``, ``pid``, ``tid``, ``ts``, ``dur``, ``s`` and ``args``, whose attributes are
the keys of :data:`ARG_KEYS` (``args.correlation``, ``args.input_dims`` ...). Events arrive in
that shape in one of two ways:

* JSON text decoded straight into msgspec Structs (:func:`decode_events`,
  :func:`decode_document`), when msgspec is installed. Decoding into Structs skips every field
  the loader does not read (input strides, concrete inputs, ...) without building Python objects
  for them, which roughly halves parse time and memory against a generic JSON parse. Unknown or
  oddly typed input makes them raise, and the caller parses generically instead.
* plain dicts from a generic JSON parse, through :func:`from_dicts`: converted to Structs by
  ``msgspec.convert`` (in C) when msgspec is installed, else wrapped into :class:`DictEvent` /
  :class:`DictArgs` objects with the same attributes.

Decoded from JSON, ``args.input_dims`` and ``args.input_type`` hold raw JSON text
(``msgspec.Raw``): rows repeat the same shapes, so the decoder keys them by :func:`raw_key` and
decodes each distinct one once with :func:`raw_value`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

try:
    import msgspec
except ImportError:  # pragma: no cover - optional dependency
    msgspec = None  # type: ignore[assignment]

try:  # orjson is ~5x faster than json on Kineto's values
    from orjson import dumps as _dumps_bytes
except ImportError:  # pragma: no cover - depends on the environment
    import json as _json

    # the fallback takes only the value, which is all this module passes to orjson.dumps
    def _dumps_bytes(value: Any) -> bytes:  # type: ignore[misc]
        return _json.dumps(value, separators=(",", ":")).encode("utf-8")


__all__ = [
    "AVAILABLE",
    "ARG_KEYS",
    "RAW",
    "DictArgs",
    "DictEvent",
    "args_dict",
    "decode_document",
    "decode_events",
    "from_dicts",
    "raw_key",
    "raw_value",
]

AVAILABLE = msgspec is not None
# The type of the raw JSON text fields (None without msgspec): ``bytes()`` of one is its
# :func:`raw_key`.
RAW: type | None = msgspec.Raw if AVAILABLE else None

# attribute -> key in Kineto's "args" (``*_lc``: the spelling PyTorch 1.8/1.9 wrote)
ARG_KEYS = {
    "external_id": "External id",
    "external_id_lc": "external id",
    "correlation": "correlation",
    "input_dims": "Input Dims",
    "input_dims_lc": "Input dims",
    "input_type": "Input type",
    "flops": "flops",
    "nbytes": "bytes",
    "nbytes_mem": "Bytes",
    "stream": "stream",
    "device": "device",
    "grid": "grid",
    "block": "block",
    "registers": "registers per thread",
    "shared_memory": "shared memory",
    "occupancy": "est. achieved occupancy %",
    "coll_name": "Collective name",
    "coll_dtype": "dtype",
    "in_nelems": "In msg nelems",
    "out_nelems": "Out msg nelems",
    "group_size": "Group size",
    "pg_name": "Process Group Name",
    "pg_desc": "Process Group Description",
    "pg_ranks": "Process Group Ranks",
    "seq": "Seq",
    "coll_rank": "Rank",
    "in_split": "In split size",
    "out_split": "Out split size",
    "total_allocated": "Total Allocated",
    "total_reserved": "Total Reserved",
    "device_id": "Device Id",
    "device_type": "Device Type",
    "addr": "Addr",
    "meta_name": "name",
}

if AVAILABLE:

    class Args(msgspec.Struct, rename=ARG_KEYS, gc=False):
        external_id: Any = None
        external_id_lc: Any = None
        correlation: Any = None
        input_dims: msgspec.Raw = None  # type: ignore[assignment]  # raw JSON: decoded once per distinct value
        input_dims_lc: msgspec.Raw = None  # type: ignore[assignment]
        input_type: msgspec.Raw = None  # type: ignore[assignment]
        flops: Any = None
        nbytes: Any = None
        nbytes_mem: Any = None
        stream: Any = None
        device: Any = None
        grid: Any = None
        block: Any = None
        registers: Any = None
        shared_memory: Any = None
        occupancy: Any = None
        coll_name: Any = None
        coll_dtype: Any = None
        in_nelems: Any = None
        out_nelems: Any = None
        group_size: Any = None
        pg_name: Any = None
        pg_desc: Any = None
        pg_ranks: Any = None
        seq: Any = None
        coll_rank: Any = None
        in_split: Any = None
        out_split: Any = None
        total_allocated: Any = None
        total_reserved: Any = None
        device_id: Any = None
        device_type: Any = None
        addr: Any = None
        meta_name: Any = None

    class Event(msgspec.Struct, gc=False):  # no cycles: the collector need not track them
        ph: Any = None
        cat: Any = None
        name: Any = None
        pid: Any = None
        tid: Any = None
        ts: Any = None
        dur: Any = None
        s: Any = None
        args: Optional[Args] = None

    # The same record for values that are already Python objects (``msgspec.convert`` of
    # generic-parse dicts): shapes are plain lists there, not raw JSON text.
    PlainArgs = msgspec.defstruct("PlainArgs", [(attr, Any, None) for attr in ARG_KEYS], rename=ARG_KEYS, gc=False)
    PlainEvent = msgspec.defstruct(
        "PlainEvent",
        [(f, Any, None) for f in ("ph", "cat", "name", "pid", "tid", "ts", "dur", "s")]
        + [("args", Optional[PlainArgs], None)],
        gc=False,
    )

    _LIST = msgspec.json.Decoder(list[Event])
    _DOC = msgspec.json.Decoder(dict[str, msgspec.Raw])


def decode_events(blob: bytes) -> list[Any]:
    """A JSON array of events -> Event structs (raises on anything unexpected)."""
    return _LIST.decode(blob)


def decode_document(blob: bytes) -> tuple[list[Any], dict[str, Any]]:
    """A whole trace document -> (Event structs, the other top-level keys such as
    ``deviceProperties``); a bare JSON array of events has no other keys. Raises on anything
    unexpected (no ``traceEvents``, odd types, invalid JSON): the generic parse then decides."""
    if blob.lstrip()[:1] == b"[":
        return _LIST.decode(blob), {}
    parts = _DOC.decode(blob)
    events = _LIST.decode(parts.pop("traceEvents"))
    return events, {key: msgspec.json.decode(value) for key, value in parts.items()}


def args_dict(args: Any) -> dict[str, Any]:
    """The Kineto ``args`` keys that were set, as a plain dict (for the rare sparse rows)."""
    out = {}
    for attr, key in ARG_KEYS.items():
        value = getattr(args, attr)
        if value is not None and (attr not in _RAW_ATTRS or (value := raw_value(value)) is not None):
            out[key] = value
    return out


def raw_value(value: Any) -> Any:
    """The value of a shape field: ``msgspec.Raw`` JSON text is decoded (None when it nests too
    deeply to decode), anything else is already a value."""
    if AVAILABLE and type(value) is msgspec.Raw:
        try:
            return msgspec.json.decode(value)
        except RecursionError:
            return None
    return value


def raw_key(value: Any) -> Any:
    """A hashable key for a shape field: its JSON text."""
    if AVAILABLE and type(value) is msgspec.Raw:
        return bytes(value)
    try:
        return _dumps_bytes(value)
    except (TypeError, ValueError, OverflowError):  # not JSON-encodable: its repr
        return repr(value)


_RAW_ATTRS = frozenset({"input_dims", "input_dims_lc", "input_type"})
_ATTR_OF_KEY = {key: attr for attr, key in ARG_KEYS.items()}


class DictArgs:
    """A generic-parse ``args`` dict seen through the Struct's attribute names; keys that are not
    set read as None (the class attributes)."""

    def __init__(self, args: dict[str, Any]) -> None:
        attr_of = _ATTR_OF_KEY
        self.__dict__.update({attr_of[k]: v for k, v in args.items() if k in attr_of})


for _attr in ARG_KEYS:
    setattr(DictArgs, _attr, None)


class DictEvent:
    """A generic-parse event dict with the Struct's attribute names."""

    __slots__ = ("ph", "cat", "name", "pid", "tid", "ts", "dur", "s", "args")

    def __init__(self, e: dict[str, Any]) -> None:
        get: Callable[[str], Any] = e.get
        self.ph = get("ph")
        self.cat = get("cat")
        self.name = get("name")
        self.pid = get("pid")
        self.tid = get("tid")
        self.ts = get("ts")
        self.dur = get("dur")
        self.s = get("s")
        args = get("args")
        self.args = DictArgs(args) if type(args) is dict else None


def from_dicts(events: list[dict[str, Any]]) -> list[Any]:
    """Generic-parse event dicts in the record shape the decoder reads: converted to Structs by
    msgspec (in C) when installed and the values fit, else wrapped one by one."""
    if AVAILABLE:
        try:
            # PlainEvent is a class that msgspec.defstruct builds at run time: mypy sees a variable
            return msgspec.convert(events, list[PlainEvent])  # type: ignore[valid-type]
        except (msgspec.ValidationError, TypeError):  # e.g. ``args`` that is not a mapping
            pass
    return [DictEvent(e) for e in events]
