"""Typed decoding of Kineto events with msgspec (optional, when installed).

Decoding into these Structs skips every field the loader does not read (input strides,
concrete inputs, ...) without building Python objects for them, which roughly halves parse
time and memory against a generic JSON parse. Unknown or oddly typed input makes
:func:`decode_events` raise, and the caller falls back to the generic path.
"""
from __future__ import annotations

from typing import Any, Optional

try:
    import msgspec
except ImportError:  # pragma: no cover - optional dependency
    msgspec = None  # type: ignore[assignment]

__all__ = ["AVAILABLE", "decode_events", "args_dict", "raw_value"]

AVAILABLE = msgspec is not None

# attribute -> key in Kineto's "args"
ARG_KEYS = {
    "external_id": "External id",
    "correlation": "correlation",
    "input_dims": "Input Dims",
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

    class Args(msgspec.Struct, rename=ARG_KEYS, gc=False):  # type: ignore[call-arg,misc]
        external_id: Any = None
        correlation: Any = None
        input_dims: msgspec.Raw = None  # type: ignore[assignment]  # raw JSON: decoded once per distinct value
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

    _LIST = msgspec.json.Decoder(list[Event])


def decode_events(blob: bytes) -> list[Any]:
    """A JSON array of events -> Event structs (raises on anything unexpected)."""
    return _LIST.decode(blob)


def args_dict(args: Any) -> dict[str, Any]:
    """The Kineto ``args`` keys that were set, as a plain dict (for the rare sparse rows)."""
    out = {}
    for attr, key in ARG_KEYS.items():
        value = getattr(args, attr)
        if value is not None and (type(value) is not msgspec.Raw or (value := raw_value(value)) is not None):
            out[key] = value
    return out


def raw_value(raw: Any) -> Any:
    """The value of a ``msgspec.Raw`` field (``input_dims`` / ``input_type`` are kept raw: the
    loader decodes each distinct one once)."""
    return msgspec.json.decode(raw) if raw is not None else None
