"""communication: exposed collectives by type, bus bandwidth, the straggler rank, hang evidence.

Which collectives each rank ran, of which type, and their exposed time by type come from
:mod:`stallscope.analyzers.collectives`; the straggler rule (telemetry of every step, then the
window) from :mod:`stallscope.analyzers.straggler`. Per matched collective the rank whose
collective took the *shortest* time arrived last: everybody else's extra time is waiting for it.

**Advice by type.** Exposed communication is reported with the types that hold at least
:data:`ADVICE_MIN_SHARE` of it, and advice for each: DDP's gradient all-reduce (overlap, buckets,
``no_sync`` accumulation), FSDP / ZeRO all-gather and reduce-scatter (prefetch,
``limit_all_gathers``, wrap size, sharding strategy), an embedding or expert all-to-all (balance,
overlap), DDP's buffer broadcast (``broadcast_buffers=False``), pipeline send/recv (micro-batches,
schedule).

Thresholds and why:

* **Exposed communication**: communication time with no compute running beside it, as a share
  of step time (breakdown ``comm_exposed_ms``), graded 5 % / 20 %. Overlapped communication is
  free and not reported. Waits caused by a named straggler are its finding, not this one.
* **Communication-slow** (C4's class for a slow link rather than a slow rank): large collectives
  (>= 1 MiB, where bandwidth rather than latency dominates) whose bus bandwidth is below half of
  the link's measured peak, group-wide. Every rank leaves a collective together, so one slow
  link paces the whole group and no rank's kernel is longer than its peers' for it: the group
  is named, not a rank. The bandwidth is the last arriver's, who waited for nobody, so a
  straggler neither hides nor fakes a slow link: both are looked for. Its cost is the exposed
  communication per step (with a straggler, the straggler's own: every collective waits for it,
  then it transfers) times the bandwidth's shortfall.
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
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from stallscope.analyzers.arrays import median
from stallscope.analyzers.base import Analyzer, Finding, Impact, Severity, register
from stallscope.analyzers.builtin._common import grade
from stallscope.analyzers.collectives import Collective, collectives_of, exposed_by_type, match_instances
from stallscope.analyzers.model import AnalysisContext
from stallscope.analyzers.straggler import STRAGGLER_WAIT_PCT, find_straggler, late_by_chance_p, step_ms

__all__ = [
    "Collective",
    "Communication",
    "STRAGGLER_WAIT_PCT",
    "bandwidth_table",
    "collectives_of",
    "exposed_by_type",
    "late_by_chance_p",
    "match_instances",
]

LARGE_MSG_BYTES = 1 << 20
SLOW_LINK_FRACTION = 0.5
EXPOSED_MEDIUM_PCT = 5.0
EXPOSED_HIGH_PCT = 20.0
HANG_MIN_NS = 10 * 1_000_000_000
# A collective type gets its own advice when it holds at least a quarter of the exposed time:
# below that, fixing it would save under a quarter of a finding that starts at 5 % of the step
# (about 1 % of step time, the noise of a training step).
ADVICE_MIN_SHARE = 0.25

# Measured bus-bandwidth peaks of a link (GB/s); see bench/results/distributed.yaml for how.
LINK_PEAK_BUSBW_GBPS = {"NVIDIA H200": 317.6}  # 2x H200 of one host, all-reduce at 1 GiB

_LABEL = {
    "allreduce": "all-reduce",
    "allgather": "all-gather",
    "reducescatter": "reduce-scatter",
    "alltoall": "all-to-all",
    "sendrecv": "send/recv",
}
_ADVICE = {
    "allreduce": (
        "gradient all-reduce (DDP): keep it overlapped with backward (default buckets, no manual all-reduce after "
        "backward; tune bucket_cap_mb), accumulate gradients under no_sync() so it runs once per optimizer step, "
        "or shrink the bytes (bf16 compression hook)",
        ["overlap", "ddp-bucket", "grad-compression"],
    ),
    "allgather": (
        "parameter all-gather (FSDP / ZeRO): prefetch the next unit's all-gather (FSDP forward_prefetch=True, "
        "backward_prefetch=BACKWARD_PRE; FSDP2 set_modules_to_forward_prefetch), keep limit_all_gathers on, wrap "
        "larger units (fewer, bigger collectives), or shard less (SHARD_GRAD_OP, HYBRID_SHARD across nodes)",
        ["fsdp-prefetch", "fsdp-wrap", "fsdp-sharding"],
    ),
    "reducescatter": (
        "gradient reduce-scatter (FSDP / ZeRO): let it overlap the next unit's backward (backward_prefetch="
        "BACKWARD_PRE), wrap larger units, reduce in bf16 (MixedPrecision reduce_dtype), or shard less "
        "(SHARD_GRAD_OP, HYBRID_SHARD across nodes)",
        ["fsdp-prefetch", "fsdp-wrap", "fsdp-sharding"],
    ),
    "alltoall": (
        "all-to-all (embedding or expert exchange: TorchRec sharded embeddings, MoE): balance what each rank "
        "sends (sharding plan, capacity factor) and overlap the exchange with dense compute (TorchRec's "
        "TrainPipelineSparseDist pipelines it behind the previous batch)",
        ["alltoall-balance", "alltoall-overlap"],
    ),
    "broadcast": (
        "broadcast: DDP broadcasts module buffers (BatchNorm statistics) from rank 0 at every forward; pass "
        "broadcast_buffers=False when the buffers need not match across ranks, and broadcast other data once, "
        "not every step",
        ["ddp-broadcast-buffers"],
    ),
    "sendrecv": (
        "point-to-point send/recv (pipeline-parallel stages): more micro-batches per step or an interleaved "
        "schedule (1F1B, interleaved 1F1B, zero-bubble) so transfers hide behind compute, and balanced stages",
        ["pipeline-schedule"],
    ),
}
_GENERIC_ADVICE = ("overlap the collective with compute, or send fewer bytes", ["overlap"])


def _bus_factor(name: str, n: int) -> float:
    if n <= 1:
        return 1.0
    if name == "allreduce":
        return 2.0 * (n - 1) / n
    if name in ("allgather", "reducescatter", "alltoall"):
        return (n - 1) / n
    return 1.0


@register
class Communication(Analyzer):
    """Exposed communication by collective type, slow links, the straggler rank, hang evidence."""

    name = "communication"
    requires = frozenset({"trace"})
    description = "collective waits across ranks: straggler and cause, exposed comm by type, bus bandwidth, hangs"

    def analyze(self, ctx: AnalysisContext) -> list[Finding]:
        if len(ctx.ranks) < 2:
            return _exposed(ctx, 0.0)
        world = len(ctx.ranks)
        per_rank = {rd.rank: collectives_of(rd, world) for rd in ctx.ranks}
        instances = match_instances(per_rank)
        findings = _hangs(ctx, per_rank, instances)
        straggler, waited_ms = find_straggler(ctx, instances)
        if straggler is not None:
            findings.append(straggler)
        slow = _slow_link(ctx, instances, straggler.where["ranks"][0] if straggler is not None else None)
        if slow is not None:
            findings.append(slow)
        # Peers' waits for the straggler show up as exposed communication: count them once.
        return findings + _exposed(ctx, waited_ms) + _bandwidth(ctx, instances)


def _exposed(ctx: AnalysisContext, straggler_wait_ms_per_step: float) -> list[Finding]:
    wall = sum(b.wall_ms for rd in ctx.ranks for b in rd.breakdown)
    measured = sum(b.comm_exposed_ms for rd in ctx.ranks for b in rd.breakdown)
    n_rank_steps = sum(len(rd.breakdown) for rd in ctx.ranks)
    peers = max(len(ctx.ranks) - 1, 0)
    # The waits were measured on the peers only: subtract them from the peers' share.
    exposed = max(0.0, measured - straggler_wait_ms_per_step * peers * (n_rank_steps / max(len(ctx.ranks), 1)))
    overlapped = sum(b.comm_overlapped_ms for rd in ctx.ranks for b in rd.breakdown)
    if wall <= 0 or exposed <= 0:
        return []
    share = 100.0 * exposed / wall
    n_steps = n_rank_steps or 1
    per_rank = {
        rd.rank: round(
            100.0 * sum(b.comm_exposed_ms for b in rd.breakdown) / max(sum(b.wall_ms for b in rd.breakdown), 1e-9), 2
        )
        for rd in ctx.ranks
        if rd.breakdown
    }
    by_type: dict[str, float] = defaultdict(float)
    for rd in ctx.ranks:
        for t, ms in exposed_by_type(rd).items():
            by_type[t] += ms * exposed / measured / n_steps  # the straggler's waits left out in proportion
    ranked = sorted(by_type, key=lambda t: -by_type[t])
    advised = [t for t in ranked if by_type[t] >= ADVICE_MIN_SHARE * exposed / n_steps][:3] or ["other"]
    advice = "; ".join(_ADVICE.get(t, _GENERIC_ADVICE)[0] for t in advised)
    fixes = list(dict.fromkeys(f for t in advised for f in _ADVICE.get(t, _GENERIC_ADVICE)[1]))
    mostly = f", mostly {_LABEL.get(ranked[0], ranked[0])}" if ranked else ""
    total_comm = exposed + overlapped
    return [
        Finding(
            id="comm-exposed",
            category="communication",
            title=f"Communication not hidden by compute: {share:.1f}% of step time{mostly}",
            severity=grade(share, EXPOSED_MEDIUM_PCT, EXPOSED_HIGH_PCT),
            impact=Impact(share, exposed / n_steps),
            evidence={
                "comm_exposed_pct": share,
                "comm_exposed_ms_per_step": exposed / n_steps,
                "comm_exposed_ms_per_step_by_type": {t: by_type[t] for t in ranked},
                "dominant_collective": ranked[0] if ranked else "other",
                "comm_overlapped_pct_of_comm": 100.0 * overlapped / total_comm if total_comm else 0.0,
                "comm_exposed_pct_by_rank": per_rank,
            },
            where={"ranks": sorted(per_rank), "collectives": advised},
            confidence=0.8,
            analyzer="communication",
            fixes=fixes,
            advice=advice,
        )
    ]


def _slow_link(
    ctx: AnalysisContext, instances: list[dict[int, Collective]], straggler: int | None = None
) -> Finding | None:
    # the peak is one host's (NVLink); a group over several hosts runs over network cards, at a
    # fraction of it, and would look slow: judged only where the run does not span hosts
    per_rank = ctx.meta.get("per_rank")
    ranks = per_rank.values() if isinstance(per_rank, dict) else per_rank if isinstance(per_rank, list) else []
    hosts = {str(r["host"]) for r in ranks if isinstance(r, dict) and r.get("host")}
    peak = LINK_PEAK_BUSBW_GBPS.get(ctx.device_name or "") if len(hosts) <= 1 else None
    rates: dict[str, list[float]] = defaultdict(list)
    for inst in instances:
        c = min(inst.values(), key=lambda x: x.dur_ns)
        if c.nbytes < LARGE_MSG_BYTES or c.dur_ns <= 0:
            continue
        algbw = c.nbytes / c.dur_ns  # bytes per ns == GB/s
        rates[c.name].append(algbw * _bus_factor(c.name, c.group_size))
    if not rates or peak is None:
        return None
    med = {k: float(median(v)) for k, v in rates.items()}
    worst = min(med, key=med.__getitem__)
    if med[worst] >= SLOW_LINK_FRACTION * peak:
        return None
    # the exposed communication on the critical path: a straggler's own (its peers' is mostly
    # waiting for it), else every rank's
    on_path = [rd for rd in ctx.ranks if rd.rank == straggler] or ctx.ranks
    comm_ms = sum(b.comm_exposed_ms for rd in on_path for b in rd.breakdown) / max(
        sum(len(rd.breakdown) for rd in on_path), 1
    )
    step = step_ms(ctx)
    share = 100.0 * comm_ms / step if step else 0.0
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
            "median_msg_mb": float(median(arr[:, 0])) / 2**20,
            "median_algbw_gbps": float(median(arr[:, 1])),
            "median_busbw_gbps": float(median(arr[:, 2])),
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
