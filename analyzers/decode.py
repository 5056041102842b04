"""Kineto events -> numpy columns: the one decoder of the loader.

:class:`EventColumns` takes batches of event records (the attribute shape of
:mod:`analyzers.kineto_structs`: msgspec Structs, or generic-parse dicts wrapped by
``from_dicts``) and turns each batch into numpy blocks at once, so Python objects stay bounded
by one batch. Names are interned; times become integer nanoseconds exactly (the microsecond
decimals Kineto writes have three places); rows with identical shape args or kernel launch
configs share one ``extra`` dict (treat ``extra`` values as read-only). Linking rows to each
other is :mod:`analyzers.link`'s job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from stallscope.analyzers.kineto_structs import RAW, args_dict, from_dicts, raw_key, raw_value
from stallscope.analyzers.model import EventTable, empty_table
from stallscope.analyzers.vocab import (
    COLLECTIVE_ARG_KEYS,
    GPU_ARG_KINDS,
    MEMORY_ARG_KEYS,
    MEMORY_EVENT,
    SKIP,
    Kind,
    category_kind,
)
from stallscope.profiler.common import MAX_DEPTH

try:
    from orjson import dumps as _dumps
except ImportError:  # pragma: no cover - depends on the environment
    import json as _json

    def _dumps(value: Any) -> str:  # type: ignore[misc]
        return _json.dumps(value, separators=(",", ":"))


__all__ = ["MAX_US", "EventColumns", "exact_ns", "times_ns"]

_GPU_ARG_INTS = frozenset(int(k) for k in GPU_ARG_KINDS)
_COLLECTIVE_OP = "record_param_comms"


# Microsecond timestamps beyond this are not times (epoch microseconds reach it in 2096): the
# bound keeps ``ts_ns + dur_ns`` of any two accepted values inside int64.
MAX_US = 4.0e15


def exact_ns(values: list[Any]) -> np.ndarray:
    """Microsecond numbers (floats or strings) -> integer nanoseconds, exactly; values that are
    not finite numbers within ``MAX_US`` become 0 (:func:`times_ns` says which).

    Splitting off the integer part keeps the float error of the fraction far below half a
    nanosecond for any trace timestamp (< 2**43 us), so rounding recovers Kineto's decimals.
    """
    return times_ns(values)[0]


def times_ns(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`exact_ns` of ``values``, which of them were usable times)."""
    try:
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1:  # lists of equal length where numbers belong
            raise ValueError(arr.shape)
    except (TypeError, ValueError, OverflowError):  # odd values: one at a time
        ns = [_one_ns(v) for v in values]
        ok = np.asarray([v is not None for v in ns], dtype=bool)
        return np.asarray([v or 0 for v in ns], dtype=np.int64), ok
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64), np.ones(0, dtype=bool)
    ok = np.isfinite(arr) & (np.abs(arr) <= MAX_US)
    if not ok.all():
        arr = np.where(ok, arr, 0.0)
    whole = np.floor(arr)
    return whole.astype(np.int64) * 1000 + np.rint((arr - whole) * 1000.0).astype(np.int64), ok


def _one_ns(value: Any) -> int | None:
    try:
        d = Decimal(str(value))
        if not d.is_finite() or abs(d) > MAX_US:
            return None
        return int((d * 1000).to_integral_value())
    except (InvalidOperation, ValueError, OverflowError, TypeError, RecursionError):
        return None


def _int_column(values: list[Any], dtype: Any, outside: Any = None) -> np.ndarray:
    """Python ints as a numpy column; one outside the dtype's range (ids past 2^63) becomes -1,
    or ``outside(value)``. The range is checked only when the bulk conversion fails."""
    try:
        return np.asarray(values, dtype=dtype)
    except OverflowError:
        lo, hi = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
        return np.asarray([v if lo <= v <= hi else (outside(v) if outside else -1) for v in values], dtype=dtype)


