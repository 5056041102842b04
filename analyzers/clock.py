"""Clock sanity of one rank's trace: is the GPU timeline usable, and how long did start-up take?

**GPU clock.** Kineto writes GPU activity (kernels, copies, sets, GPU-side annotations) on the
CPU's clock after converting CUPTI / ROCm / MTIA timestamps. That conversion can fail: a torch
2.11 trace exported after an earlier profiler session in the same process has every GPU event
at ``ts = 0, dur = 0``; a device clock that was never synchronised puts kernels years away from
the CPU ops that launched them. Timing read from such rows is nonsense (a 5e9 ms "step",
"host-bound 100 %"). :func:`check_gpu_clock` finds that case and takes the rows off the timeline:
they keep their names, args and links (name-based analysis such as the precision analyzer still
reads them) but become ``Kind.UNTIMED_*`` rows placed at their launch's time with no duration.
Since they are no longer ``GPU_KINDS``, ``ctx.has("gpu")`` is false when a trace has no usable
GPU row, the breakdown uses the CPU timeline and analyzers that require GPU time do not run.
The GPU timeline is unusable when any of these holds (thresholds in the constants below):

* all GPU work rows share one timestamp (0 or any other constant), or all have zero duration;
* more than half of the GPU rows lie outside the CPU span of the trace by more than the span
  itself (``OUTSIDE_SPANS``), with a floor of ``OUTSIDE_FLOOR_NS``;
* more than half of the linked GPU rows start before the call that launched them by more than
  ``NEGATIVE_DELAY_NS``.

A minority of rows outside the span (a corrupt duration, stray rows) are taken off alone.

**Start-up.** CUDA / HIP context creation, device queries, lazy module loading and the first
allocations happen before the first GPU work of a process and can take seconds (30 s seen on a
real trace, which a whole-trace pseudo-step then reported as 99.6 % host-bound).
:func:`startup_span` measures that span: from the trace's first CPU event to the end of the last
set-up call (``vocab.is_startup_call``) that starts before the first call that puts work on the
device (``vocab.is_work_call``, or any call a GPU row links to) and before the first step,
provided those calls took at least ``STARTUP_MIN_NS``. The loader starts a whole-trace
pseudo-step after it and says so; with step markers it lies outside the steps already, and a
notice states its length.

No torch import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stallscope.analyzers.arrays import isin
from stallscope.analyzers.link import sort_events
from stallscope.analyzers.model import GPU_KINDS, EventTable, Kind
from stallscope.analyzers.vocab import UNTIMED_OF, is_startup_call, is_work_call

__all__ = [
    "CLOCK_KEY",
    "NEGATIVE_DELAY_NS",
    "NOTICE_SHARE",
    "OUTSIDE_FLOOR_NS",
    "OUTSIDE_SPANS",
    "STARTUP_MIN_NS",
    "StartUp",
    "check_gpu_clock",
    "clock_notice",
    "startup_notice",
    "startup_span",
]

CLOCK_KEY = "clock"
"""Key of ``RankData.meta`` holding the clock dict (``gpu_usable``, ``reason``, ``startup_ms`` ...)."""

# A GPU row may run outside the CPU span of a trace: device buffers hold work from before the
# profiler's first CPU event (up to 28 % of the span on HTA's MTIA trace, 7 % on Kineto's
# resnet50 sample) and queued work drains after its last one. A row farther away than the whole
# span (and at least a second) cannot be work of this trace: its timestamp is not on the CPU's
# clock. Broken clocks miss by far more (0 against epoch microseconds: 50 years).
OUTSIDE_SPANS = 1.0
OUTSIDE_FLOOR_NS = 1_000_000_000
# A kernel cannot start before the call that launched it. CPU/GPU clock conversion errs by
# microseconds (of 68,877 linked GPU rows in 37 real traces, PyTorch 1.8 to 2.11, CUDA, ROCm and
# MTIA, none started before its launch); 1 ms is hundreds of times that error.
NEGATIVE_DELAY_NS = 1_000_000
# "Most" rows: more than half, so that a few odd rows (a reused correlation id) decide nothing.
MAJORITY = 0.5
# Start-up is declared only when the set-up calls themselves took this long: creating a CUDA
# context alone takes 50 ms or more, while the set-up-like calls of a warm process
# (cudaFuncGetAttributes, cudaGetDevice, attribute queries) take microseconds each.
STARTUP_MIN_NS = 10_000_000
# Start-up shorter than this share of the trace moves no reported percentage by a whole point:
# excluded all the same, but not worth a notice.
NOTICE_SHARE = 0.01

_CPU_CLOCK_KINDS = np.asarray([Kind.CPU_OP, Kind.ANNOTATION, Kind.RUNTIME, Kind.PYTHON], dtype=np.int8)
_GPU_WORK = np.asarray(GPU_KINDS, dtype=np.int8)
_GPU_CLOCK = np.asarray(GPU_KINDS + (Kind.GPU_ANNOTATION,), dtype=np.int8)


def _cpu_span(t: EventTable) -> tuple[int, int] | None:
    cpu = isin(t.kind, _CPU_CLOCK_KINDS)
    if not cpu.any():
        return None
    return int(t.ts_ns[cpu].min()), int((t.ts_ns[cpu] + t.dur_ns[cpu]).max())


def check_gpu_clock(t: EventTable) -> tuple[EventTable, dict[str, Any]]:
    """Check the GPU timestamps of a linked, time-sorted table; take unusable GPU rows off the
    timeline (see module doc). Returns the table (re-sorted when rows moved) and the clock dict
    for ``RankData.meta["clock"]``: ``gpu_usable``, ``reason``, ``gpu_events``, ``untimed_events``
    (:func:`clock_notice` words it for the user)."""
    clock: dict[str, Any] = {"gpu_usable": False, "reason": "no GPU events", "gpu_events": 0, "untimed_events": 0}
    gpu = np.flatnonzero(isin(t.kind, _GPU_CLOCK))
    if gpu.size == 0:
        return t, clock
    clock["gpu_events"] = int(gpu.size)
    reason, bad = _verdict(t, gpu)
    if reason is not None:
        clock.update(gpu_usable=False, reason=reason, untimed_events=int(gpu.size))
        return _untime(t, gpu), clock
    clock.update(gpu_usable=True, reason="ok", untimed_events=int(bad.size))
    return (_untime(t, bad) if bad.size else t), clock


def clock_notice(label: str, clock: dict[str, Any], step_source: str | None) -> str | None:
    """The notice for a clock verdict of :func:`check_gpu_clock` (None when there is nothing to
    say); ``step_source`` is where the steps came from (``ProfilerStep``, ``whole-trace`` ...)."""
    untimed, total = clock.get("untimed_events", 0), clock.get("gpu_events", 0)
    if not untimed:
        return None
    if not clock.get("gpu_usable"):
        steps = "CPU ProfilerStep ranges" if step_source == "ProfilerStep" else "the CPU timeline"
        if step_source == "stallscope":
            steps = "the CPU step markers"
        return (
            f"{label}: GPU timestamps are unusable ({clock.get('reason')}): step times from {steps}; "
            "GPU findings from kernel names only"
        )
    return (
        f"{label}: {untimed} of {total} GPU events lie far outside the trace's CPU span (a corrupt timestamp or "
        "duration): left off the GPU timeline, the other GPU events are analysed"
    )


def _verdict(t: EventTable, gpu: np.ndarray) -> tuple[str | None, np.ndarray]:
    """(why the GPU timeline is unusable, or None; the rows that are unusable on their own)."""
    none = np.zeros(0, dtype=np.int64)
    work = gpu[isin(t.kind[gpu], _GPU_WORK)]
    ts = t.ts_ns[work]
    if work.size >= 2 and int(ts.max()) == int(ts.min()):
        first = int(ts[0])
        return ("all 0" if first == 0 else f"all at one timestamp, {first / 1e3:.0f} us"), none
    if work.size >= 2 and not t.dur_ns[work].any():
        return "every GPU event lasts 0 ns", none
    span = _cpu_span(t)
    if span is not None:
        lo, hi = span
        tol = max(int(OUTSIDE_SPANS * (hi - lo)), OUTSIDE_FLOOR_NS)
        start, end = t.ts_ns[gpu], t.ts_ns[gpu] + t.dur_ns[gpu]
        outside = (start < lo - tol) | (end > hi + tol)
        if outside.mean() > MAJORITY:
            off = float(np.median(np.where(start < lo, start - lo, end - hi)[outside])) / 1e9
            return f"{int(outside.sum())} of {gpu.size} GPU events lie {abs(off):.3g} s outside the CPU span", none
        bad = gpu[outside]
    else:
        bad = none
    launch = t.launch_of[work]
    linked = launch >= 0
    if linked.sum() >= 2:
        delay = t.ts_ns[work[linked]] - t.ts_ns[launch[linked]]
        early = delay < -NEGATIVE_DELAY_NS
        if early.mean() > MAJORITY:
            return (
                f"{int(early.sum())} of {int(linked.sum())} GPU events start before their launch, by "
                f"{-float(np.median(delay[early])) / 1e6:.3g} ms (median): GPU and CPU clocks are not aligned"
            ), none
    return None, bad


def _untime(t: EventTable, rows: np.ndarray) -> EventTable:
    """Make ``rows`` untimed: their UNTIMED kind, at their launch's time (else their op's, else the
    CPU span's start) with no duration; the table re-sorted with links kept."""
    kinds = t.kind[rows]
    for gpu_kind, untimed in UNTIMED_OF.items():
        kinds = np.where(kinds == gpu_kind, np.int8(untimed), kinds)
    t.kind[rows] = kinds
    span = _cpu_span(t)
    fallback = span[0] if span is not None else 0
    launch, op = t.launch_of[rows], t.op_of[rows]
    anchor = np.where(launch >= 0, launch, op)
    t.ts_ns[rows] = np.where(anchor >= 0, t.ts_ns[np.maximum(anchor, 0)], fallback)
    t.dur_ns[rows] = 0
    return sort_events(t)


