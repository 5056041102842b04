"""One accounting of the step: findings explain disjoint slices of the step-time breakdown.

Run by :func:`~stallscope.analyzers.run.run_analyzers` after every analyzer, before ranking
(docs/analyzers.md, "One accounting of the step"):

1. **Slices.** Each finding's time comes from parts of the breakdown (``StepBreakdown``,
   docs/breakdown.md): its ``Finding.slice`` when the analyzer set one, else its category's
   default in :data:`CATEGORY_SLICES`. ``()`` is the whole step (GPU health, memory capacity:
   they slow every part alike).
2. **Caps.** Findings that share a part cannot together claim more than its milliseconds per
   step. The part goes to the findings in order of confidence (then larger claim): the better
   evidenced explanation owns the time, a weaker one keeps only what is left (a finding with
   several parts fills them in the order it names them). Then the sum over all findings is held
   to the step (the report's median step): if it is larger, every saving is scaled by the same
   factor (a change of unit, not of ownership: the parts are per traced step, the median may
   come from untraced steps). The analyzer's own figures stay in the evidence
   (``est_saving_uncapped_ms``, ``step_time_uncapped_pct``); ``step_time_pct`` is scaled with
   the saving, so each analyzer's meaning of it is kept.
3. **One time, two names.** A straggler whose cause is its data wait (``comm-straggler`` with
   ``cause: data``) and the input-pipeline finding describe the same time twice: the straggler's
   wait in ``__next__`` (a ``data_wait_ms`` part) is its peers' wait in a collective (a
   ``comm_exposed_ms`` part, on other ranks). Both findings stay (the user needs both names),
   but together they save no more than the larger of the two after the caps: the lesser claims
   nothing (``shared_with`` in its evidence names the other) and the caps are drawn again
   without it, so the part it held goes to the findings that share it; then the sum is held
   to the step as in 2.
4. **Coverage.** Every part that is not useful compute and holds at least :data:`NOISE_PCT` of
   the step is explained by the savings findings claim from it, or the report says why not.

The accounting window is the traced steps (the breakdown) plus the GPU work they launched that
ran after the last step ended (a host that runs ahead of the GPU leaves it there: compute,
copies and exposed communication by the breakdown's own rules), as the analyzers' own window
(``_common.window_ns``) reaches to the end of that work. No torch import.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from stallscope.analyzers.base import SLICES, Finding, Impact
from stallscope.analyzers.breakdown import rank_breakdown
from stallscope.analyzers.model import Step, StepBreakdown

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext, RankData

__all__ = ["CATEGORY_SLICES", "COMPUTE", "NOISE_PCT", "Accounting", "BucketAccount", "account", "slice_of"]

COMPUTE = "compute_ms"

# Where each category's time lies in the breakdown. Kernels that could run faster (roofline,
# precision, attention) are GPU compute. Compiling inside a step is host work while the GPU idles
# (on a CPU timeline, partly CPU ops: compute). A blocking copy is a copy plus the host's wait
# for it; a metric computed on the host is host time, often entered through a blocking readback.
# When the host is the slower side, the GPU idle after a sync drained its queue is the host's own
# work (the synchronization finding claims only what removing the syncs would save): host-bound.
CATEGORY_SLICES: dict[str, tuple[str, ...]] = {
    "memory-bound": ("compute_ms",),
    "precision": ("compute_ms",),
    "attention": ("compute_ms",),
    "compile": ("host_other_ms", "compute_ms"),
    "input-pipeline": ("data_wait_ms",),
    "communication": ("comm_exposed_ms",),
    "synchronization": ("sync_wait_ms",),
    "host-bound": ("launch_overhead_ms", "host_other_ms", "sync_wait_ms"),
    "memory-copy": ("memory_ms", "sync_wait_ms"),
    "cpu-metric": ("host_other_ms", "sync_wait_ms"),
    "gpu-health": (),
    "memory-capacity": (),
}

# A part under 5 % of the step needs no cause. 5 % is the smallest change the gate catches with
# its default 10 paired rounds under the 2 % run-to-run noise of a training step (docs/ci.md), so
# neither the stall nor its fix could be told from noise; it is also where the common grading
# puts "medium" (analyzers/builtin/_common.py). The breakdown's own error (parts within 1 % of
# the wall time) is well below it.
NOISE_PCT = 5.0

# Why a part above the noise threshold can hold time no finding claims, by part.
_NO_CAUSE = {
    "memory_ms": "copies or memsets run with no kernel beside them and none was flagged (pageable, tiny, device-to-host)",
    "comm_exposed_ms": "communication runs with no compute beside it and no straggler, bandwidth or overlap cause was found",
    "data_wait_ms": "the loop waits in the DataLoader and no cause (workers, preprocessing, copies) was found",
    "sync_wait_ms": "the host waits in synchronizing calls (or the GPU idles after one drained its queue) "
    "and no call was tied to a cause",
    "launch_overhead_ms": "the GPU waits on launches and no launch-bound pattern was recognised",
    "host_other_ms": "the host runs Python or CPU ops while the GPU idles, with no runtime call and no pattern "
    "an analyzer recognises",
}


def slice_of(finding: Finding) -> tuple[str, ...]:
    """The breakdown parts a finding's time comes from: its own ``slice``, else its category's."""
    if finding.slice is not None:
        return tuple(finding.slice)
    return CATEGORY_SLICES.get(finding.category, ())


@dataclass
class BucketAccount:
    """One part of the breakdown: its time per step and the savings findings claim from it."""

    name: str
    ms_per_step: float
    pct: float
    claimed_ms: dict[str, float] = field(default_factory=dict)  # finding id -> ms per step
    why: str | None = None
    rank: int | None = None  # the rank the figures are from, when there are several

    @property
    def explained_ms(self) -> float:
        return float(sum(self.claimed_ms.values()))

    @property
    def unexplained_ms(self) -> float:
        return max(0.0, self.ms_per_step - self.explained_ms)

    def share(self, ms: float, step_ms: float) -> float:
        """``ms`` as a percentage of the step the part's ``pct`` refers to."""
        if self.ms_per_step > 0:
            return self.pct * ms / self.ms_per_step
        return 100.0 * ms / step_ms if step_ms > 0 else 0.0

    def to_dict(self, step_ms: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ms_per_step": round(self.ms_per_step, 4),
            "pct": round(self.pct, 3),
            "explained_by": [k for k, v in sorted(self.claimed_ms.items(), key=lambda kv: -kv[1]) if v > 0],
            "explained_pct": round(self.share(self.explained_ms, step_ms), 3),
            "unexplained_pct": round(self.share(self.unexplained_ms, step_ms), 3),
        }
        if self.why:
            out["why"] = self.why
        if self.rank is not None:
            out["rank"] = self.rank
        return out