def _float_column(values: list[Any]) -> np.ndarray:
    """Numbers as float64; an int too large for a float becomes NaN."""
    try:
        return np.asarray(values, dtype=np.float64)
    except OverflowError:
        return np.asarray([v if abs(v) < 1e308 else math.nan for v in values], dtype=np.float64)


class EventColumns:
    """Accumulates the events of one trace, batch by batch, into per-batch numpy blocks."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.name_ids: dict[str, int] = {}
        self.blocks: list[dict[str, np.ndarray]] = []
        self.extra: dict[int, dict[str, Any]] = {}
        self.rows = 0
        self.seen = 0  # event records given to add(), usable or not
        self.dropped = 0  # rows left out for a timestamp that is not a usable time
        self.process_names: dict[Any, str] = {}
        self.thread_names: dict[tuple[Any, Any], str] = {}
        # category string as written -> kind int (SKIP: dropped), filled once per distinct
        # spelling, so letter case costs nothing per event
        self.categories: dict[str | None, int] = {None: int(Kind.OTHER)}
        self._ids: dict[Any, int] = {}
        self._shapes: dict[Any, dict[str, Any]] = {}  # identical shape args share one (read-only) dict
        self._launches: dict[Any, dict[str, Any]] = {}  # same for kernel launch configs

    def intern(self, name: str) -> int:
        """The id of ``name`` in :attr:`names` (added when new)."""
        i = self.name_ids.get(name)
        if i is None:
            i = self.name_ids[name] = len(self.names)
            self.names.append(name)
        return i

    def _num(self, value: Any) -> int:
        """pid / tid as an int; strings, and numbers outside int64, get stable negative ids."""
        if value is None:
            return -1
        if isinstance(value, int) and -(2**63) <= value < 2**63:
            return int(value)
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            return int(value)
        if type(value) is str:  # PyTorch 1.8/1.9 write tids as text: "25738", "stream 7"
            m = _NUMERIC_ID.match(value)
            if m and len(m.group(1)) < 19:
                return int(m.group(1))
        try:
            i = self._ids.get(value)
        except TypeError:  # unhashable oddities: keyed by their text
            value = _label(value)
            i = self._ids.get(value)
        if i is None:
            i = self._ids[value] = -2 - len(self._ids)
        return i

    def add_dicts(self, events: list[dict[str, Any]]) -> None:
        """Add a batch of generic-parse event dicts."""
        self.add(from_dicts(events))

    def add(self, events: Iterable[Any]) -> None:
        """Add a batch of event records (attribute shape of ``kineto_structs``) as one block."""
        if isinstance(events, list):
            self.seen += len(events)
        kind: list[int] = []
        name: list[int] = []
        ts: list[Any] = []
        dur: list[Any] = []
        pid: list[int] = []
        tid: list[int] = []
        stream: list[int] = []
        device: list[int] = []
        corr: list[int] = []
        ext: list[int] = []
        flops: list[float] = []
        nbytes: list[int] = []
        extra = self.extra
        shapes = self._shapes
        launches = self._launches
        name_ids = self.name_ids
        names = self.names
        num = self._num
        kind_of_cat = self.categories
        skip = SKIP
        gpu_kinds = _GPU_ARG_INTS
        raw: Any = RAW
        nan = math.nan
        row = self.rows
        K_CPU, K_RT, K_PY, K_OTHER = int(Kind.CPU_OP), int(Kind.RUNTIME), int(Kind.PYTHON), int(Kind.OTHER)
        K_KERNEL = int(Kind.KERNEL)
        for e in events:
            ph = e.ph
            if ph == "X":
                cat = e.cat
                if type(cat) is str or cat is None:
                    k = kind_of_cat.get(cat, None)
                    if k is None:
                        k = kind_of_cat[cat] = category_kind(cat)
                    if k == skip:
                        continue
                else:
                    k = K_OTHER
                d = e.dur if e.dur is not None else 0
            elif ph == "i" or ph == "I":
                if e.s == "g" or e.cat is None and e.name != MEMORY_EVENT:
                    continue
                k = K_OTHER
                d = 0
            elif ph == "M":
                self._meta(e)
                continue
            else:
                continue
            t = e.ts
            if t is None:
                continue
            nm = e.name
            if type(nm) is not str:
                nm = _label(nm)
            i = name_ids.get(nm)
            if i is None:
                i = name_ids[nm] = len(names)
                names.append(nm)
            p = e.pid
            q = e.tid
            kind.append(k)
            name.append(i)
            ts.append(t)
            dur.append(d)
            pid.append(p if type(p) is int else num(p))
            tid.append(q if type(q) is int else num(q))
            a = e.args
            if a is None or k == K_PY:
                corr.append(-1)
                ext.append(-1)
                flops.append(nan)
                nbytes.append(-1)
                stream.append(-1)
                device.append(-1)
                row += 1
                continue
            c = a.correlation
            x = a.external_id
            if x is None:  # PyTorch 1.8/1.9 runtime and GPU rows: "external id"
                x = a.external_id_lc
            corr.append(c if type(c) is int else -1)
            ext.append(x if type(x) is int else -1)
            if k == K_CPU:
                fl = a.flops
                flops.append(fl if isinstance(fl, (int, float)) else nan)
                nbytes.append(-1)
                stream.append(-1)
                device.append(-1)
                if a.coll_name is not None or nm == _COLLECTIVE_OP:
                    sparse = _sparse_args(k, nm, args_dict(a))
                    if sparse:
                        extra[row] = sparse
                elif (dims := a.input_dims if a.input_dims is not None else a.input_dims_lc) is not None:
                    # (PyTorch 1.8 wrote "Input dims".) The shapes' cache key is built here, raw_key
                    # inlined: one shared dict per distinct pair, and most CPU ops hit the cache.
                    ty = a.input_type
                    key = (
                        bytes(dims) if type(dims) is raw else raw_key(dims),
                        None if ty is None else bytes(ty) if type(ty) is raw else raw_key(ty),
                    )
                    sparse = shapes.get(key)
                    if sparse is None:
                        sparse = shapes[key] = _shape_args(dims, ty)
                    if sparse:
                        extra[row] = sparse
                row += 1
                continue
            flops.append(nan)
            b = a.nbytes if a.nbytes is not None else (a.nbytes_mem if a.nbytes_mem is not None else -1)
            nbytes.append(b if type(b) is int else -1)
            if k in gpu_kinds:
                s_ = a.stream if a.stream is not None else q
                dv = a.device if a.device is not None else p
                stream.append(s_ if type(s_) is int else -1)
                device.append(dv if type(dv) is int else -1)
            else:
                stream.append(-1)
                device.append(-1)
            if (
                k == K_KERNEL
                and (a.input_dims is None or raw_value(a.input_dims) is None)
                and a.coll_name is None
                and nm != _COLLECTIVE_OP
            ):
                if a.grid is not None:
                    launch = _kernel_launch_args(a, launches)
                    if launch:
                        extra[row] = launch
            elif k != K_RT and (
                a.grid is not None
                or a.input_dims is not None
                or a.coll_name is not None
                or a.total_allocated is not None
                or a.device_id is not None
            ):
                sparse = _sparse_args(k, nm, args_dict(a))
                if sparse:
                    extra[row] = _share(shapes, sparse)
            row += 1
        if row == self.rows:
            return
        ts_ns, usable = times_ns(ts)
        block = {
            "kind": np.asarray(kind, dtype=np.int8),
            "name": np.asarray(name, dtype=np.int32),
            "ts_ns": ts_ns,
            "dur_ns": np.maximum(exact_ns(dur), 0),
            "pid": _int_column(pid, np.int64, num),
            "tid": _int_column(tid, np.int64, num),
            "stream": _int_column(stream, np.int32),
            "device": _int_column(device, np.int32),
            "correlation": _int_column(corr, np.int64),
            "external_id": _int_column(ext, np.int64),
            "flops": _float_column(flops),
            "bytes": _int_column(nbytes, np.int64),
        }
        if not usable.all():
            row = self._drop_rows(block, usable, row)
            if row == self.rows:
                return
        self.rows = row
        self.blocks.append(block)

    def _drop_rows(self, block: dict[str, np.ndarray], keep: np.ndarray, end: int) -> int:
        """Leave out the rows of ``block`` (rows ``self.rows`` to ``end``) where ``keep`` is False,
        their ``extra`` entries with them; returns the new end."""
        base, kept = self.rows, np.flatnonzero(keep)
        for key in block:
            block[key] = block[key][kept]
        extra = self.extra
        moved = {base + i: extra.pop(base + int(r)) for i, r in enumerate(kept) if base + int(r) in extra}
        for r in range(base, end):
            extra.pop(r, None)
        extra.update(moved)
        self.dropped += int(keep.size - kept.size)
        return base + int(kept.size)

    def _meta(self, e: Any) -> None:
        """Process and thread names from ``ph: M`` events."""
        a = e.args
        if a is None or a.meta_name is None:
            return
        if e.name == "process_name":
            self.process_names[_key(e.pid)] = _label(a.meta_name)
        elif e.name == "thread_name":
            self.thread_names[(_key(e.pid), _key(e.tid))] = _label(a.meta_name)

    def merge(self, part: EventColumns) -> None:
        """Append a batch parsed elsewhere (its own name ids, row numbers, ids of odd pids / tids
        and shared ``extra`` dicts) after these rows, as if this object had parsed it."""
        if part.blocks:
            remap = np.asarray([self.intern(n) for n in part.names], dtype=np.int32)
            ids = self._id_remap(part)
            for block in part.blocks:
                block["name"] = remap[block["name"]] if remap.size else block["name"]
                if ids is not None:
                    for col in ("pid", "tid"):
                        odd = block[col] <= -2
                        if odd.any():
                            block[col][odd] = ids[-block[col][odd] - 2]
                self.blocks.append(block)
            same = self._shared_extras(part)
            self.extra.update({self.rows + k: same.get(id(v), v) for k, v in part.extra.items()})
            self.rows += part.rows
        self.seen += part.seen
        self.dropped += part.dropped
        self.process_names.update(part.process_names)
        self.thread_names.update(part.thread_names)
        self.categories.update(part.categories)

    def _id_remap(self, part: EventColumns) -> np.ndarray | None:
        """The ids these columns give the odd pids / tids of ``part`` (indexed by ``-id - 2``);
        new ones numbered in the order ``part`` met them, as one parse of both would."""
        if not part._ids:
            return None
        return np.asarray([self._num(value) for value in part._ids], dtype=np.int64)

    def _shared_extras(self, part: EventColumns) -> dict[int, dict[str, Any]]:
        """``id`` of each shared ``extra`` dict of ``part`` -> the equal dict these columns share
        already (same cache key, same content), so rows of both parts share one object; the
        other cache entries of ``part`` are adopted."""
        same: dict[int, dict[str, Any]] = {}
        for mine, theirs in ((self._shapes, part._shapes), (self._launches, part._launches)):
            for key, d in theirs.items():
                have = mine.setdefault(key, d)
                if have is not d:
                    same[id(d)] = have
        return same

    def table(self) -> EventTable:
        """The columns as one :class:`EventTable` in file order (links and steps unset: -1)."""
        if not self.blocks:
            return empty_table(self.names)
        cols: dict[str, np.ndarray] = {}
        for k in list(self.blocks[0]):  # one column at a time: peak = table + one column's blocks
            cols[k] = np.concatenate([b.pop(k) for b in self.blocks])
        self.blocks = []
        n = cols["kind"].shape[0]
        return EventTable(
            names=self.names,
            step=np.full(n, -1, dtype=np.int32),
            launch_of=np.full(n, -1, dtype=np.int64),
            op_of=np.full(n, -1, dtype=np.int64),
            extra=self.extra,
            **cols,
        )


_NUMERIC_ID = re.compile(r"^(?:stream )?(\d+)$")


def _key(value: Any) -> Any:
    """A pid / tid as a dict key: itself when hashable, else its (bounded) repr."""
    return value if isinstance(value, (int, float, str, type(None))) else _label(value)


def _label(value: Any) -> str:
    """A process or thread name as text, bounded; nested values that repr cannot walk give '?'."""
    try:
        return str(value)[:200]
    except RecursionError:
        return "?"


def _bounded(value: Any) -> Any:
    """``value``, or None when it nests deeper than ``MAX_DEPTH`` (no code that walks it
    recursively could follow: the arg is left out). Walked without recursion."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return None
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return value


