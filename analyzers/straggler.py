"""The straggler rank: found from the telemetry of every step of every rank, explained by the window.

In synchronous data parallelism every rank leaves each step's last collective together, so the
ranks' step times are the same and a slow rank shows up as *waits on its peers*, not as a longer
step of its own. Two sources show who makes the others wait:

* **Telemetry, every step of the run** (``steps.csv`` of each rank, docs/run-format.md). Per step
  number common to all ranks, a rank's *own* time (time spent on something other than waiting
  for its peers; ``data_wait_ms`` is the only such per-rank column the light telemetry has) minus
  the median of its peers' is its excess. The part of the excess that did not lengthen its own
  step (its step time minus the peers' median, clipped at zero) is what its peers spent waiting
  for it: all of it in a synchronous job, none of it when ranks do not wait for each other. Step
  0 (start-up) and the step that writes the trace are left out. A rank slow in compute or host
  work has no such column (its step time equals its peers'): the window finds it.
* **The trace window**: per matched collective the rank with the shortest collective arrived last
  (:mod:`stallscope.analyzers.collectives`); the time the others spent beyond it is their wait.

Rules and thresholds, and why:

* **Telemetry** names rank r when, over at least :data:`MIN_TELEMETRY_STEPS` steps, the median
  of its per-step caused wait is >= :data:`STRAGGLER_WAIT_PCT` % of the median step (below that a
  late rank costs less than the ordinary step-to-step jitter of a data-parallel step), the
  seeded percentile-bootstrap 95 % interval of that median lies above zero, and r has the largest
  own time in at least half of the steps, more often than chance (each of n ranks would be the
  slowest with probability 1/n: a one-sided binomial test at 1 %).
* **Window** names rank r when it arrived last in at least half of the matched collectives, the
  waits it causes are >= :data:`STRAGGLER_WAIT_PCT` % of the step, and either the binomial test on
  the collectives (1 %) or a one-sided Student t test on its per-step lateness (1 %, Bonferroni
  over the ranks for picking the latest; only when it was late in every one of at least
  :data:`MIN_T_STEPS` steps) says it is no chance. A sign test alone cannot reach 1 % on the
  default 5-step window of two ranks with one bucket per step (its best p is 1/32), while a rank
  late by 100 ms in each of 5 steps with a few ms of jitter is no chance.
* Telemetry wins when both name a rank (it saw every step; the window saw five); the window then
  gives the *why*: the straggler's own data wait, compute, host time and SM clock against its
  peers' median (the largest excess; high confidence when it is at least half the waits). A rank
  named from its data wait in every step is a data straggler whatever the window shows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stallscope.analyzers.arrays import median, quantile
from stallscope.analyzers.base import Finding, Impact
from stallscope.analyzers.builtin._common import covered_ns, grade
from stallscope.analyzers.collectives import Collective
from stallscope.analyzers.model import AnalysisContext, RankData, step_time_ms
from stallscope.analyzers.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, DEFAULT_ALPHA, student_t_sf

__all__ = [
    "STRAGGLER_WAIT_PCT",
    "TelemetryVerdict",
    "WindowVerdict",
    "find_straggler",
    "late_by_chance_p",
    "telemetry_straggler",
    "window_straggler",
]

STRAGGLER_WAIT_PCT = 10.0
LATE_MAJORITY = 0.5
LATE_SIGNIFICANCE = DEFAULT_ALPHA
# A rank slowest in every one of n steps has p = (1/2)^n among two ranks: 7 steps is the fewest
# that can reach 1 %. With fewer usable steps the telemetry abstains.
MIN_TELEMETRY_STEPS = 7
# The window's t test needs this many steps, each with the rank late: with 4 steps (3 degrees of
# freedom) the sample deviation of a loaded 2-core CPU run made a healthy rank look consistently
# late (tests/test_communication.py); the default window has 5.
MIN_T_STEPS = 5
# Per-step columns of steps.csv that measure a rank's own cost (not waiting for its peers).
OWN_TIME_COLUMNS = ("data_wait_ms",)


def late_by_chance_p(late: int, instances: int, world: int) -> float:
    """P(a given rank is last in >= ``late`` of ``instances`` collectives) if each of ``world``
    ranks were equally likely to be last: the one-sided binomial tail."""
    p = 1.0 / max(world, 1)
    return float(sum(math.comb(instances, k) * p**k * (1 - p) ** (instances - k) for k in range(late, instances + 1)))


def bootstrap_median_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Seeded percentile-bootstrap interval of the median of ``values`` (the gate's seed and
    resample count, so a verdict is the same on every run)."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    idx = rng.integers(0, values.size, size=(BOOTSTRAP_RESAMPLES, values.size))
    meds = median(values[idx], axis=1)
    lo, hi = quantile(meds, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


@dataclass
class TelemetryVerdict:
    """The telemetry's answer: the candidate rank and its figures over all usable steps."""

    rank: int
    column: str
    steps: int
    excess_ms: float  # median per-step wait it caused its peers
    ci95_ms: tuple[float, float]
    slowest_pct: float
    slowest_p: float
    step_ms: float  # median step time over the same steps
    named: bool

    @property
    def wait_pct(self) -> float:
        return 100.0 * self.excess_ms / self.step_ms if self.step_ms > 0 else 0.0

    def evidence(self) -> dict[str, Any]:
        return {
            "telemetry_column": self.column,
            "telemetry_steps": self.steps,
            "telemetry_excess_ms_per_step": self.excess_ms,
            "telemetry_excess_ci95_ms": list(self.ci95_ms),
            "telemetry_slowest_in_pct_of_steps": self.slowest_pct,
            "telemetry_slowest_by_chance_p": self.slowest_p,
            "telemetry_step_ms": self.step_ms,
        }