@dataclass(frozen=True)
class StartUp:
    """The start-up span of a trace: ``[start_ns, end_ns)`` on the trace clock; ``calls_ns`` the
    time inside set-up calls (their union); ``calls`` how many there were; ``names`` the longest
    ones' names."""

    start_ns: int
    end_ns: int
    calls_ns: int
    calls: int
    names: tuple[str, ...]

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def startup_span(t: EventTable, before_ns: int | None = None) -> StartUp | None:
    """The start-up span (see module doc) ending before ``before_ns`` (the first step's start, when
    the trace has steps); None when the set-up calls before the first GPU work took less than
    ``STARTUP_MIN_NS``."""
    runtime = np.flatnonzero(t.kind == Kind.RUNTIME)
    if runtime.size == 0:
        return None
    setup_ids = t.name_ids_matching(is_startup_call)
    setup = runtime[isin(t.name[runtime], setup_ids)]
    if setup.size == 0:
        return None
    starts = [] if before_ns is None else [int(before_ns)]
    work = runtime[isin(t.name[runtime], t.name_ids_matching(is_work_call))]
    if work.size:
        starts.append(int(t.ts_ns[work].min()))
    launches = t.launch_of[t.launch_of >= 0]  # calls that GPU rows (timed or not) link to
    if launches.size:
        starts.append(int(t.ts_ns[launches].min()))
    boundary = min(starts) if starts else None
    if boundary is not None:
        setup = setup[t.ts_ns[setup] < boundary]
        if setup.size == 0:
            return None
    span = _cpu_span(t)
    first = span[0] if span is not None else int(t.ts_ns.min())
    ends = t.ts_ns[setup] + t.dur_ns[setup]
    end = int(ends.max())
    if boundary is not None:
        end = min(end, boundary)
    covered = _union_ns(t.ts_ns[setup], np.minimum(ends, end))
    if covered < STARTUP_MIN_NS:
        return None
    longest = setup[np.argsort(-t.dur_ns[setup], kind="stable")]
    names: list[str] = []
    for r in longest:
        name = t.name_of(int(r))
        if name not in names:
            names.append(name)
        if len(names) == 3:
            break
    return StartUp(start_ns=first, end_ns=max(end, first), calls_ns=covered, calls=int(setup.size), names=tuple(names))


def _union_ns(starts: np.ndarray, ends: np.ndarray) -> int:
    keep = ends > starts
    s, e = starts[keep], ends[keep]
    if s.size == 0:
        return 0
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    reach = np.maximum.accumulate(e)
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] > reach[:-1]
    idx = np.flatnonzero(new)
    return int((np.maximum.reduceat(e, idx) - s[idx]).sum())


def startup_notice(label: str, su: StartUp, span_ns: int, has_steps: bool) -> str | None:
    """The notice for a start-up span (None when it is under ``NOTICE_SHARE`` of the trace)."""
    if span_ns <= 0 or (su.end_ns - su.start_ns) < NOTICE_SHARE * span_ns:
        return None
    what = (
        f"{label}: start-up took {su.ms:.4g} ms before the first GPU work "
        f"({su.calls} CUDA/HIP set-up calls, {su.calls_ns / 1e6:.4g} ms inside them: {', '.join(su.names)}): "
    )
    if has_steps:
        return what + "it lies outside the steps and is in no step figure"
    return what + "the whole-trace step begins after it"