def _shape_args(dims: Any, types: Any) -> dict[str, Any]:
    """The ``input_dims`` / ``input_types`` dict of a CPU op ({} when the dims are JSON null)."""
    value, type_value = _bounded(raw_value(dims)), _bounded(raw_value(types))
    if value is None:
        return {}
    if type_value is None:
        return {"input_dims": value}
    return {"input_dims": value, "input_types": type_value}


def _share(cache: dict[Any, dict[str, Any]], sparse: dict[str, Any]) -> dict[str, Any]:
    """One dict object for every row with the same sparse args."""
    try:
        return cache.setdefault(_dumps(sparse), sparse)
    except (TypeError, ValueError, OverflowError):
        return sparse


def _kernel_launch_args(a: Any, cache: dict[Any, dict[str, Any]]) -> dict[str, Any] | None:
    """What :func:`_sparse_args` keeps of a kernel's args that have a grid and no shapes or
    collective, without building the args dict; one shared dict per launch config."""
    grid, block, regs, smem, occ = a.grid, a.block, a.registers, a.shared_memory, a.occupancy
    try:
        key = (
            tuple(grid) if type(grid) is list else grid,
            tuple(block) if type(block) is list else block,
            regs,
            smem,
            occ,
        )
        hit = cache.get(key)
    except TypeError:  # unhashable oddities: the generic path
        key, hit = None, None
    if hit is not None:
        return hit
    out = _sparse_args(
        int(Kind.KERNEL),
        "",
        {
            k: v
            for k, v in (
                ("grid", grid),
                ("block", block),
                ("registers per thread", regs),
                ("shared memory", smem),
                ("est. achieved occupancy %", occ),
            )
            if v is not None
        },
    )
    if out is not None and key is not None:
        cache[key] = out
    return out