def _step_table(rd: RankData) -> dict[int, tuple[float, dict[str, float]]] | None:
    """step -> (step time, own-time columns) for the steps that count (see module doc)."""
    tel = rd.telemetry
    if not tel or "wall_ms" not in tel:
        return None
    wall = np.asarray(tel["wall_ms"], dtype=np.float64)
    gpu = np.asarray(tel.get("gpu_ms", np.full(wall.shape, np.nan)), dtype=np.float64)
    step_t = step_time_ms(wall, gpu)
    steps = np.asarray(tel.get("step", np.arange(wall.size)), dtype=np.float64)
    last = ((rd.meta.get("rank") or {}).get("window") or {}).get("last_step")
    export = last + 1 if isinstance(last, int) and not isinstance(last, bool) else None
    cols = {c: np.asarray(tel[c], dtype=np.float64) for c in OWN_TIME_COLUMNS if c in tel}
    out: dict[int, tuple[float, dict[str, float]]] = {}
    for i in range(wall.size):
        s = int(steps[i]) if np.isfinite(steps[i]) else -1
        if s <= 0 or s == export or not np.isfinite(step_t[i]):
            continue
        own = {c: float(v[i]) for c, v in cols.items() if np.isfinite(v[i])}
        out[s] = (float(step_t[i]), own)
    return out


def telemetry_straggler(ctx: AnalysisContext) -> TelemetryVerdict | None:
    """The rank whose own time per step makes its peers wait, over every step of the run (None
    when fewer than two ranks have telemetry or too few steps are common to all)."""
    tables = {rd.rank: t for rd in ctx.ranks if (t := _step_table(rd))}
    if len(tables) < 2 or len(tables) < len(ctx.ranks):
        return None
    ranks = sorted(tables)
    common = sorted(set.intersection(*(set(t) for t in tables.values())))
    best: TelemetryVerdict | None = None
    for col in OWN_TIME_COLUMNS:
        usable = [s for s in common if all(col in tables[r][s][1] for r in ranks)]
        if len(usable) < MIN_TELEMETRY_STEPS:
            continue
        own = np.asarray([[tables[r][s][1][col] for s in usable] for r in ranks])  # ranks x steps
        wall = np.asarray([[tables[r][s][0] for s in usable] for r in ranks])
        slowest = np.argmax(own, axis=0)
        for i, r in enumerate(ranks):
            peers = np.delete(np.arange(len(ranks)), i)
            excess = own[i] - median(own[peers], axis=0)
            longer = np.maximum(wall[i] - median(wall[peers], axis=0), 0.0)
            caused = excess - longer  # the part of its excess its peers spent waiting
            med = float(median(caused))
            if best is not None and med <= best.excess_ms:
                continue
            n_slow = int((slowest == i).sum())
            verdict = TelemetryVerdict(
                rank=r,
                column=col,
                steps=len(usable),
                excess_ms=med,
                ci95_ms=bootstrap_median_ci(caused),
                slowest_pct=100.0 * n_slow / len(usable),
                slowest_p=late_by_chance_p(n_slow, len(usable), len(ranks)),
                step_ms=float(median(wall)),
                named=False,
            )
            verdict.named = (
                verdict.wait_pct >= STRAGGLER_WAIT_PCT
                and verdict.ci95_ms[0] > 0
                and verdict.slowest_pct >= 100.0 * LATE_MAJORITY
                and verdict.slowest_p < LATE_SIGNIFICANCE
            )
            best = verdict
    return best