@dataclass
class Accounting:
    """The accounting of one report: parts, what findings claim from them, and the caps applied."""

    step_ms: float  # the step the sum of savings is held to
    window_ms_per_step: float  # the accounting window per step (the breakdown and the GPU's tail)
    gpu_tail_ms_per_step: float
    buckets: dict[str, BucketAccount]
    claimed_ms: float = 0.0
    uncapped_ms: float = 0.0
    capped: list[str] = field(default_factory=list)
    noise_pct: float = NOISE_PCT

    def to_dict(self) -> dict[str, Any]:
        """The report's ``accounting`` section (keys without ``_ms`` name the breakdown parts)."""
        out: dict[str, Any] = {
            "step_ms": round(self.step_ms, 4),
            "window_ms_per_step": round(self.window_ms_per_step, 4),
            "noise_pct": self.noise_pct,
            "claimed_ms_per_step": round(self.claimed_ms, 4),
            "uncapped_ms_per_step": round(self.uncapped_ms, 4),
            "capped": list(self.capped),
            "buckets": {k.removesuffix("_ms"): b.to_dict(self.step_ms) for k, b in self.buckets.items()},
        }
        if self.gpu_tail_ms_per_step > 0:
            out["gpu_tail_ms_per_step"] = round(self.gpu_tail_ms_per_step, 4)
        return out


def _gpu_tail(rd: RankData) -> StepBreakdown | None:
    """The breakdown of the time after the last step ended until the GPU work the steps launched
    had finished (None when it finished inside the steps)."""
    ev = rd.events
    if rd.meta.get("compacted") or not len(ev) or not rd.steps:
        return None
    g = ev.gpu_rows()
    g = g[ev.step[g] >= 0]
    if not len(g):
        return None
    last = max(s.end_ns for s in rd.steps)
    end = int((ev.ts_ns[g] + ev.dur_ns[g]).max())
    if end <= last:
        return None
    parts = rank_breakdown(dataclasses.replace(rd, steps=[Step(-1, last, end, "gpu-tail")]))
    return parts[0] if parts else None