def _sparse_args(kind: int, name: str, args: dict[str, Any]) -> dict[str, Any] | None:
    """The args a row keeps in ``extra`` (shapes, launch config, collective, allocator sample);
    values nested deeper than ``MAX_DEPTH`` are left out."""
    args = {k: v for k, v in args.items() if _bounded(v) is not None}
    out: dict[str, Any] | None = None
    dims = args.get("Input Dims")
    if dims is not None:
        out = {"input_dims": dims}
        types = args.get("Input type")
        if types is not None:
            out["input_types"] = types
    if kind == Kind.KERNEL:
        grid = args.get("grid")
        if grid is not None:
            out = out or {}
            out["grid"] = grid
            out["block"] = args.get("block")
            for key, short in (
                ("registers per thread", "registers"),
                ("shared memory", "shared_memory"),
                ("est. achieved occupancy %", "occupancy_pct"),
            ):
                if key in args:
                    out[short] = args[key]
    if "Collective name" in args or name == _COLLECTIVE_OP:
        coll = {short: args[key] for key, short in COLLECTIVE_ARG_KEYS.items() if key in args}
        if coll:
            out = out or {}
            out["collective"] = coll
    if kind == Kind.OTHER and name == MEMORY_EVENT:
        mem = {k: args[k] for k in MEMORY_ARG_KEYS if k in args}
        if mem:
            out = out or {}
            out["memory"] = mem
    return out