@dataclass
class WindowVerdict:
    """The trace window's answer for the rank that arrived last most often."""

    rank: int
    ranks: list[int]
    instances: int
    late: int
    late_p: float
    wait_ms_per_step: float  # the waits it caused, per step, averaged over its peers
    wait_pct: float
    step_lateness_ms: list[float] = field(default_factory=list)
    step_t_p: float = 1.0

    @property
    def named(self) -> bool:
        return (
            self.late / max(self.instances, 1) >= LATE_MAJORITY
            and self.wait_pct >= STRAGGLER_WAIT_PCT
            and min(self.late_p, self.step_t_p) < LATE_SIGNIFICANCE
        )

    def evidence(self) -> dict[str, Any]:
        return {
            "late_in_pct_of_collectives": 100.0 * self.late / max(self.instances, 1),
            "late_by_chance_p": self.late_p,
            "matched_collectives": self.instances,
            "window_steps": len(self.step_lateness_ms),
            "window_lateness_ms_by_step": [round(v, 3) for v in self.step_lateness_ms],
            "window_lateness_t_p": self.step_t_p,
        }


def _window_steps(ctx: AnalysisContext) -> int:
    return max((len(rd.steps) for rd in ctx.ranks), default=1) or 1


def step_ms(ctx: AnalysisContext) -> float:
    """Mean step wall time of the window: shares are totals over totals, so per-step waits add up."""
    walls = [b.wall_ms for rd in ctx.ranks for b in rd.breakdown]
    if walls:
        return float(np.mean(walls))
    spans = [(s.end_ns - s.start_ns) / 1e6 for rd in ctx.ranks for s in rd.steps]
    return float(np.mean(spans)) if spans else 0.0


def _lateness_t_p(per_step: list[float], world: int) -> float:
    """One-sided Student t p-value that the mean per-step lateness is above zero, times ``world``
    (the candidate was picked as the latest of ``world`` ranks); 1 unless the rank was late in
    every one of at least :data:`MIN_T_STEPS` steps."""
    x = np.asarray(per_step, dtype=np.float64)
    if x.size < MIN_T_STEPS or (x <= 0).any():
        return 1.0
    sd = float(x.std(ddof=1))
    if sd == 0.0:
        return 0.0
    t = float(x.mean()) / (sd / math.sqrt(x.size))
    return min(1.0, float(student_t_sf(t, x.size - 1)) * world)


def window_straggler(
    ctx: AnalysisContext, instances: list[dict[int, Collective]], who: int | None = None
) -> WindowVerdict | None:
    """The window's figures for rank ``who`` (default: the rank last in most matched collectives)."""
    if not instances:
        return None
    ranks = sorted(instances[0])
    late: dict[int, int] = defaultdict(int)
    waits: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    by_step: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for inst in instances:
        durs = {r: c.dur_ns for r, c in inst.items()}
        step = inst[ranks[0]].step
        for r, d in durs.items():
            by_step[step][r] += d / 1e6
        last = min(durs, key=durs.__getitem__)
        if max(durs.values()) - durs[last] <= 0:
            continue
        late[last] += 1
        for r, c in inst.items():
            if r != last and c.dur_ns > durs[last]:
                waits[(last, r)].append((c.ts_ns, c.ts_ns + c.dur_ns - durs[last]))
    if who is None:
        if not late:
            return None
        who = max(late, key=late.__getitem__)
    caused = [
        covered_ns(np.array([a for a, _ in iv]), np.array([b for _, b in iv]))
        for (lr, _), iv in waits.items()
        if lr == who
    ]
    wait_ms = float(np.sum(caused)) / max(len(ranks) - 1, 1) / 1e6 / _window_steps(ctx)
    step_wall = step_ms(ctx)
    lateness = [
        float(median([v for r, v in coll.items() if r != who]) - coll[who])
        for _, coll in sorted(by_step.items())
        if who in coll and len(coll) > 1
    ]
    return WindowVerdict(
        rank=who,
        ranks=ranks,
        instances=len(instances),
        late=late.get(who, 0),
        late_p=late_by_chance_p(late.get(who, 0), len(instances), len(ranks)),
        wait_ms_per_step=wait_ms,
        wait_pct=100.0 * wait_ms / step_wall if step_wall > 0 else 0.0,
        step_lateness_ms=lateness,
        step_t_p=_lateness_t_p(lateness, len(ranks)),
    )


_CAUSE_ADVICE = {
    "data": "the late rank waits for its input: more DataLoader workers, pinned memory, or GPU-side preprocessing on that rank",
    "compute": "the late rank computes more than its peers: balance the work (uneven batches, extra per-rank work)",
    "gpu-health": "the late rank's GPU runs slower (clocks / throttling): check cooling and power, or exclude the host",
    "host": "the late rank spends more host time per step (Python, logging, checkpoints): move that work off the step",
}
_CAUSE_FIXES = {
    "data": ["dataloader-workers", "gpu-preprocess", "pin-memory"],
    "compute": ["exclude-host"],
    "gpu-health": ["exclude-host"],
    "host": ["exclude-host"],
}