# The parts of the tail that count: the GPU running what the steps launched. The GPU idle in the
# tail cannot be charged to the loop's host: the host has left the steps (what it does there is
# the profiler's teardown, whose final synchronize would read as a sync wait), and what kept the
# GPU from starting may be work the trace never recorded.
_TAIL_PARTS = ("compute_ms", "memory_ms", "comm_exposed_ms")


def _rank_parts(rd: RankData) -> tuple[dict[str, float], float, float] | None:
    """(ms per step of each part over the accounting window, window ms per step, tail ms per step)."""
    if not rd.breakdown:
        return None
    n = len(rd.breakdown)
    tot = {k: float(sum(getattr(b, k) for b in rd.breakdown)) for k in SLICES}
    tail = _gpu_tail(rd)
    tail_ms = 0.0
    if tail is not None:
        for k in _TAIL_PARTS:
            tot[k] += float(getattr(tail, k))
            tail_ms += float(getattr(tail, k))
    window = sum(b.wall_ms for b in rd.breakdown) + tail_ms
    return {k: v / n for k, v in tot.items()}, window / n, tail_ms / n


def _buckets(ctx: AnalysisContext) -> tuple[dict[str, BucketAccount], float, float] | None:
    """Each part's ms per step, from the rank where it is largest (findings are kept from the rank
    where they cost most), with the window and tail per step of the longest rank."""
    ranks = [(rd.rank, p) for rd, p in ((rd, _rank_parts(rd)) for rd in ctx.ranks) if p is not None]
    if not ranks:
        return None
    several = len(ranks) > 1
    out: dict[str, BucketAccount] = {}
    for k in SLICES:
        rank, (parts, window, _) = max(ranks, key=lambda r: r[1][0][k])
        pct = 100.0 * parts[k] / window if window > 0 else 0.0
        out[k] = BucketAccount(k, parts[k], pct, rank=rank if several else None)
    _, (_, window, tail) = max(ranks, key=lambda r: r[1][1])
    return out, window, tail


def _floor4(x: float) -> float:
    """Down to the 4 decimals the report keeps, so rounding cannot lift a capped sum over the step."""
    return math.floor(x * 1e4) / 1e4


def _why(
    b: BucketAccount,
    step_ms: float,
    findings: list[Finding],
    ran: Iterable[str] | None,
    skipped: Mapping[str, list[str]],
    failed: Mapping[str, str],
) -> str | None:
    """Why a part holds time no finding claims (None when nothing needs saying)."""
    if b.ms_per_step <= 0 or b.name == COMPUTE:
        return None
    if b.pct < NOISE_PCT:
        return f"below the noise threshold ({NOISE_PCT:g} % of the step)"
    if b.share(b.unexplained_ms, step_ms) < NOISE_PCT:
        return None
    could = [c for c, sl in CATEGORY_SLICES.items() if b.name in sl]
    done = set(ran) if ran is not None else None
    not_run = [c for c in could if done is not None and c not in done and c not in failed and c not in skipped]
    broken = [c for c in could if c in failed]
    missing = {c: skipped[c] for c in could if c in skipped}
    named = [f.id for f in findings if b.name in slice_of(f)]
    claimed = [k for k, v in b.claimed_ms.items() if v > 0]
    reasons = []
    if claimed:
        reasons.append(f"the findings claim {b.share(b.explained_ms, step_ms):.1f} % of it")
    for f in findings:  # a finding that claims less than its part because its fix cannot save more
        if b.name in slice_of(f) and isinstance(f.evidence.get("bounded_by"), str):
            reasons.append(f"{f.id} claims only what its fix can save: {f.evidence['bounded_by']}")
    unclaimed = [i for i in named if i not in claimed]
    shared = {f.id: f.evidence["shared_with"] for f in findings if f.id in unclaimed and "shared_with" in f.evidence}
    for i, other in shared.items():
        reasons.append(f"{i} names it, but the same time is {other}'s saving, counted there")
    unclaimed = [i for i in unclaimed if i not in shared]
    if unclaimed:
        one = len(unclaimed) == 1
        reasons.append(
            f"{', '.join(unclaimed)} {'names' if one else 'name'} it but {'claims' if one else 'claim'} "
            "no saving from it (see the evidence)"
        )
    if broken:
        reasons.append(f"analyzer {', '.join(broken)} failed")
    for c, m in sorted(missing.items()):
        reasons.append(f"analyzer {c} could not run (needs {', '.join(m)})")
    if not_run:
        reasons.append(f"analyzer {', '.join(not_run)} was not run")
    if not unclaimed and not shared:
        who = "no analyzer that ran" if broken or missing or not_run else "no analyzer"
        reasons.append(f"{who} could name a cause{' for the rest' if claimed else ''}: {_NO_CAUSE[b.name]}")
    return "; ".join(reasons)


