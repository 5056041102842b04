"""What collectives each rank ran: their type, size, process group, and their exposed time by type.

No torch import; reads the :class:`~analyzers.model.EventTable` only.

**Collective types.** Every communication row gets one of ``allreduce``, ``allgather``,
``reducescatter``, ``alltoall``, ``broadcast``, ``reduce``, ``sendrecv`` (point-to-point),
``gather``, ``scatter``, ``barrier`` or ``other`` (:class:`_Typer` gives the order of the
evidence: the collective's args, the launching c10d call, the kernel's name, ...). NCCL names a
kernel after its algorithm (``ncclDevKernel_AllReduce_*``, ``ncclKernel_AllGather_*``,
``ReduceScatter``, ``Broadcast``, ``Reduce``) except ``SendRecv``, which runs all-to-all, gather,
scatter and pipeline sends alike: only the launching range says which. RCCL keeps NCCL's names.
gloo runs reduce-scatter as an all-reduce on its own worker thread: the c10d call issued before
it says what it serves.

**Exposed time by type** (:func:`exposed_by_type`): per step, on the GPU the time when
communication of a type runs and no compute kernel or copy does (shared equally among the types
running at that instant), on the CPU each type's time; scaled so the types add up to the
breakdown's ``comm_exposed_ms`` of that step, which stays the one measure of exposed time.

**Matching** (:func:`match_instances`): by (process group, sequence number) where the trace has
``Seq``, else by order within (process group, collective type).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from stallscope.analyzers.arrays import isin, unique
from stallscope.analyzers.breakdown import Intervals, union
from stallscope.analyzers.model import GPU_KINDS, Kind, RankData
from stallscope.analyzers.vocab import is_comm_kernel, is_comm_op

__all__ = ["Collective", "collective_type", "collectives_of", "exposed_by_type", "match_instances"]

_DTYPE_BYTES = {
    "float": 4,
    "float32": 4,
    "Float": 4,
    "half": 2,
    "float16": 2,
    "Half": 2,
    "bfloat16": 2,
    "BFloat16": 2,
    "double": 8,
    "Double": 8,
    "int": 4,
    "Int": 4,
    "long": 8,
    "Long": 8,
    "int64": 8,
    "int32": 4,
    "uint8": 1,
    "Byte": 1,
    "int8": 1,
    "Char": 1,
    "bool": 1,
    "Bool": 1,
}
# NCCL (ncclKernel_*, ncclDevKernel_*) and RCCL kernels; RCCL keeps NCCL's names, some builds
# prefix them with rccl.
_NCCL_NAME = re.compile(r"[nr]ccl(?:Dev)?Kernel_([A-Za-z]+)", re.I)

# Canonical collective types, most specific first: "allreduce" before "reduce", "reducescatter"
# before "scatter". Names are compared lower-case without "_" and "-" (c10d::_allgather_base_,
# nccl:all_to_all, gloo:all_reduce, ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL, all match).
_TYPE_WORDS = (
    "allreduce",
    "allgather",
    "reducescatter",
    "alltoall",
    "broadcast",
    "reduce",
    "sendrecv",
    "send",
    "recv",
    "barrier",
    "gather",
    "scatter",
)
_P2P = {"send": "sendrecv", "recv": "sendrecv"}


@dataclass
class Collective:
    """One collective as one rank saw it; ``name`` is its canonical type."""

    key: tuple[Any, ...]
    name: str
    ts_ns: int
    dur_ns: int
    nbytes: int
    group_size: int
    step: int


def collective_type(name: str) -> str | None:
    """The canonical collective type a name speaks of (see module doc), or None."""
    low = name.lower().replace("_", "").replace("-", "")
    for word in _TYPE_WORDS:
        if word in low:
            return _P2P.get(word, word)
    return None


# What a backend's own range or kernel may be running for a c10d call of another type: gloo runs
# reduce-scatter as an all-reduce, NCCL runs all-to-all, gather and scatter as send/recv.
_IMPLEMENTS = {
    "allreduce": ("allreduce", "reducescatter", "reduce"),
    "allgather": ("allgather", "gather"),
    "sendrecv": ("sendrecv", "alltoall", "gather", "scatter"),
}
_RANGE_PREFIXES = ("c10d::", "nccl:", "rccl:", "gloo:")
_LOOKBACK = 64  # c10d calls searched back for the one a backend row serves (a few steps of DDP buckets)


class _Typer:
    """Collective type of a rank's communication rows (module doc), in this order: the row's
    collective args; the innermost c10d call enclosing its launch on the launching thread; a
    kernel name that names an algorithm other than send/recv; the latest earlier c10d call the
    row may implement (gloo's work runs on its own threads, in issue order); any enclosing
    ``nccl:`` / ``gloo:`` range; its own name; else ``other``."""

    def __init__(self, rd: RankData) -> None:
        self.rd = rd
        ev = rd.events
        ranges = ev.rows_named(
            lambda s: s.startswith(_RANGE_PREFIXES) and collective_type(s) is not None, Kind.CPU_OP, Kind.ANNOTATION
        )
        ranges = ranges[np.argsort(ev.ts_ns[ranges], kind="stable")]
        self.tid = ev.tid[ranges]
        self.start = ev.ts_ns[ranges]
        self.end = ev.ts_ns[ranges] + ev.dur_ns[ranges]
        self.types = [collective_type(ev.name_of(int(r))) for r in ranges]
        self.api = np.asarray([ev.name_of(int(r)).startswith("c10d::") for r in ranges], dtype=bool)

    def _enclosing(self, row: int, api: bool) -> str | None:
        ev = self.rd.events
        inside = (self.tid == ev.tid[row]) & (self.start <= ev.ts_ns[row]) & (self.end >= ev.ts_ns[row])
        if api:
            inside &= self.api
        hits = np.flatnonzero(inside)
        if not hits.size:
            return None
        return self.types[int(hits[np.argmin(self.end[hits] - self.start[hits])])]

    def _issued_before(self, row: int, own: str | None) -> str | None:
        calls = np.flatnonzero(self.api[: int(np.searchsorted(self.start, self.rd.events.ts_ns[row], side="right"))])
        for i in calls[::-1][:_LOOKBACK].tolist():
            t = self.types[i]
            if own is None or t in _IMPLEMENTS.get(own, (own,)):
                return t
        return None

    def type_of(self, row: int) -> str:
        """The canonical collective type of ``row`` (a communication kernel or CPU range)."""
        ev = self.rd.events
        named = collective_type(str(_metadata(self.rd, row).get("name") or ""))
        if named is not None:
            return named
        anchor = int(ev.launch_of[row]) if row < len(ev.launch_of) and ev.launch_of[row] >= 0 else row
        if anchor == row and row < len(ev.op_of) and ev.op_of[row] >= 0 and ev.kind[row] == Kind.KERNEL:
            anchor = int(ev.op_of[row])
        api = self._enclosing(anchor, api=True)
        if api is not None:
            return api
        own = collective_type(ev.name_of(row))
        # a kernel named for an algorithm runs that algorithm (NCCL's kernels are per algorithm,
        # SendRecv aside); a gloo range may serve another call (reduce-scatter as all-reduce)
        if own is not None and own != "sendrecv" and (ev.kind[row] == Kind.KERNEL or own not in _IMPLEMENTS):
            return own
        return self._issued_before(anchor, own) or self._enclosing(anchor, api=False) or own or "other"


def collectives_of(rd: RankData, world: int) -> list[Collective]:
    """The rank's collectives in time order: NCCL kernels on the GPU, else gloo ranges on the CPU."""
    ev = rd.events
    if not len(ev):
        return []
    kern = ev.rows_named(lambda s: bool(_NCCL_NAME.search(s)), Kind.KERNEL)
    rows = kern if kern.size else ev.rows_named(lambda s: s.startswith("gloo:"), Kind.ANNOTATION, Kind.CPU_OP)
    rows = rows[np.argsort(ev.ts_ns[rows], kind="stable")]
    if (ev.step >= 0).any():
        rows = rows[ev.step[rows] >= 0]  # only the analysed steps, so per-step figures add up
    typer = _Typer(rd)
    out: list[Collective] = []
    order: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows.tolist():
        meta = _metadata(rd, row)
        name = typer.type_of(row)
        if name == "barrier":
            continue
        group = str(meta.get("pg_name", "0"))
        seq = meta.get("seq")
        if seq is not None and str(seq).lstrip("-").isdigit():
            key: tuple[Any, ...] = (group, "seq", int(seq))
        else:
            key = (group, name, order[(group, name)])
            order[(group, name)] += 1
        out.append(
            Collective(
                key=key,
                name=name,
                ts_ns=int(ev.ts_ns[row]),
                dur_ns=int(ev.dur_ns[row]),
                nbytes=_bytes(meta),
                group_size=int(meta.get("group_size") or world),
                step=int(ev.step[row]),
            )
        )
    return out


def _metadata(rd: RankData, row: int) -> dict[str, Any]:
    ev = rd.events
    extra = ev.extra.get(row, {})
    if "collective" in extra:
        return dict(extra["collective"])
    op = int(ev.op_of[row]) if len(ev.op_of) > row else -1
    if op >= 0 and "collective" in ev.extra.get(op, {}):
        return dict(ev.extra[op]["collective"])
    meta: dict[str, Any] = {}
    dims, types = extra.get("input_dims"), extra.get("input_types")
    if dims and types:
        meta["_dims"], meta["_types"] = dims, types
    return meta


def _bytes(meta: dict[str, Any]) -> int:
    size = _DTYPE_BYTES.get(str(meta.get("dtype", "")), 4)
    n = meta.get("in_nelems")
    if n is not None:
        try:
            return int(n) * size
        except (TypeError, ValueError):
            return 0
    dims, types = meta.get("_dims"), meta.get("_types")
    if dims and types and isinstance(dims[0], list):
        count = int(np.prod(dims[0])) if dims[0] and all(isinstance(d, int) for d in dims[0]) else 0
        return count * _DTYPE_BYTES.get(str(types[0]), 4)
    return 0


def match_instances(per_rank: dict[int, list[Collective]]) -> list[dict[int, Collective]]:
    """Instances seen by every rank, keyed by rank; order of the first rank."""
    by_key = [{c.key: c for c in cs} for cs in per_rank.values()]
    ranks = list(per_rank)
    if not ranks:
        return []
    common = [c.key for c in per_rank[ranks[0]] if all(c.key in m for m in by_key)]
    return [{r: by_key[i][k] for i, r in enumerate(ranks)} for k in common]


def exposed_by_type(rd: RankData) -> dict[str, float]:
    """Milliseconds of the breakdown's exposed communication per collective type, summed over the
    rank's steps. Per step: on the GPU, the time when communication of a type runs and no compute
    kernel or copy does (shared equally among the types running at that instant); on the CPU,
    each type's time; then scaled so the types add up to the step's ``comm_exposed_ms``."""
    ev = rd.events
    if not rd.breakdown or not len(ev):
        return {}
    kernel = ev.kind == Kind.KERNEL
    if isin(ev.kind, np.asarray(GPU_KINDS, dtype=ev.kind.dtype)).any():  # the breakdown's GPU timeline
        comm_mask = kernel & isin(ev.name, ev.name_ids_matching(is_comm_kernel))
        comm = np.flatnonzero(comm_mask)
        busy_rows = np.flatnonzero((kernel & ~comm_mask) | (ev.kind == Kind.MEMCPY) | (ev.kind == Kind.MEMSET))
    else:
        comm = ev.rows_named(is_comm_op, Kind.CPU_OP, Kind.ANNOTATION)
        busy_rows = np.zeros(0, dtype=np.int64)
    if not comm.size:
        return {}
    typer = _Typer(rd)
    by_type: dict[str, list[int]] = defaultdict(list)
    for row in comm.tolist():
        by_type[typer.type_of(row)].append(row)
    sets = {t: union(ev.ts_ns[rows], ev.ts_ns[rows] + ev.dur_ns[rows]) for t, rows in by_type.items()}
    busy = union(ev.ts_ns[busy_rows], ev.ts_ns[busy_rows] + ev.dur_ns[busy_rows])
    out: dict[str, float] = defaultdict(float)
    steps = {s.index: s for s in rd.steps}
    for b in rd.breakdown:
        st = steps.get(b.step)
        if st is None or b.comm_exposed_ms <= 0:
            continue
        weights = _step_weights(sets, busy, st.start_ns, st.end_ns)
        total = sum(weights.values())
        if total <= 0:
            out["other"] += b.comm_exposed_ms
            continue
        for t, w in weights.items():
            out[t] += b.comm_exposed_ms * w / total
    return dict(out)


def _step_weights(sets: dict[str, Intervals], busy: Intervals, lo: int, hi: int) -> dict[str, float]:
    """Per type, the time in ``[lo, hi)`` when it runs and ``busy`` does not, shared equally among
    the types running at the same instant."""
    clipped = {t: s.window(lo, hi) for t, s in sets.items()}
    blocked = busy.window(lo, hi)
    edges = [np.asarray([lo, hi])] + [np.concatenate((w.starts, w.ends)) for w in [blocked, *clipped.values()]]
    pts = unique(np.concatenate(edges))
    seg, length = pts[:-1], np.diff(pts).astype(np.float64)
    free = ~blocked.covers(seg)
    cover = {t: w.covers(seg) & free for t, w in clipped.items()}
    n = np.sum([c for c in cover.values()], axis=0) if cover else np.zeros(seg.size)
    share = np.where(n > 0, length / np.maximum(n, 1), 0.0)
    return {t: float(share[c].sum()) for t, c in cover.items()}
