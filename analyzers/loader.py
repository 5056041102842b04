"""Load Kineto traces and our run directories into the columnar model (``analyzers.model``).

Entry point: :func:`load_context(target)` accepts

* a run directory written by ``stallscope profile`` (``meta.yaml`` and ``rank<R>/trace.json.gz``
  with ``steps.csv``, ``nvml.csv``, ``host.csv``, ``rank.yaml``; ``patches.yaml`` when present),
* a single trace from any torch.profiler user (``*.json``, ``*.json.gz``, including
  ``tensorboard_trace_handler`` names such as ``host_pid.1712345.pt.trace.json.gz``),
* a folder of per-rank traces (HTA's layout; the rank comes from ``distributedInfo.rank`` in the
  trace, else from ``rank<N>`` in the file name).

One pass over the events builds numpy columns; names are interned; times become integer
nanoseconds exactly (the microsecond decimals Kineto writes have three places). GPU rows are
linked to the runtime call that launched them (``correlation``) and to the CPU op around that
launch (``External id``, else time containment on the launching thread). No torch import.

Memory: large traces are parsed in batches (``analyzers.tracefile``), each batch becomes numpy
blocks at once, and rows with identical shape args share one ``extra`` dict (treat ``extra``
values as read-only).
"""
from __future__ import annotations

import contextlib
import csv
import gc
import math
import os
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from stallscope.analyzers.compact import FULL_RANKS, compact_rank
from stallscope.analyzers.model import AnalysisContext, EventTable, Kind, RankData
from stallscope.analyzers.tracefile import iter_trace_batches

try:
    from orjson import dumps as _dumps
except ImportError:  # pragma: no cover
    import json as _json

    def _dumps(value: Any) -> str:
        return _json.dumps(value, separators=(",", ":"))
from stallscope.profiler.common import ToolError, read_yaml

__all__ = [
    "load_context",
    "load_trace",
    "find_traces",
    "empty_table",
    "is_sync_call",
    "is_data_wait",
    "is_comm_kernel",
    "SYNC_CALLS",
]

_KIND_OF_CAT = {
    "cpu_op": Kind.CPU_OP,
    "operator": Kind.CPU_OP,
    "cuda_runtime": Kind.RUNTIME,
    "cuda_driver": Kind.RUNTIME,
    "runtime": Kind.RUNTIME,
    "kernel": Kind.KERNEL,
    "gpu_memcpy": Kind.MEMCPY,
    "gpu_memset": Kind.MEMSET,
    "user_annotation": Kind.ANNOTATION,
    "gpu_user_annotation": Kind.GPU_ANNOTATION,
    "python_function": Kind.PYTHON,
}
_KIND_INT = {k: int(v) for k, v in _KIND_OF_CAT.items()}
_SKIPPED_CATS = frozenset({"Trace", "ac2g", "fwdbwd", "overhead"})
_GPU_ARG_KINDS = (Kind.KERNEL, Kind.MEMCPY, Kind.MEMSET, Kind.GPU_ANNOTATION)
_GPU_ARG_INTS = frozenset(int(k) for k in _GPU_ARG_KINDS)

SYNC_CALLS = frozenset(
    {
        "cudaStreamSynchronize",
        "cudaDeviceSynchronize",
        "cudaEventSynchronize",
        "cudaMemcpy",
        "cudaMemcpy2D",
        "cudaMemset",
        "cuStreamSynchronize",
        "cuCtxSynchronize",
        "cuEventSynchronize",
        "cuMemcpyDtoH_v2",
        "cuMemcpyDtoH",
        "cuMemcpyHtoD_v2",
    }
)

_COLLECTIVE_KEYS = {
    "Collective name": "name",
    "dtype": "dtype",
    "In msg nelems": "in_nelems",
    "Out msg nelems": "out_nelems",
    "Group size": "group_size",
    "Process Group Name": "pg_name",
    "Process Group Description": "pg_desc",
    "Process Group Ranks": "pg_ranks",
    "Seq": "seq",
    "Rank": "rank",
    "In split size": "in_split",
    "Out split size": "out_split",
}

TRACE_SUFFIXES = (".json", ".json.gz")


def is_sync_call(name: str) -> bool:
    """Runtime calls that block the host until the GPU catches up."""
    return name in SYNC_CALLS


def is_data_wait(name: str) -> bool:
    """The DataLoader's ``__next__`` range that torch.profiler records."""
    return name.startswith("enumerate(DataLoader)")


def is_comm_kernel(name: str) -> bool:
    """Communication kernels (NCCL/RCCL/NVSHMEM) by name, as HTA classifies them."""
    low = name.lower()
    return "nccl" in low or "rccl" in low or "nvshmem" in low or low.startswith("c10d::") or "gloo" in low


def is_comm_op(name: str) -> bool:
    """CPU-side communication ops (gloo on CPU, c10d wrappers, record_param_comms)."""
    return name == "record_param_comms" or name.startswith(("c10d::", "gloo:", "nccl:")) or "allreduce" in name.lower()