def _allocate(
    findings: list[Finding], claims: list[float], buckets: dict[str, BucketAccount]
) -> tuple[list[float], list[dict[str, float]]]:
    """Each finding's saving under the caps of its parts (module doc, 2) and what it takes from each."""
    remaining = {k: b.ms_per_step for k, b in buckets.items()}
    allowed = list(claims)
    order = sorted(range(len(findings)), key=lambda i: (-findings[i].confidence, -claims[i], findings[i].id))
    takes: list[dict[str, float]] = [{} for _ in findings]
    for i in order:
        parts = slice_of(findings[i])
        if not parts:
            continue
        want = claims[i]
        for k in parts:
            take = min(want, remaining[k])
            if take > 0:
                takes[i][k] = take
                remaining[k] -= take
                want -= take
        allowed[i] = claims[i] - want
    return allowed, takes


def _is_data_straggler(f: Finding) -> bool:
    return f.id == "comm-straggler" and f.evidence.get("cause") == "data"


def _counted_once(findings: list[Finding], allowed: list[float]) -> dict[int, int]:
    """Findings that name time another finding already claims (module doc, 3): index of the lesser
    -> index of the one that keeps the saving."""
    out: dict[int, int] = {}
    for i, f in enumerate(findings):
        if not _is_data_straggler(f):
            continue
        for j, g in enumerate(findings):
            if g.category == "input-pipeline" and i not in out and j not in out:
                lesser, larger = (i, j) if allowed[i] <= allowed[j] else (j, i)
                out[lesser] = larger
    return out


def account(
    ctx: AnalysisContext,
    findings: list[Finding],
    step_ms: float | None = None,
    ran: Iterable[str] | None = None,
    skipped: Mapping[str, list[str]] | None = None,
    failed: Mapping[str, str] | None = None,
) -> Accounting | None:
    """Cap the findings' savings to the parts of the step they come from and to the step itself
    (in place), and return the accounting; None when the context has no steps.

    ``step_ms`` is the step the report states (its median); without it, the accounting window
    per step. ``ran`` / ``skipped`` / ``failed`` (analyzer names, as ``run_analyzers`` collects
    them; ``ran=None``: not known) say why a part may have no finding."""
    got = _buckets(ctx)
    if got is None:
        return None
    buckets, window, tail = got
    step = float(step_ms) if step_ms is not None and np.isfinite(step_ms) and step_ms > 0 else window
    claims = [max(0.0, float(f.impact.est_saving_ms_per_step)) for f in findings]
    allowed, takes = _allocate(findings, claims, buckets)
    lesser = _counted_once(findings, allowed)
    if lesser:
        allowed, takes = _allocate(findings, [0.0 if i in lesser else c for i, c in enumerate(claims)], buckets)
        for i, other in lesser.items():
            findings[i].evidence["shared_with"] = findings[other].id
    total = sum(allowed)
    # compared as the report writes them (4 decimals), so that rounding cannot lift the sum over it
    if sum(round(a, 4) for a in allowed) > round(step, 4):
        scale = step / total
        allowed = [_floor4(a * scale) for a in allowed]
        takes = [{k: v * scale for k, v in t.items()} for t in takes]
    for i, f in enumerate(findings):
        for k, v in takes[i].items():
            buckets[k].claimed_ms[f.id] = buckets[k].claimed_ms.get(f.id, 0.0) + v
    capped = []
    for f, claim, got_ms in zip(findings, claims, allowed, strict=True):
        if got_ms < claim - 1e-6:
            capped.append(f.id)
            pct = float(f.impact.step_time_pct)
            f.evidence["est_saving_uncapped_ms"] = claim
            f.evidence["step_time_uncapped_pct"] = pct
            f.impact = Impact(pct * got_ms / claim if claim > 0 else pct, got_ms)
    acc = Accounting(step, window, tail, buckets, float(sum(allowed)), float(sum(claims)), capped)
    for b in buckets.values():
        b.why = _why(b, step, findings, ran, skipped or {}, failed or {})
    return acc
