"""communication: exposed collectives, bus bandwidth, and the straggler rank with its cause.

Collectives are matched across ranks by (process group, sequence number) where the trace has
``Seq``, else by their order within (process group, collective name). Per matched instance the
rank whose collective took the *shortest* time arrived last: everybody else's extra time is
waiting for it (the collective cannot finish before the last rank joins). This needs no clock
alignment between ranks.

Thresholds and why:

* **Straggler**: a rank is named when it arrives last in at least half of the matched instances,
  more often than chance would make it (each of n ranks is last with probability 1/n when none is
  slow; a one-sided binomial test at 1 %, so a noisy machine does not name a random rank), *and*
  the waits it causes are
  at least 10 % of the step time (the issue's criterion; below that a late rank costs less than
  ordinary step-to-step jitter of a data-parallel step). Severity then follows the common
  5 % / 20 % grading of the waits' share. Its cause is read from its own data against its
  peers' median: extra data wait, extra compute, extra host time, a lower SM clock or throttle
  reasons (NVML). The largest excess wins; it must be at least half of the waits it caused to
  be called the cause with high confidence.
* **Exposed communication**: communication time with no compute running beside it, as a share
  of step time (breakdown ``comm_exposed_ms``), graded 5 % / 20 %. Overlapped communication is
  free and not reported.
* **Communication-slow** (C4's class for a slow link rather than a slow rank): large collectives
  (>= 1 MiB, where bandwidth rather than latency dominates) whose bus bandwidth is below half of
  the link's measured peak, group-wide, with no straggler to blame.
* **Hang evidence**: a collective that waited 10 s or more (no step of a healthy job waits that
  long for its peers; NCCL's own watchdog gives up at 10 minutes, so a trace that ends before it
  shows the hang only as such a wait), and PyTorch NCCL flight-recorder JSON dumps
  (``TORCH_NCCL_TRACE_BUFFER_SIZE``, ``TORCH_NCCL_DEBUG_INFO_TEMP_FILE``) in the run directory
  with entries not completed. Different collective counts per rank inside the window are not
  evidence: the window's edges cut ranks at different points of the same step.

Bus bandwidth follows nccl-tests: algbw = bytes / time, busbw = algbw x 2(n-1)/n for all-reduce,
(n-1)/n for all-gather, reduce-scatter and all-to-all, 1 for broadcast / reduce / send / recv.
The time is the last arriver's collective time (it waited for nobody).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stallscope.analyzers.base import Analyzer, Finding, Impact, Severity, register
from stallscope.analyzers.builtin._common import covered_ns, grade
from stallscope.analyzers.model import AnalysisContext, Kind, RankData

STRAGGLER_WAIT_PCT = 10.0
LATE_MAJORITY = 0.5
LATE_SIGNIFICANCE = 0.01
LARGE_MSG_BYTES = 1 << 20
SLOW_LINK_FRACTION = 0.5
EXPOSED_MEDIUM_PCT = 5.0
EXPOSED_HIGH_PCT = 20.0
HANG_MIN_NS = 10 * 1_000_000_000

# Measured bus-bandwidth peaks of a link (GB/s); see bench/results/distributed.yaml for how.
LINK_PEAK_BUSBW_GBPS = {"NVIDIA H200": 317.6}  # 2x H200 of one host, all-reduce at 1 GiB

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
_NCCL_NAME = re.compile(r"nccl(?:Dev)?Kernel_([A-Za-z]+)", re.I)


@dataclass
class Collective:
    """One collective as one rank saw it."""

    key: tuple[Any, ...]
    name: str
    ts_ns: int
    dur_ns: int
    nbytes: int
    group_size: int
    step: int


def _normalise(name: str) -> str:
    low = name.lower().replace("_", "").replace("-", "")
    for canon in (
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
    ):
        if canon in low:
            return canon
    return low


def _bus_factor(name: str, n: int) -> float:
    if n <= 1:
        return 1.0
    if name == "allreduce":
        return 2.0 * (n - 1) / n
    if name in ("allgather", "reducescatter", "alltoall"):
        return (n - 1) / n
    return 1.0


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
    out: list[Collective] = []
    order: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows.tolist():
        meta = _metadata(rd, row)
        raw = meta.get("name") or _kernel_collective(ev.names[int(ev.name[row])])
        name = _normalise(str(raw))
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


def _kernel_collective(kname: str) -> str:
    m = _NCCL_NAME.search(kname)
    return m.group(1) if m else kname.split(":", 1)[-1]


def _metadata(rd: RankData, row: int) -> dict[str, Any]:
    ev = rd.events
    extra = ev.extra.get(row, {})
    if "collective" in extra:
        return dict(extra["collective"])
    op = int(ev.op_of[row]) if len(ev.op_of) > row else -1
    for cand in (op,):
        if cand >= 0 and "collective" in ev.extra.get(cand, {}):
            return dict(ev.extra[cand]["collective"])
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


@register
class Communication(Analyzer):
    """Exposed communication, slow links, and the straggler rank with its cause."""

    name = "communication"
    requires = frozenset({"trace"})
    description = "collective waits across ranks: straggler and cause, exposed comm, bus bandwidth, hangs"

    def analyze(self, ctx: AnalysisContext) -> list[Finding]:
        if len(ctx.ranks) < 2:
            return _exposed(ctx, 0.0)
        world = len(ctx.ranks)
        per_rank = {rd.rank: collectives_of(rd, world) for rd in ctx.ranks}
        instances = match_instances(per_rank)
        findings = _hangs(ctx, per_rank, instances)
        straggler = _straggler(ctx, instances)
        if straggler is not None:
            findings.append(straggler)
            # Peers' waits for the straggler show up as exposed communication: count them once.
            findings += _exposed(ctx, float(straggler.evidence["peer_wait_ms_per_step"]))
            return findings + _bandwidth(ctx, instances)
        slow = _slow_link(ctx, instances)
        if slow is not None:
            findings.append(slow)
        return findings + _exposed(ctx, 0.0) + _bandwidth(ctx, instances)


def _step_ms(ctx: AnalysisContext) -> float:
    """Mean step wall time: shares are totals over totals, so per-step waits add up."""
    walls = [b.wall_ms for rd in ctx.ranks for b in rd.breakdown]
    if walls:
        return float(np.mean(walls))
    spans = [(s.end_ns - s.start_ns) / 1e6 for rd in ctx.ranks for s in rd.steps]
    return float(np.mean(spans)) if spans else 0.0


def _n_steps(ctx: AnalysisContext) -> int:
    return max((len(rd.steps) for rd in ctx.ranks), default=1) or 1


def _exposed(ctx: AnalysisContext, straggler_wait_ms_per_step: float) -> list[Finding]:
    wall = sum(b.wall_ms for rd in ctx.ranks for b in rd.breakdown)
    exposed = sum(b.comm_exposed_ms for rd in ctx.ranks for b in rd.breakdown)
    n_rank_steps = sum(len(rd.breakdown) for rd in ctx.ranks)
    peers = max(len(ctx.ranks) - 1, 0)
    # The waits were measured on the peers only: subtract them from the peers' share.
    exposed = max(0.0, exposed - straggler_wait_ms_per_step * peers * (n_rank_steps / max(len(ctx.ranks), 1)))
    overlapped = sum(b.comm_overlapped_ms for rd in ctx.ranks for b in rd.breakdown)
    if wall <= 0 or exposed <= 0:
        return []
    share = 100.0 * exposed / wall
    sev = grade(share, EXPOSED_MEDIUM_PCT, EXPOSED_HIGH_PCT)
    n_steps = sum(len(rd.breakdown) for rd in ctx.ranks) or 1
    per_rank = {
        rd.rank: round(
            100.0 * sum(b.comm_exposed_ms for b in rd.breakdown) / max(sum(b.wall_ms for b in rd.breakdown), 1e-9), 2
        )
        for rd in ctx.ranks
        if rd.breakdown
    }
    total_comm = exposed + overlapped
    return [
        Finding(
            id="comm-exposed",
            category="communication",
            title=f"Communication not hidden by compute: {share:.1f}% of step time",
            severity=sev,
            impact=Impact(share, exposed / n_steps),
            evidence={
                "comm_exposed_pct": share,
                "comm_exposed_ms_per_step": exposed / n_steps,
                "comm_overlapped_pct_of_comm": 100.0 * overlapped / total_comm if total_comm else 0.0,
                "comm_exposed_pct_by_rank": per_rank,
            },
            where={"ranks": sorted(per_rank)},
            confidence=0.8,
            analyzer="communication",
            fixes=["overlap", "ddp-bucket", "grad-compression"],
            advice="let DDP overlap gradient all-reduce with backward (default buckets, no manual all-reduce after "
            "backward), or shrink the bytes (bf16 compression hook)",
        )
    ]


def _straggler(ctx: AnalysisContext, instances: list[dict[int, Collective]]) -> Finding | None:
    if not instances:
        return None
    ranks = sorted(instances[0])
    late: dict[int, int] = defaultdict(int)
    # Wait intervals per (late rank, waiting rank): the head of each waiting rank's collective.
    waits: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for inst in instances:
        durs = {r: c.dur_ns for r, c in inst.items()}
        last = min(durs, key=durs.__getitem__)
        if max(durs.values()) - durs[last] <= 0:
            continue
        late[last] += 1
        for r, c in inst.items():
            if r != last and c.dur_ns > durs[last]:
                waits[(last, r)].append((c.ts_ns, c.ts_ns + c.dur_ns - durs[last]))
    if not late:
        return None
    who = max(late, key=late.__getitem__)
    share_late = late[who] / len(instances)
    peers_waits = [
        covered_ns(np.array([a for a, _ in iv]), np.array([b for _, b in iv]))
        for (lr, _), iv in waits.items()
        if lr == who
    ]
    caused_ns = float(np.sum(peers_waits)) / max(len(ranks) - 1, 1)
    steps = _n_steps(ctx)
    step_ms = _step_ms(ctx)
    wait_ms_per_step = caused_ns / 1e6 / steps
    wait_pct = 100.0 * wait_ms_per_step / step_ms if step_ms > 0 else 0.0
    p_value = late_by_chance_p(late[who], len(instances), len(ranks))
    if share_late < LATE_MAJORITY or p_value >= LATE_SIGNIFICANCE or wait_pct < STRAGGLER_WAIT_PCT:
        return None
    cause, cause_ev, confidence = _cause(ctx, who, wait_ms_per_step)
    fixes = {
        "data": ["dataloader-workers", "gpu-preprocess", "pin-memory"],
        "compute": ["exclude-host"],
        "gpu-health": ["exclude-host"],
        "host": ["exclude-host"],
    }.get(cause, ["exclude-host"])
    evidence = {
        "straggler_rank": who,
        "late_in_pct_of_collectives": 100.0 * share_late,
        "late_by_chance_p": p_value,
        "matched_collectives": len(instances),
        "peer_wait_ms_per_step": wait_ms_per_step,
        "peer_wait_pct_of_step": wait_pct,
        "c4_class": "non-communication-slow",
        "cause": cause,
    }
    evidence.update(cause_ev)
    return Finding(
        id="comm-straggler",
        category="communication",
        title=f"Rank {who} is the straggler ({cause}): its peers wait {wait_pct:.1f}% of each step in collectives",
        severity=grade(wait_pct),
        impact=Impact(wait_pct, wait_ms_per_step),
        evidence=evidence,
        where={"ranks": [who], "peers": [r for r in ranks if r != who]},
        confidence=confidence,
        fixes=fixes,
        analyzer="communication",
        advice=_CAUSE_ADVICE.get(cause, "balance the work across ranks"),
    )


_CAUSE_ADVICE = {
    "data": "the late rank waits for its input: more DataLoader workers, pinned memory, or GPU-side preprocessing on that rank",
    "compute": "the late rank computes more than its peers: balance the work (uneven batches, extra per-rank work)",
    "gpu-health": "the late rank's GPU runs slower (clocks / throttling): check cooling and power, or exclude the host",
    "host": "the late rank spends more host time per step (Python, logging, checkpoints): move that work off the step",
}


def _per_step(rd: RankData, field: str) -> float:
    vals = [getattr(b, field) for b in rd.breakdown]
    return float(np.mean(vals)) if vals else 0.0


def _telemetry_wait(rd: RankData) -> float | None:
    tel = rd.telemetry
    if tel is None or "data_wait_ms" not in tel or not len(tel["data_wait_ms"]):
        return None
    vals = np.asarray(tel["data_wait_ms"], dtype=float)
    vals = vals[np.isfinite(vals)]
    return float(np.median(vals)) if vals.size else None


def _sm_clock(rd: RankData) -> tuple[float | None, int]:
    nv = rd.nvml
    if not nv or "sm_clock_mhz" not in nv:
        return None, 0
    clk = np.asarray(nv["sm_clock_mhz"], dtype=float)
    util = np.asarray(nv.get("gpu_util_pct", np.full(clk.shape, 100.0)), dtype=float)
    busy = clk[np.isfinite(clk) & (util >= 50)]
    reasons = [_reason_bits(v) for v in nv.get("clock_event_reasons", [])]
    # Bits that mean the GPU slowed itself down (not idle / app-clock settings): see gpu_health.
    slow_bits = 0x8 | 0x20 | 0x40 | 0x80 | 0x4
    throttled = sum(1 for bits in reasons if bits is not None and bits & slow_bits)
    return (float(np.median(busy)) if busy.size else None), throttled


def late_by_chance_p(late: int, instances: int, world: int) -> float:
    """P(a given rank is last in >= ``late`` of ``instances`` collectives) if each of ``world``
    ranks were equally likely to be last: the one-sided binomial tail."""
    p = 1.0 / max(world, 1)
    return float(sum(math.comb(instances, k) * p**k * (1 - p) ** (instances - k) for k in range(late, instances + 1)))


def _reason_bits(value: Any) -> int | None:
    """NVML clock-event reasons as written in nvml.csv: hex text (``0x20``), a number, or empty."""
    try:
        if isinstance(value, str):
            return int(value, 0) if value.strip() else None
        return None if value is None or value != value else int(value)
    except (TypeError, ValueError):
        return None


def _cause(ctx: AnalysisContext, who: int, wait_ms: float) -> tuple[str, dict[str, Any], float]:
    me = next(rd for rd in ctx.ranks if rd.rank == who)
    peers = [rd for rd in ctx.ranks if rd.rank != who]
    excess: dict[str, float] = {}
    ev: dict[str, Any] = {}

    def peer_median(values: list[float]) -> float:
        return float(np.median(values)) if values else 0.0

    my_wait = _telemetry_wait(me)
    if my_wait is not None:
        peer_waits = [w for w in (_telemetry_wait(p) for p in peers) if w is not None]
        excess["data"] = my_wait - peer_median(peer_waits)
    else:
        excess["data"] = _per_step(me, "data_wait_ms") - peer_median([_per_step(p, "data_wait_ms") for p in peers])
    excess["compute"] = _per_step(me, "compute_ms") - peer_median([_per_step(p, "compute_ms") for p in peers])
    excess["host"] = _per_step(me, "host_other_ms") - peer_median([_per_step(p, "host_other_ms") for p in peers])
    for key, val in excess.items():
        ev[f"straggler_extra_{key}_ms_per_step"] = val
    clock, throttled = _sm_clock(me)
    peer_clocks = [c for c in (_sm_clock(p)[0] for p in peers) if c is not None]
    if clock is not None and peer_clocks:
        ev["straggler_sm_clock_mhz"] = clock
        ev["peer_sm_clock_mhz"] = peer_median(peer_clocks)
        ev["straggler_throttled_samples"] = throttled
        deficit = 1.0 - clock / max(peer_median(peer_clocks), 1.0)
        if deficit > 0.05 or throttled:
            # A clock deficit slows the compute it runs: charge it the compute excess it explains.
            excess["gpu-health"] = max(excess["compute"], 0.0) + deficit * _per_step(me, "compute_ms")
    cause = max(excess, key=excess.__getitem__)
    best = excess[cause]
    if best <= 0:
        return "unknown", ev, 0.4
    confidence = 0.9 if best >= 0.5 * wait_ms else 0.6
    return cause, ev, confidence


def _slow_link(ctx: AnalysisContext, instances: list[dict[int, Collective]]) -> Finding | None:
    peak = LINK_PEAK_BUSBW_GBPS.get(ctx.device_name or "")
    rates: dict[str, list[float]] = defaultdict(list)
    for inst in instances:
        c = min(inst.values(), key=lambda x: x.dur_ns)
        if c.nbytes < LARGE_MSG_BYTES or c.dur_ns <= 0:
            continue
        algbw = c.nbytes / c.dur_ns  # bytes per ns == GB/s
        rates[c.name].append(algbw * _bus_factor(c.name, c.group_size))
    if not rates or peak is None:
        return None
    med = {k: float(np.median(v)) for k, v in rates.items()}
    worst = min(med, key=med.__getitem__)
    if med[worst] >= SLOW_LINK_FRACTION * peak:
        return None
    comm_ms = sum(b.comm_exposed_ms for rd in ctx.ranks for b in rd.breakdown) / max(
        sum(len(rd.breakdown) for rd in ctx.ranks), 1
    )
    step_ms = _step_ms(ctx)
    share = 100.0 * comm_ms / step_ms if step_ms else 0.0
    return Finding(
        id="comm-slow-link",
        category="communication",
        title=f"{worst} bus bandwidth {med[worst]:.0f} GB/s is under half the link's {peak:.0f} GB/s",
        severity=grade(share),
        impact=Impact(share, comm_ms * (1 - med[worst] / peak)),
        evidence={
            "busbw_gbps_by_collective": med,
            "link_peak_busbw_gbps": peak,
            "c4_class": "communication-slow",
            "large_collectives": sum(len(v) for v in rates.values()),
        },
        where={"ranks": sorted(instances[0])},
        confidence=0.6,
        fixes=["grad-compression", "exclude-host"],
        analyzer="communication",
        advice="check the link (NCCL_DEBUG=INFO topology, NVLink/PCIe state) or send fewer bytes",
    )


def bandwidth_table(ctx: AnalysisContext, instances: list[dict[int, Collective]]) -> dict[str, dict[str, float]]:
    """Per collective type: count, median message, and the median algbw / busbw of the last arriver."""
    peak = LINK_PEAK_BUSBW_GBPS.get(ctx.device_name or "")
    rows: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for inst in instances:
        c = min(inst.values(), key=lambda x: x.dur_ns)
        if c.nbytes <= 0 or c.dur_ns <= 0:
            continue
        algbw = c.nbytes / c.dur_ns
        rows[c.name].append((c.nbytes, algbw, algbw * _bus_factor(c.name, c.group_size)))
    table: dict[str, dict[str, float]] = {}
    for name, vals in rows.items():
        arr = np.asarray(vals, dtype=float)
        entry = {
            "count": float(len(vals)),
            "median_msg_mb": float(np.median(arr[:, 0])) / 2**20,
            "median_algbw_gbps": float(np.median(arr[:, 1])),
            "median_busbw_gbps": float(np.median(arr[:, 2])),
            "max_busbw_gbps": float(arr[:, 2].max()),
        }
        if peak:
            entry["max_busbw_pct_of_link_peak"] = 100.0 * entry["max_busbw_gbps"] / peak
        table[name] = entry
    return table


def _bandwidth(ctx: AnalysisContext, instances: list[dict[int, Collective]]) -> list[Finding]:
    """An info finding that carries the per-collective bandwidth table (no action implied)."""
    table = bandwidth_table(ctx, instances)
    if not table:
        return []
    return [
        Finding(
            id="comm-bandwidth",
            category="communication",
            title="Collective bandwidth (nccl-tests bus bandwidth of the last arriver)",
            severity=Severity.INFO,
            impact=Impact(0.0, 0.0),
            evidence={"by_collective": table, "link_peak_busbw_gbps": LINK_PEAK_BUSBW_GBPS.get(ctx.device_name or "")},
            where={"ranks": sorted(instances[0])},
            confidence=0.9,
            analyzer="communication",
        )
    ]


def _hangs(
    ctx: AnalysisContext, per_rank: dict[int, list[Collective]], instances: list[dict[int, Collective]]
) -> list[Finding]:
    evidence: dict[str, Any] = {}
    stuck = {r: [c.name for c in cs if c.dur_ns >= HANG_MIN_NS] for r, cs in per_rank.items()}
    stuck = {r: names for r, names in stuck.items() if names}
    if stuck:
        evidence["stuck_collectives_by_rank"] = {r: len(v) for r, v in stuck.items()}
        evidence["stuck_threshold_s"] = HANG_MIN_NS / 1e9
    dumps = _flight_recorder(ctx)
    if dumps:
        evidence["flight_recorder_unfinished"] = dumps
    if not evidence:
        return []
    return [
        Finding(
            id="comm-hang-risk",
            category="communication",
            title="Collectives that waited for seconds or never finished (hang evidence)",
            severity=Severity.HIGH,
            impact=Impact(0.0, 0.0),
            evidence=evidence,
            where={"ranks": sorted(stuck)},
            confidence=0.8 if dumps else 0.6,
            fixes=["exclude-host"],
            analyzer="communication",
            advice="a rank that never joins a collective hangs the job: compare the ranks' last collectives; "
            "set TORCH_NCCL_TRACE_BUFFER_SIZE to record the flight recorder",
        )
    ]


def _flight_recorder(ctx: AnalysisContext) -> dict[str, int]:
    root = Path(ctx.source)
    if not root.is_dir():
        return {}
    out: dict[str, int] = {}
    for path in sorted(root.glob("**/*nccl_trace*.json"))[:64]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        entries = data.get("entries", []) if isinstance(data, dict) else []
        pending = sum(1 for e in entries if isinstance(e, dict) and e.get("state") not in ("completed", None))
        if pending:
            out[path.name] = pending
    return out