# --------------------------------------------------------------------------- time


def _exact_ns(values: list[Any]) -> np.ndarray:
    """Microsecond numbers (floats or strings) -> integer nanoseconds, exactly.

    Splitting off the integer part keeps the float error of the fraction far below half a
    nanosecond for any trace timestamp (< 2**43 us), so rounding recovers Kineto's decimals.
    """
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray([_one_ns(v) for v in values], dtype=np.int64)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    bad = ~np.isfinite(arr) | (np.abs(arr) > 9.0e15)
    if bad.any():
        arr = np.where(bad, 0.0, arr)
    whole = np.floor(arr)
    return whole.astype(np.int64) * 1000 + np.rint((arr - whole) * 1000.0).astype(np.int64)


def _one_ns(value: Any) -> int:
    try:
        d = Decimal(str(value))
        if not d.is_finite():
            return 0
        return int((d * 1000).to_integral_value())
    except (InvalidOperation, ValueError, OverflowError):
        return 0


# --------------------------------------------------------------------------- parsing


class _Columns:
    """Accumulates one pass of events into per-batch numpy blocks (bounded Python objects)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.name_ids: dict[str, int] = {}
        self.blocks: list[dict[str, np.ndarray]] = []
        self.extra: dict[int, dict[str, Any]] = {}
        self.rows = 0
        self.process_names: dict[Any, str] = {}
        self.thread_names: dict[tuple[Any, Any], str] = {}
        self._ids: dict[Any, int] = {}
        self._shapes: dict[Any, dict[str, Any]] = {}  # identical shape args share one (read-only) dict
        self._launches: dict[Any, dict[str, Any]] = {}  # same for kernel launch configs

    def _intern(self, name: str) -> int:
        i = self.name_ids.get(name)
        if i is None:
            i = self.name_ids[name] = len(self.names)
            self.names.append(name)
        return i

    def _num(self, value: Any) -> int:
        """pid / tid as an int; strings get stable negative ids."""
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        i = self._ids.get(value)
        if i is None:
            i = self._ids[value] = -2 - len(self._ids)
        return i

    def add(self, events: list[dict[str, Any]]) -> None:
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
        name_ids = self.name_ids
        names = self.names
        num = self._num
        kind_of_cat = _KIND_INT
        skipped = _SKIPPED_CATS
        nan = math.nan
        row = self.rows
        K_CPU, K_RT, K_PY, K_OTHER = int(Kind.CPU_OP), int(Kind.RUNTIME), int(Kind.PYTHON), int(Kind.OTHER)
        gpu_kinds = _GPU_ARG_INTS
        for e in events:
            ph = e.get("ph")
            if ph == "X":
                cat = e.get("cat")
                if cat in skipped:
                    continue
                k = kind_of_cat.get(cat, K_OTHER)
                d = e.get("dur", 0)
            elif ph == "i" or ph == "I":
                if e.get("s") == "g" or e.get("cat") is None and e.get("name") != "[memory]":
                    continue
                k = K_OTHER
                d = 0
            elif ph == "M":
                self._meta(e)
                continue
            else:
                continue
            t = e.get("ts")
            if t is None:
                continue
            nm = e.get("name")
            if type(nm) is not str:
                nm = str(nm)
            i = name_ids.get(nm)
            if i is None:
                i = name_ids[nm] = len(names)
                names.append(nm)
            p = e.get("pid", -1)
            q = e.get("tid", -1)
            kind.append(k)
            name.append(i)
            ts.append(t)
            dur.append(d)
            pid.append(p if type(p) is int else num(p))
            tid.append(q if type(q) is int else num(q))
            args = e.get("args")
            if not args or type(args) is not dict or k == K_PY:
                corr.append(-1)
                ext.append(-1)
                flops.append(nan)
                nbytes.append(-1)
                stream.append(-1)
                device.append(-1)
                row += 1
                continue
            c = args.get("correlation", -1)
            x = args.get("External id", -1)
            corr.append(c if type(c) is int else -1)
            ext.append(x if type(x) is int else -1)
            if k == K_CPU:
                fl = args.get("flops")
                flops.append(float(fl) if isinstance(fl, (int, float)) else nan)
                nbytes.append(-1)
                stream.append(-1)
                device.append(-1)
                if "Collective name" in args or nm == "record_param_comms":
                    sparse = _sparse_args(k, nm, args)
                    if sparse:
                        extra[row] = sparse
                elif "Input Dims" in args:
                    dims, types = args["Input Dims"], args.get("Input type")
                    try:
                        key = _dumps((dims, types))
                    except (TypeError, ValueError, OverflowError):
                        key = object()
                    sparse = shapes.get(key)
                    if sparse is None:
                        sparse = shapes[key] = {"input_dims": dims} if types is None else {"input_dims": dims, "input_types": types}
                    extra[row] = sparse
                row += 1
                continue
            flops.append(nan)
            b = args.get("bytes", args.get("Bytes", -1))
            nbytes.append(b if type(b) is int else -1)
            if k in gpu_kinds:
                s_ = args.get("stream", q)
                dv = args.get("device", p)
                stream.append(s_ if type(s_) is int else -1)
                device.append(dv if type(dv) is int else -1)
            else:
                stream.append(-1)
                device.append(-1)
            if k != K_RT:
                sparse = _sparse_args(k, nm, args)
                if sparse:
                    extra[row] = _share(shapes, sparse)  # kernels repeat their launch config
            row += 1
        if row == self.rows:
            return
        self.rows = row
        self.blocks.append(
            {
                "kind": np.asarray(kind, dtype=np.int8),
                "name": np.asarray(name, dtype=np.int32),
                "ts_ns": _exact_ns(ts),
                "dur_ns": np.maximum(_exact_ns(dur), 0),
                "pid": np.asarray(pid, dtype=np.int64),
                "tid": np.asarray(tid, dtype=np.int64),
                "stream": np.asarray(stream, dtype=np.int32),
                "device": np.asarray(device, dtype=np.int32),
                "correlation": np.asarray(corr, dtype=np.int64),
                "external_id": np.asarray(ext, dtype=np.int64),
                "flops": np.asarray(flops, dtype=np.float64),
                "bytes": np.asarray(nbytes, dtype=np.int64),
            }
        )

    def add_structs(self, events: list[Any]) -> None:
        """Like :meth:`add`, for ``analyzers.kineto_structs.Event`` objects (msgspec)."""
        from stallscope.analyzers.kineto_structs import args_dict, raw_value

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
        name_ids = self.name_ids
        names = self.names
        num = self._num
        kind_of_cat = _KIND_INT
        skipped = _SKIPPED_CATS
        nan = math.nan
        row = self.rows
        K_CPU, K_RT, K_PY, K_OTHER = int(Kind.CPU_OP), int(Kind.RUNTIME), int(Kind.PYTHON), int(Kind.OTHER)
        K_KERNEL = int(Kind.KERNEL)
        launches = self._launches
        gpu_kinds = _GPU_ARG_INTS
        for e in events:
            ph = e.ph
            if ph == "X":
                cat = e.cat
                if cat in skipped:
                    continue
                k = kind_of_cat.get(cat, K_OTHER) if type(cat) is str or cat is None else K_OTHER
                d = e.dur if e.dur is not None else 0
            elif ph == "i" or ph == "I":
                if e.s == "g" or e.cat is None and e.name != "[memory]":
                    continue
                k = K_OTHER
                d = 0
            elif ph == "M":
                a = e.args
                if a is not None and a.meta_name is not None:
                    if e.name == "process_name":
                        self.process_names[e.pid] = str(a.meta_name)
                    elif e.name == "thread_name":
                        self.thread_names[(e.pid, e.tid)] = str(a.meta_name)
                continue
            else:
                continue
            t = e.ts
            if t is None:
                continue
            nm = e.name
            if type(nm) is not str:
                nm = str(nm)
            i = name_ids.get(nm)
            if i is None:
                i = name_ids[nm] = len(names)
                names.append(nm)
            p = e.pid if e.pid is not None else -1
            q = e.tid if e.tid is not None else -1
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
            corr.append(c if type(c) is int else -1)
            ext.append(x if type(x) is int else -1)
            if k == K_CPU:
                fl = a.flops
                flops.append(float(fl) if isinstance(fl, (int, float)) else nan)
                nbytes.append(-1)
                stream.append(-1)
                device.append(-1)
                if a.coll_name is not None or nm == "record_param_comms":
                    sparse = _sparse_args(k, nm, args_dict(a))
                    if sparse:
                        extra[row] = sparse
                elif a.input_dims is not None:
                    raw_types = a.input_type
                    key = (bytes(a.input_dims), bytes(raw_types) if raw_types is not None else None)
                    sparse = shapes.get(key)
                    if sparse is None:
                        dims, types = raw_value(a.input_dims), raw_value(raw_types)
                        if dims is None:
                            sparse = shapes[key] = {}
                        else:
                            sparse = shapes[key] = {"input_dims": dims} if types is None else {"input_dims": dims, "input_types": types}
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
            if k == K_KERNEL and (a.input_dims is None or raw_value(a.input_dims) is None) and a.coll_name is None \
                    and nm != "record_param_comms":
                if a.grid is not None:  # kernels repeat their launch config: one dict per config
                    launch = _kernel_launch_args(a, launches)
                    if launch:
                        extra[row] = launch
            elif k != K_RT and (a.grid is not None or a.input_dims is not None or a.coll_name is not None
                                or a.total_allocated is not None or a.device_id is not None):
                sparse = _sparse_args(k, nm, args_dict(a))
                if sparse:
                    extra[row] = _share(shapes, sparse)  # kernels repeat their launch config
            row += 1
        if row == self.rows:
            return
        self.rows = row
        self.blocks.append(
            {
                "kind": np.asarray(kind, dtype=np.int8),
                "name": np.asarray(name, dtype=np.int32),
                "ts_ns": _exact_ns(ts),
                "dur_ns": np.maximum(_exact_ns(dur), 0),
                "pid": np.asarray(pid, dtype=np.int64),
                "tid": np.asarray(tid, dtype=np.int64),
                "stream": np.asarray(stream, dtype=np.int32),
                "device": np.asarray(device, dtype=np.int32),
                "correlation": np.asarray(corr, dtype=np.int64),
                "external_id": np.asarray(ext, dtype=np.int64),
                "flops": np.asarray(flops, dtype=np.float64),
                "bytes": np.asarray(nbytes, dtype=np.int64),
            }
        )

    def _meta(self, e: dict[str, Any]) -> None:
        args = e.get("args") or {}
        if not isinstance(args, dict):
            return
        if e.get("name") == "process_name" and "name" in args:
            self.process_names[e.get("pid")] = str(args["name"])
        elif e.get("name") == "thread_name" and "name" in args:
            self.thread_names[(e.get("pid"), e.get("tid"))] = str(args["name"])

    def table(self) -> EventTable:
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


def _share(cache: dict[Any, dict[str, Any]], sparse: dict[str, Any]) -> dict[str, Any]:
    """One dict object for every row with the same sparse args."""
    try:
        return cache.setdefault(_dumps(sparse), sparse)
    except (TypeError, ValueError, OverflowError):
        return sparse


def _kernel_launch_args(a: Any, cache: dict[Any, dict[str, Any]]) -> dict[str, Any] | None:
    """What :func:`_sparse_args` keeps of a kernel's msgspec ``Args`` that has a grid and no
    shapes or collective, without building the args dict; one shared dict per launch config."""
    grid, block, regs, smem, occ = a.grid, a.block, a.registers, a.shared_memory, a.occupancy
    try:
        key = (tuple(grid) if type(grid) is list else grid, tuple(block) if type(block) is list else block, regs, smem, occ)
        hit = cache.get(key)
    except TypeError:  # unhashable oddities: the generic path
        key, hit = None, None
    if hit is not None:
        return hit
    out = _sparse_args(int(Kind.KERNEL), "", {k: v for k, v in (("grid", grid), ("block", block), ("registers per thread", regs),
                                                              ("shared memory", smem), ("est. achieved occupancy %", occ))
                                              if v is not None})
    if out is not None and key is not None:
        cache[key] = out
    return out


def _sparse_args(kind: int, name: str, args: dict[str, Any]) -> dict[str, Any] | None:
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
            for key, short in (("registers per thread", "registers"), ("shared memory", "shared_memory"),
                               ("est. achieved occupancy %", "occupancy_pct")):
                if key in args:
                    out[short] = args[key]
    if "Collective name" in args or name == "record_param_comms":
        coll = {short: args[key] for key, short in _COLLECTIVE_KEYS.items() if key in args}
        if coll:
            out = out or {}
            out["collective"] = coll
    if kind == Kind.OTHER and name == "[memory]":
        mem = {k: args[k] for k in ("Total Allocated", "Total Reserved", "Device Id", "Device Type", "Addr") if k in args}
        if mem:
            out = out or {}
            out["memory"] = mem
    return out


def empty_table(names: list[str] | None = None) -> EventTable:
    """An event table with no rows (a trace with no events)."""
    z64 = np.zeros(0, dtype=np.int64)
    return EventTable(
        names=list(names or []),
        kind=np.zeros(0, dtype=np.int8),
        name=np.zeros(0, dtype=np.int32),
        ts_ns=z64.copy(),
        dur_ns=z64.copy(),
        pid=z64.copy(),
        tid=z64.copy(),
        stream=np.zeros(0, dtype=np.int32),
        device=np.zeros(0, dtype=np.int32),
        correlation=z64.copy(),
        external_id=z64.copy(),
        step=np.zeros(0, dtype=np.int32),
        flops=np.zeros(0, dtype=np.float64),
        bytes=z64.copy(),
        launch_of=z64.copy(),
        op_of=z64.copy(),
    )


# --------------------------------------------------------------------------- links


def _sorted_events(t: EventTable) -> EventTable:
    order = np.lexsort((-t.dur_ns, t.ts_ns))
    if np.all(order[:-1] < order[1:]) if order.size > 1 else True:
        return t
    remap = np.empty_like(order)
    remap[order] = np.arange(order.size)
    fields = ("kind", "name", "ts_ns", "dur_ns", "pid", "tid", "stream", "device", "correlation",
              "external_id", "step", "flops", "bytes", "launch_of", "op_of")
    for f in fields:
        setattr(t, f, getattr(t, f)[order])
    t.extra = {int(remap[k]): v for k, v in t.extra.items()}
    return t


def _lookup(keys: np.ndarray, rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each wanted key, the row whose key matches (first in ``rows`` order), else -1."""
    if keys.size == 0 or wanted.size == 0:
        return np.full(wanted.size, -1, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    pos = np.searchsorted(sk, wanted)
    pos_c = np.minimum(pos, sk.size - 1)
    hit = (pos < sk.size) & (sk[pos_c] == wanted) & (wanted >= 0)
    return np.where(hit, rows[order][pos_c], -1).astype(np.int64)


def _link(t: EventTable) -> None:
    gpu = np.flatnonzero(np.isin(t.kind, np.asarray([Kind.KERNEL, Kind.MEMCPY, Kind.MEMSET], dtype=np.int8)))
    if gpu.size == 0:
        return
    runtime = np.flatnonzero((t.kind == Kind.RUNTIME) & (t.correlation >= 0))
    launch = _lookup(t.correlation[runtime], runtime, t.correlation[gpu])
    t.launch_of[gpu] = launch
    cpu = np.flatnonzero((t.kind == Kind.CPU_OP) & (t.external_id >= 0))
    ext = np.where(launch >= 0, t.external_id[np.maximum(launch, 0)], t.external_id[gpu])
    op = _lookup(t.external_id[cpu], cpu, ext)
    missing = (op < 0) & (launch >= 0)
    if missing.any():
        op[missing] = _containing_op(t, launch[missing])
    t.op_of[gpu] = op


def _containing_op(t: EventTable, rows: np.ndarray) -> np.ndarray:
    """Innermost CPU op on the same thread whose span contains each row's start."""
    out = np.full(rows.size, -1, dtype=np.int64)
    cpu = np.flatnonzero(t.kind == Kind.CPU_OP)
    if cpu.size == 0:
        return out
    for tid in np.unique(t.tid[rows]):
        ops = cpu[t.tid[cpu] == tid]
        if ops.size == 0:
            continue
        starts, ends = t.ts_ns[ops], t.ts_ns[ops] + t.dur_ns[ops]
        want = np.flatnonzero(t.tid[rows] == tid)
        for i in want:
            ts = t.ts_ns[rows[i]]
            j = int(np.searchsorted(starts, ts, side="right")) - 1
            walked = 0
            while j >= 0 and ends[j] < ts and walked < 256:  # back to the innermost enclosing op
                j -= 1
                walked += 1
            if j >= 0 and starts[j] <= ts <= ends[j]:
                out[i] = ops[j]
    return out


# --------------------------------------------------------------------------- steps


_STEP_RE = re.compile(r"^(?:ProfilerStep|stallscope\.step)#(\d+)$")


def find_steps(t: EventTable) -> tuple[list[Any], str | None]:
    """Steps: ``ProfilerStep#N`` ranges, else ``stallscope.step#N`` markers, else the whole trace
    (with a notice). Returns ``(steps, notice)``."""
    from stallscope.analyzers.model import Step

    cpu_like = np.asarray([Kind.CPU_OP, Kind.ANNOTATION], dtype=np.int8)
    for prefix, source in (("ProfilerStep#", "ProfilerStep"), ("stallscope.step#", "stallscope")):
        ids = t.name_ids_matching(lambda s, p=prefix: s.startswith(p))
        if ids.size == 0:
            continue
        rows = np.flatnonzero(np.isin(t.name, ids) & np.isin(t.kind, cpu_like))
        if rows.size == 0:
            continue
        steps: list[Step] = []
        seen: set[int] = set()
        for r in rows[np.argsort(t.ts_ns[rows], kind="stable")]:
            m = _STEP_RE.match(t.name_of(int(r)))
            idx = int(m.group(1)) if m else len(steps)
            if idx in seen:
                continue
            seen.add(idx)
            start = int(t.ts_ns[r])
            steps.append(Step(index=idx, start_ns=start, end_ns=start + max(int(t.dur_ns[r]), 1), source=source))
        return _drop_truncated_last(steps)
    if len(t) == 0:
        return [], None
    start = int(t.ts_ns.min())
    end = int((t.ts_ns + t.dur_ns).max())
    notice = "no ProfilerStep#N or stallscope step markers in the trace: the whole trace is treated as one step"
    return [Step(index=0, start_ns=start, end_ns=max(end, start + 1), source="whole-trace")], notice


def _drop_truncated_last(steps: list[Any]) -> tuple[list[Any], str | None]:
    """torch.profiler closes the step that is open when it stops: a last step far shorter than
    the others (under a tenth of their median: it holds little more than its own start) is that
    stub, not a real step."""
    if len(steps) < 2:
        return steps, None
    others = sorted(s.wall_ms for s in steps[:-1])
    median = others[len(others) // 2]
    last = steps[-1]
    if last.wall_ms < 0.1 * median:
        return steps[:-1], (f"the last step ({last.source}#{last.index}, {last.wall_ms:.3g} ms against a median of "
                            f"{median:.3g} ms) was cut short when the profiler stopped: left out")
    return steps, None


def assign_steps(t: EventTable, steps: list[Any]) -> None:
    """Fill ``t.step``: CPU rows by time containment; GPU rows take the step of their launch."""
    if not steps or len(t) == 0:
        return
    order = sorted(range(len(steps)), key=lambda i: steps[i].start_ns)
    starts = np.asarray([steps[i].start_ns for i in order], dtype=np.int64)
    ends = np.asarray([steps[i].end_ns for i in order], dtype=np.int64)
    idx = np.asarray([steps[i].index for i in order], dtype=np.int32)
    pos = np.searchsorted(starts, t.ts_ns, side="right") - 1
    posc = np.maximum(pos, 0)
    inside = (pos >= 0) & (t.ts_ns < ends[posc])
    t.step[:] = np.where(inside, idx[posc], -1)
    gpu = np.flatnonzero(t.launch_of >= 0)
    if gpu.size:
        t.step[gpu] = t.step[t.launch_of[gpu]]


# --------------------------------------------------------------------------- files


PARALLEL_MIN_BYTES = 24 << 20  # below this, a second process costs more than it saves


def _add_blob(cols: _Columns, blob: bytes, final: bool, path: str) -> dict[str, Any] | None:
    """Parse one blob of ``iter_trace_segments`` into ``cols``; returns the trace metadata with
    the final blob. Typed decoding (msgspec) when available, else the generic parse."""
    from stallscope.analyzers import kineto_structs
    from stallscope.analyzers.tracefile import parse_segment

    if not final and kineto_structs.AVAILABLE:
        try:
            events = kineto_structs.decode_events(blob)
        except Exception:  # noqa: BLE001 - odd types: the generic parse decides
            events = None
        if events is not None:
            cols.add_structs(events)
            return None
    events, meta = parse_segment(blob, final, Path(path))
    cols.add(events)
    return meta


def _parse_blob(blob: bytes, final: bool, path: str) -> tuple[_Columns, dict[str, Any] | None]:
    cols = _Columns()
    meta = _add_blob(cols, blob, final, path)
    return cols, meta


def _merge(into: _Columns, part: _Columns) -> None:
    """Append a batch parsed elsewhere (its own name ids and row numbers) to ``into``."""
    if part.blocks:
        remap = np.asarray([into._intern(n) for n in part.names], dtype=np.int32)
        for block in part.blocks:
            block["name"] = remap[block["name"]] if remap.size else block["name"]
            into.blocks.append(block)
        into.extra.update({into.rows + k: v for k, v in part.extra.items()})
        into.rows += part.rows
    into.process_names.update(part.process_names)
    into.thread_names.update(part.thread_names)


def _trace_bytes(path: Path) -> int:
    size = path.stat().st_size
    with path.open("rb") as fh:
        return size * 8 if fh.read(2) == b"\x1f\x8b" else size  # Kineto JSON gzips ~8-12x


def _parallel_workers(path: Path) -> int:
    import multiprocessing

    env = os.environ.get("STALLSCOPE_PARSE_WORKERS")
    if env is not None:
        return int(env) if env.isdigit() else 0
    if (os.cpu_count() or 1) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    import threading

    if threading.active_count() > 1:  # forking a threaded process can deadlock: parse here
        return 0
    if idle_cores() < 2:  # a helper on a busy core only adds its copying to our time
        return 0
    return 1 if _trace_bytes(path) >= PARALLEL_MIN_BYTES else 0


def idle_cores() -> float:
    """Cores not busy by the 1-minute load average (this process counts as one of the busy ones
    only once it has run a while): forked helpers pay off only on idle cores."""
    try:
        return (os.cpu_count() or 1) - os.getloadavg()[0]
    except OSError:  # no load average on this platform
        return float(os.cpu_count() or 1)


def _read_parallel(path: Path, workers: int) -> tuple[_Columns, dict[str, Any]]:
    """Parse with ``workers`` forked helpers: this process reads and cuts the file and parses
    every ``workers + 1``-th blob itself; results are merged in file order."""
    import multiprocessing
    from collections import deque

    from stallscope.analyzers import tracefile

    cols = _Columns()
    meta: dict[str, Any] = {}
    pending: deque[Any] = deque()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for i, (blob, final) in enumerate(tracefile.iter_trace_segments(path, tracefile.CHUNK_BYTES)):
            if i % (workers + 1) == workers or final:
                own, m = _parse_blob(blob, final, str(path))  # while the helpers parse theirs
                while pending:
                    _merge(cols, pending.popleft().get()[0])
                _merge(cols, own)
            else:
                pending.append(pool.apply_async(_parse_blob, (blob, final, str(path))))
                continue
            if m is not None:
                meta = m
        while pending:
            _merge(cols, pending.popleft().get()[0])
    return cols, meta


def _read_segments(path: Path) -> tuple[_Columns, dict[str, Any]]:
    from stallscope.analyzers import tracefile

    cols = _Columns()
    meta: dict[str, Any] = {}
    for blob, final in tracefile.iter_trace_segments(path, tracefile.CHUNK_BYTES):
        m = _add_blob(cols, blob, final, str(path))
        if m is not None:
            meta = m
    return cols, meta


def load_trace(path: str | Path, rank: int | None = None) -> tuple[EventTable, dict[str, Any]]:
    """Parse one trace file into a linked, time-sorted :class:`EventTable` and its metadata.

    Files over ``PARALLEL_MIN_BYTES`` of JSON are parsed by this process and a forked helper
    (``STALLSCOPE_PARSE_WORKERS=0`` turns that off); any doubt (a cut inside a string, a worker
    error) falls back to the one-process parse.
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
    cols: _Columns | None = None
    meta: dict[str, Any] = {}
    workers = _parallel_workers(path) if path.is_file() else 0
    if workers > 0:
        try:
            cols, meta = _read_parallel(path, workers)
        except ToolError:
            cols = None  # re-read in one process for the precise error
        except Exception:  # noqa: BLE001 - odd layout or worker trouble: the careful path decides
            cols = None
    if cols is None and path.is_file():
        try:
            cols, meta = _read_segments(path)
        except ToolError:
            cols = None
        except Exception:  # noqa: BLE001 - a cut inside a string: the validating reader below
            cols = None
    if cols is None:
        cols = _Columns()
        for events, m in iter_trace_batches(path):
            cols.add(events)
            if m is not None:
                meta = m
    table = _sorted_events(cols.table())
    _link(table)
    meta = dict(meta)
    meta["process_names"] = {str(k): v for k, v in cols.process_names.items()}
    return table, meta


def _is_trace_name(p: Path) -> bool:
    return p.is_file() and p.name.endswith(TRACE_SUFFIXES) and not p.name.startswith(".")


def find_traces(folder: Path) -> list[Path]:
    """Trace files directly in ``folder`` (sorted by name)."""
    return sorted(p for p in folder.iterdir() if _is_trace_name(p))


def _read_csv_columns(path: Path) -> dict[str, np.ndarray] | None:
    """A CSV as name -> float array (empty cell = nan; non-numeric columns kept as strings)."""
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


_RANK_IN_NAME = re.compile(r"rank[_-]?(\d+)", re.IGNORECASE)
_TB_NAME = re.compile(r"^(?P<who>.+?)\.(?P<stamp>\d+)\.pt\.trace\.json(?:\.gz)?$")


def _rank_of(meta: dict[str, Any], path: Path) -> int | None:
    info = meta.get("distributedInfo")
    if isinstance(info, dict) and isinstance(info.get("rank"), int):
        return int(info["rank"])
    m = _RANK_IN_NAME.search(path.name)
    return int(m.group(1)) if m else None


def _device_name(meta: dict[str, Any]) -> str | None:
    props = meta.get("deviceProperties")
    if isinstance(props, list) and props and isinstance(props[0], dict) and props[0].get("name"):
        return str(props[0]["name"])
    return None


def _rank_data(path: Path, rank: int | None, notices: list[str]) -> RankData:
    table, meta = load_trace(path)
    steps, notice = find_steps(table)
    if notice and notice not in notices:
        notices.append(notice)
    assign_steps(table, steps)
    r = _rank_of(meta, path) if rank is None else rank
    return RankData(rank=r if r is not None else -1, events=table, steps=steps, meta={"trace": meta}, trace_path=str(path))


def _finish(ctx: AnalysisContext) -> AnalysisContext:
    from stallscope.analyzers.breakdown import compute_breakdowns

    ranks = ctx.ranks
    used = {r.rank for r in ranks if r.rank >= 0}
    nxt = 0
    for r in ranks:
        if r.rank < 0:
            while nxt in used:
                nxt += 1
            r.rank = nxt
            used.add(nxt)
    ranks.sort(key=lambda r: r.rank)
    if ranks and not ctx.trace_meta:
        ctx.trace_meta = ranks[0].meta.get("trace", {})
    if ctx.device_name is None:
        for r in ranks:
            name = _device_name(r.meta.get("trace", {}))
            if name:
                ctx.device_name = name
                break
    if ranks and not ctx.has("gpu"):
        ctx.notices.append("no GPU events in the trace (CPU-only run or CUDA activity not recorded): "
                           "GPU figures are absent; the CPU side is analysed")
    compute_breakdowns(ctx)
    return ctx


def _load_run_dir(root: Path) -> AnalysisContext:
    meta = read_yaml(root / "meta.yaml") if (root / "meta.yaml").is_file() else {}
    if not isinstance(meta, dict):
        raise ToolError(f"{root / 'meta.yaml'}: not a mapping; regenerate the run directory")
    version = meta.get("schema_version", 1)
    if version != 1:
        raise ToolError(f"{root / 'meta.yaml'}: unknown run format schema_version {version!r}; "
                        "this stallscope reads version 1, upgrade stallscope")
    notices: list[str] = [str(n) for n in meta.get("notices", []) or []]
    ranks: list[RankData] = []
    rank_dirs = sorted((p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"rank\d+", p.name)),
                       key=lambda p: int(p.name[4:]))
    for d in rank_dirs:
        r = int(d.name[4:])
        traces = [p for p in (d / "trace.json.gz", d / "trace.json") if p.is_file()] or find_traces(d)
        if traces:
            rd = _rank_data(traces[0], r, notices)
        else:
            rd = RankData(rank=r, events=empty_table(), steps=[], trace_path=None)
            notices.append(f"rank {r}: no trace in {d} (the window may not have been reached); telemetry only")
        rd.telemetry = _read_csv_columns(d / "steps.csv")
        rd.nvml = _read_csv_columns(d / "nvml.csv")
        rd.host = _read_csv_columns(d / "host.csv")
        if (d / "rank.yaml").is_file():
            rank_meta = read_yaml(d / "rank.yaml")
            if isinstance(rank_meta, dict):
                rd.meta["rank"] = rank_meta
        if len(ranks) >= FULL_RANKS:
            compact_rank(rd)
        ranks.append(rd)
    if not ranks:
        raise ToolError(f"{root}: a run directory without rank folders; pass a trace file or re-run stallscope profile")
    device = None
    per_rank = meta.get("per_rank") or {}
    if isinstance(per_rank, dict):
        for info in per_rank.values():
            gpu = (info or {}).get("gpu") if isinstance(info, dict) else None
            if isinstance(gpu, dict) and gpu.get("name"):
                device = str(gpu["name"])
                break
    ctx = AnalysisContext(ranks=ranks, source=str(root), meta=meta, device_name=device, notices=notices)
    patches = root / "patches.yaml"
    if patches.is_file():
        ctx.meta = dict(meta)
        ctx.meta["patches"] = read_yaml(patches)
    return _finish(ctx)


def _pick_traces(paths: list[Path], notices: list[str]) -> list[Path]:
    """tensorboard_trace_handler writes one file per profiling cycle: keep the newest per process
    when files carry no rank (they are cycles of one process, not ranks)."""
    if len(paths) < 2 or any(_RANK_IN_NAME.search(p.name) for p in paths):
        return paths
    groups: dict[str, list[tuple[int, Path]]] = {}
    for p in paths:
        m = _TB_NAME.match(p.name)
        if not m:
            return paths
        groups.setdefault(m.group("who"), []).append((int(m.group("stamp")), p))
    picked = []
    for who, items in sorted(groups.items()):
        items.sort()
        picked.append(items[-1][1])
        if len(items) > 1:
            notices.append(f"{len(items)} traces of {who} (one per profiling cycle): the newest, "
                           f"{items[-1][1].name}, is analysed")
    return picked


def load_context(target: str | Path) -> AnalysisContext:
    """Load a run directory, a trace file or a folder of per-rank traces (see module doc)."""
    root = Path(target)
    if not root.exists():
        raise ToolError(f"{root}: no such file or directory; pass a run directory, a trace file or a folder of traces")
    if root.is_file():
        notices: list[str] = []
        rd = _rank_data(root, None, notices)
        return _finish(AnalysisContext(ranks=[rd], source=str(root), notices=notices))
    if (root / "meta.yaml").is_file() or any(root.glob("rank[0-9]*/trace.json*")):
        return _load_run_dir(root)
    traces = find_traces(root)
    if not traces:
        raise ToolError(f"{root}: no trace files (*.json, *.json.gz) in this folder; "
                        "pass a run directory, a trace file or a folder of per-rank traces")
    notices = []
    traces = _pick_traces(traces, notices)
    ranks = []
    for i, p in enumerate(traces):
        rd = _rank_data(p, None, notices)
        if i >= FULL_RANKS:
            compact_rank(rd)
        ranks.append(rd)
    if len(ranks) > FULL_RANKS:
        notices.append(f"{len(ranks)} ranks: per-rank analyzers looked at the first {FULL_RANKS}; the breakdown and the "
                       "communication analysis cover every rank (docs/distributed.md, Scale)")
    seen: dict[int, Path] = {}
    for rd in ranks:
        if rd.rank >= 0 and rd.rank in seen:
            raise ToolError(f"{root}: two traces claim rank {rd.rank} ({Path(seen[rd.rank]).name}, "
                            f"{Path(rd.trace_path or '').name}); keep one trace per rank in the folder")
        if rd.rank >= 0:
            seen[rd.rank] = Path(rd.trace_path or "")
    if len(ranks) > 1 and any(rd.rank < 0 for rd in ranks):
        notices.append("some traces carry no rank (distributedInfo.rank or rank<N> in the name): "
                       "ranks were numbered by file name")
    return _finish(AnalysisContext(ranks=ranks, source=str(root), notices=notices))


def iter_rows(t: EventTable, rows: Iterable[int]) -> Iterable[tuple[int, str, int, int]]:
    """(row, name, ts_ns, dur_ns) for the given rows: a convenience for analyzers and tests."""
    for r in rows:
        r = int(r)
        yield r, t.names[int(t.name[r])], int(t.ts_ns[r]), int(t.dur_ns[r])