def find_straggler(ctx: AnalysisContext, instances: list[dict[int, Collective]]) -> tuple[Finding | None, float]:
    """The ``comm-straggler`` finding (or None) and the waits per step, measured in the window,
    that the straggler caused its peers (0 when none is named): the caller does not report them
    again as exposed communication."""
    tel = telemetry_straggler(ctx)
    if tel is not None and tel.named:
        win = window_straggler(ctx, instances, tel.rank)
        return _finding(ctx, tel.rank, tel, win), (win.wait_ms_per_step if win else 0.0)
    win = window_straggler(ctx, instances)
    if win is None or not win.named:
        return None, 0.0
    return _finding(ctx, win.rank, tel if tel is not None and tel.rank == win.rank else None, win), win.wait_ms_per_step


def _finding(ctx: AnalysisContext, who: int, tel: TelemetryVerdict | None, win: WindowVerdict | None) -> Finding:
    ranks = sorted(rd.rank for rd in ctx.ranks)
    by_telemetry = tel is not None and tel.named
    if by_telemetry and tel is not None:
        wait_ms, wait_pct = tel.excess_ms, tel.wait_pct
    elif win is not None:
        wait_ms, wait_pct = win.wait_ms_per_step, win.wait_pct
    else:  # pragma: no cover - find_straggler always passes one of them
        wait_ms, wait_pct = 0.0, 0.0
    has_trace = any(len(rd.events) for rd in ctx.ranks)
    cause, cause_ev, confidence = _cause(ctx, who, wait_ms) if has_trace else ("unknown", {}, 0.4)
    if by_telemetry and tel is not None and tel.column == "data_wait_ms":
        # every step's own data wait is a direct measurement; the window's view is the detail
        cause, confidence = "data", 0.9
    evidence: dict[str, Any] = {
        "straggler_rank": who,
        "found_by": "telemetry" if by_telemetry else "trace-window",
        "peer_wait_ms_per_step": wait_ms,
        "peer_wait_pct_of_step": wait_pct,
        "c4_class": "non-communication-slow",
        "cause": cause,
    }
    if tel is not None:
        evidence.update(tel.evidence())
    if win is not None:
        evidence.update(win.evidence())
        evidence["window_peer_wait_ms_per_step"] = win.wait_ms_per_step
    evidence.update(cause_ev)
    steps = f"over {tel.steps} steps" if by_telemetry and tel is not None else "in the trace window"
    return Finding(
        id="comm-straggler",
        category="communication",
        title=f"Rank {who} is the straggler ({cause}): its peers wait {wait_pct:.1f}% of each step for it ({steps})",
        severity=grade(wait_pct),
        impact=Impact(wait_pct, wait_ms),
        evidence=evidence,
        where={"ranks": [who], "peers": [r for r in ranks if r != who]},
        confidence=confidence,
        fixes=_CAUSE_FIXES.get(cause, ["exclude-host"]),
        analyzer="communication",
        advice=_CAUSE_ADVICE.get(cause, "balance the work across ranks"),
    )


def _per_step(rd: RankData, name: str) -> float:
    vals = [getattr(b, name) for b in rd.breakdown]
    return float(np.mean(vals)) if vals else 0.0


def _telemetry_wait(rd: RankData) -> float | None:
    tel = rd.telemetry
    if tel is None or "data_wait_ms" not in tel or not len(tel["data_wait_ms"]):
        return None
    vals = np.asarray(tel["data_wait_ms"], dtype=float)
    vals = vals[np.isfinite(vals)]
    return float(median(vals)) if vals.size else None


def _reason_bits(value: Any) -> int | None:
    """NVML clock-event reasons as written in nvml.csv: hex text (``0x20``), a number, or empty."""
    try:
        if isinstance(value, str):
            return int(value, 0) if value.strip() else None
        return None if value is None or value != value else int(value)
    except (TypeError, ValueError):
        return None


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
    return (float(median(busy)) if busy.size else None), throttled


def _cause(ctx: AnalysisContext, who: int, wait_ms: float) -> tuple[str, dict[str, Any], float]:
    """Why rank ``who`` is late: its largest excess over its peers' median in the window (data
    wait from telemetry when present, compute, host time, or a lower SM clock)."""
    me = next(rd for rd in ctx.ranks if rd.rank == who)
    peers = [rd for rd in ctx.ranks if rd.rank != who]
    excess: dict[str, float] = {}
    ev: dict[str, Any] = {}

    def peer_median(values: list[float]) -> float:
        return float(median(values)) if values else 0.0

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
