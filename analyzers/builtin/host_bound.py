"""host-bound: the GPU waits for the CPU to issue work (launch overhead, Python between ops).

**What counts.** The breakdown's ``launch_overhead_ms + host_other_ms`` is the GPU idle while
the host is not waiting for data or in a sync (docs/breakdown.md). This analyzer splits that
time, instant by instant, with the breakdown's own sets, into (first rule that applies wins):

1. ``blocked_copy``: a thread that feeds the GPU (training loop, autograd engine:
   ``analyzers/roles.py``) is inside a copy call the driver stages through host memory
   (``Memcpy ... Pageable``): a blocked host, not a launch; memory-copy owns it (pin-memory).
2. ``runtime_setup``: a feeding thread is inside a CUDA/HIP set-up call (context creation,
   device queries, module loading, allocation and free, stream and event creation:
   ``vocab.is_startup_call``; per-launch helpers such as ``cudaFuncGetAttributes`` only when
   slow), or inside any other non-blocking runtime call longer than ``SLOW_CALL_MS`` (1 ms).
   A launch costs the CPU 2-20 us; a call 50x longer with the GPU idle is lazy module loading,
   JIT or an allocation, not launching (a launch that blocks because the queue is full does so
   while the GPU is busy, so it never lands here).
3. ``queued_wait``: work was launched but the GPU did not start it: the idle gap ended with an
   op whose launch had returned more than ``QUEUE_LATENCY_US`` (50 us) before it started; or a
   feeding thread is in ``cudaStreamWaitEvent`` / ``cudaEventQuery`` / ``cudaStreamQuery``. A
   kernel starts 1-3 us after its launch returns on an idle H200 (10 us at most in our
   recordings), so 50 us is past any launch latency: the op waits on another stream's event,
   on another process sharing the GPU, or on a dependency the trace does not show.
4. ``launch``: a feeding thread is in any other runtime call (``cudaLaunchKernel`` and co,
   async copies and sets, event records), a launched op has not started yet (within the
   latency above), or the whole gap is at most 10 us (``breakdown.LAUNCH_GAP_NS``).
5. ``host_other``: the rest: Python and CPU ops between launches (and runtime calls of threads
   that do not feed the GPU, e.g. the NCCL watchdog polling its events).

The five parts sum to the breakdown's two. ``host-bound-launch-gaps`` reports launch +
host_other, the host's cost of issuing work; ``gpu-waits-on-queued-work`` and
``runtime-setup-in-step`` report 3 and 2 (same accounting slice, their own advice); part 1 is
evidence only. Evidence adds the kernel side: the median kernel against the median CPU cost of
one launch (launch calls that block, DtoH or pageable copies, and slow calls left out); when
kernels are shorter than their launches (~5-10 us), the CPU cannot keep the GPU fed however fast
the rest of the loop is, and the fix is fewer launches (CUDA graphs, torch.compile, fused ops,
larger batches).

Grading: share of step time, 5 % medium / 20 % high / 1 % low: the same reasoning as the input
pipeline (below ~5 % is step-time noise; at a fifth of every step the GPU is idle more often
than a single kernel optimisation could ever recover).

**The profiler's own cost.** Kineto slows the host (every op is recorded with its shapes and
FLOPs; 30-100 % longer host time per step was measured on an H200), so a loop whose host
keeps well ahead of the GPU can show host gaps inside the trace only. A run directory also has
the steady-state steps after the window, timed by the light telemetry (wall time on the host,
GPU time between CUDA events; ``RankData.untraced_step_mask``: the export step and the warm-up
steps before the window, which compile and autotune, left out), at least 3 needed. When the host's median step there is under 90 % of the GPU's, the host issues
work faster than the GPU runs it, so without the profiler the GPU does not wait for it: the
finding is kept as ``info`` with no saving (90 %: the two medians each carry a few percent of
noise; a host that merely keeps pace stays in the next case). Otherwise the saving is the
trace's host idle minus the time the trace added to the host's step (window step minus
untraced step), floored at 0: all of the profiler's added host time lands in these gaps when
the host is the bottleneck.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stallscope.analyzers.arrays import isin, median, unique
from stallscope.analyzers.base import Analyzer, Finding, Impact, Severity, register, severity_from_share
from stallscope.analyzers.breakdown import Intervals, gpu_sets, points, union
from stallscope.analyzers.builtin import _common as c
from stallscope.analyzers.model import AnalysisContext, Kind, RankData
from stallscope.analyzers.vocab import is_device_to_host, is_startup_call, is_sync_call, short_kernel_name

MEDIUM_PCT = 5.0
HIGH_PCT = 20.0
LOW_PCT = 1.0
DEFAULT_LAUNCH_US = 5.0
HOST_AHEAD_RATIO = 0.9
MIN_UNTRACED_STEPS = c.MIN_UNTRACED_STEPS
SLOW_CALL_MS = 1.0
QUEUE_LATENCY_US = 50.0
PARTS = ("launch", "host_other", "queued_wait", "runtime_setup", "blocked_copy")
_LAUNCH_CALLS = (
    "cudaLaunchKernel",
    "cuLaunchKernel",
    "cudaLaunchKernelExC",
    "cuLaunchKernelEx",
    "cudaLaunchCooperativeKernel",
    "cudaMemcpyAsync",
    "cudaMemsetAsync",
    "hipLaunchKernel",
    "hipModuleLaunchKernel",
    "hipExtModuleLaunchKernel",
    "hipMemcpyAsync",
    "hipMemsetAsync",
)
# Calls that order or poll on another stream's work instead of issuing any.
_WAIT_CALLS = frozenset(
    {
        "cudaStreamWaitEvent",
        "cuStreamWaitEvent",
        "hipStreamWaitEvent",
        "cudaEventQuery",
        "cuEventQuery",
        "hipEventQuery",
        "cudaStreamQuery",
        "cuStreamQuery",
        "hipStreamQuery",
    }
)
# Set-up names that libraries also call once per launch (cuBLAS, Triton): cheap then, so they
# count as set-up only when slow.
_PER_LAUNCH_QUERIES = ("FuncGetAttribute", "FuncSetAttribute", "GetDevice", "SetDevice", "Occupancy")


def _classes(rd: RankData) -> dict[str, Intervals]:
    """The breakdown's sets plus this analyzer's: calls of the feeding threads by class, and the
    time launched work sat ready on an idle GPU."""
    ev = rd.events
    sets = gpu_sets(ev)
    rt = ev.rows_of_kind(Kind.RUNTIME)
    rt = rt[isin(ev.tid[rt], c.issuing_threads(rd))]
    copies = ev.rows_of_kind(Kind.MEMCPY)
    pageable = copies[
        np.fromiter(
            (("Pageable" in ev.name_of(int(r))) and not is_device_to_host(ev.name_of(int(r))) for r in copies),
            bool,
            len(copies),
        )
    ]
    staged = set(ev.launch_of[pageable][ev.launch_of[pageable] >= 0].tolist()) if len(pageable) else set()
    by_name = {int(i): _name_class(ev.names[int(i)]) for i in unique(ev.name[rt])}
    cls = np.asarray([by_name[int(i)] for i in ev.name[rt]], dtype=object)
    cls[(ev.dur_ns[rt] > SLOW_CALL_MS * 1e6) & (cls != "sync")] = "runtime_setup"
    if staged:
        cls[isin(rt, np.fromiter(staged, np.int64, len(staged)))] = "blocked_copy"
    for k in ("blocked_copy", "runtime_setup", "queued_wait", "launch"):
        rows = rt[cls == k]
        sets["call_" + k] = union(ev.ts_ns[rows], ev.ts_ns[rows] + ev.dur_ns[rows])
    sets["queued_long"] = _queued_long(rd)
    return sets


def _name_class(name: str) -> str:
    """What a runtime call of this name is when it is quick (see the module docstring)."""
    if is_sync_call(name):
        return "sync"  # the breakdown's sync set has it
    if is_startup_call(name) and not any(q in name for q in _PER_LAUNCH_QUERIES):
        return "runtime_setup"
    if name in _WAIT_CALLS:
        return "queued_wait"
    return "launch"


def _queued_long(rd: RankData) -> Intervals:
    """Idle GPU time while the op that ended the gap had been launched over QUEUE_LATENCY_US ago."""
    ev = rd.events
    g = ev.gpu_rows()
    empty = Intervals(np.empty(0, np.int64), np.empty(0, np.int64))
    if len(g) < 2 or not len(ev.launch_of):
        return empty
    g = g[np.argsort(ev.ts_ns[g], kind="stable")]
    bs, be = c.merge(ev.ts_ns[g], ev.ts_ns[g] + ev.dur_ns[g])
    first = np.searchsorted(ev.ts_ns[g], bs[1:], side="left")  # the op that ends each gap
    r = g[first]
    launch = ev.launch_of[r]
    ok = launch >= 0
    ready = np.maximum(be[:-1], np.where(ok, ev.ts_ns[launch] + ev.dur_ns[launch], be[:-1]))
    lo = ready + int(QUEUE_LATENCY_US * 1e3)
    keep = ok & (lo < bs[1:])
    return Intervals(lo[keep].astype(np.int64), bs[1:][keep].astype(np.int64))


def host_idle_parts(rd: RankData) -> dict[str, float]:
    """The breakdown's ``launch_overhead_ms + host_other_ms`` of one rank split into
    :data:`PARTS` (ms per step; module docstring). Zeros without steps or GPU events."""
    out = dict.fromkeys(PARTS, 0.0)
    ev = rd.events
    if not rd.steps or not len(ev) or not c.has_gpu(ev):
        return out
    sets = _classes(rd)
    for step in rd.steps:
        _, length, m = points(sets, step.start_ns, step.end_ns)
        idle = ~(m["compute"] | m["memory"] | m["comm"]) & ~m["data"] & ~(m["sync"] | m["drained"])
        blocked = idle & m["call_blocked_copy"]
        setup = idle & ~blocked & m["call_runtime_setup"]
        rest = idle & ~blocked & ~setup
        wait = rest & (m["queued_long"] | m["call_queued_wait"])
        launch = rest & ~wait & (m["call_launch"] | m["queued"] | m["short"])
        other = rest & ~wait & ~launch
        for k, mask in zip(PARTS, (launch, other, wait, setup, blocked), strict=True):
            out[k] += float(length[mask].sum()) / 1e6
    return {k: v / len(rd.steps) for k, v in out.items()}


def _waiters(rd: RankData) -> list[str]:
    """The ops that ended the longest queued waits, by name."""
    ev = rd.events
    q = _queued_long(rd)
    g = ev.gpu_rows()
    if not q.starts.size or not len(g):
        return []
    starts = dict(zip(ev.ts_ns[g].tolist(), g.tolist(), strict=False))
    order = np.argsort(q.starts - q.ends)[:50]
    names = [ev.name_of(starts[int(e)]) for e in q.ends[order] if int(e) in starts]
    return [n if len(short_kernel_name(n)) < 20 else short_kernel_name(n) for n in c.top_counts(names)]


@register
class HostBound(Analyzer):
    """Launch gaps and tiny kernels; launched work waiting on the GPU; runtime set-up in the step."""

    name = "host-bound"
    requires = frozenset({"trace", "gpu"})
    description = "GPU idle while the CPU issues kernels; kernels shorter than their launch"

    def analyze(self, ctx: AnalysisContext) -> list[Finding]:
        wall = 0.0
        steps = 0
        parts = dict.fromkeys(PARTS, 0.0)  # ms summed over steps and ranks
        kernel_us: list[np.ndarray] = []
        launch_us: list[np.ndarray] = []
        worst_rank, worst = None, -1.0
        trace_idle = 0.0
        untraced: dict[str, object] = {}
        setup_calls: dict[str, float] = {}
        waiters: list[str] = []
        for rd in ctx.ranks:
            if not rd.breakdown:
                continue
            n = len(rd.breakdown)
            r_wall = sum(b.wall_ms for b in rd.breakdown)
            r_parts = {k: v * n for k, v in host_idle_parts(rd).items()}
            r_launch, r_other = r_parts["launch"], r_parts["host_other"]
            trace_idle += r_launch + r_other
            keep, seen = untraced_share(rd, r_wall / n, (r_launch + r_other) / n)
            if seen and not untraced:
                untraced = seen
            r_parts["launch"], r_parts["host_other"] = r_launch * keep, r_other * keep
            for part in PARTS:
                parts[part] += r_parts[part]
            wall += r_wall
            steps += n
            r_idle = r_parts["launch"] + r_parts["host_other"]
            if r_wall > 0 and r_idle / r_wall > worst:
                worst_rank, worst = rd.rank, r_idle / r_wall
            ev = rd.events
            k = np.flatnonzero((ev.kind == Kind.KERNEL) & (ev.step >= 0))
            kernel_us.append(ev.dur_ns[k] / 1e3)
            launch_us.append(_launch_costs_us(rd))
            if r_parts["runtime_setup"] > 0:
                _setup_calls(rd, setup_calls)
            if r_parts["queued_wait"] > 0:
                waiters += _waiters(rd)
        if wall <= 0 or steps == 0:
            return []
        per_step = {f"{'launch_overhead' if k == 'launch' else k}_ms_per_step": v / steps for k, v in parts.items()}
        out = []
        launch_finding = self._launch_gaps(parts, wall, steps, trace_idle, untraced, kernel_us, launch_us, per_step)
        if launch_finding is not None:
            launch_finding.where = {"ranks": [worst_rank] if worst_rank is not None else []}
            out.append(launch_finding)
        wait_pct = 100.0 * parts["queued_wait"] / wall
        if wait_pct > LOW_PCT:
            out.append(
                Finding(
                    id="gpu-waits-on-queued-work",
                    category="host-bound",
                    title=f"GPU idle while launched work waits to start ({wait_pct:.1f}% of step time): "
                    "another stream, an event or another process holds it, not the launches",
                    severity=severity_from_share(wait_pct, MEDIUM_PCT, HIGH_PCT, LOW_PCT),
                    impact=Impact(step_time_pct=wait_pct, est_saving_ms_per_step=parts["queued_wait"] / steps),
                    evidence={**per_step, "queue_latency_us": QUEUE_LATENCY_US},
                    where={"waiting_ops": c.top_counts(waiters)} if waiters else {},
                    confidence=0.6,
                    fixes=[],
                    advice="find what the stream waits for: a cross-stream dependency (wait_stream / wait_event on a "
                    "side stream whose work is late), another process on the same GPU (nvidia-smi; one process per "
                    "GPU, or MPS), a collective on a communication stream. CUDA graphs do not help here.",
                )
            )
        setup_pct = 100.0 * parts["runtime_setup"] / wall
        if setup_pct > LOW_PCT:
            calls = sorted(setup_calls, key=setup_calls.__getitem__, reverse=True)[:8]
            # Without step markers the "step" is the whole trace, which holds the first iterations:
            # set-up there (lazy module loading, allocator growth, cudnn autotuning) is warm-up paid
            # once, not a cost of the loop, so it is stated at info and in a notice.
            unmarked = all(rd.steps and rd.steps[0].source == "whole-trace" for rd in ctx.ranks if rd.breakdown)
            if unmarked:
                ctx.notices.append(
                    f"{setup_pct:.0f}% of the trace (no step markers) is CUDA runtime set-up with the GPU idle "
                    "(module loading, allocation, stream and event creation): first-iteration warm-up, not a cost "
                    "of the loop; record steps after warm-up (torch.profiler schedule, `stallscope profile`) to "
                    "measure the loop itself"
                )
            out.append(
                Finding(
                    id="runtime-setup-in-step",
                    category="host-bound",
                    title=f"GPU idle while the CUDA runtime sets up inside the step ({setup_pct:.1f}% of step time): "
                    "context creation, module loading or allocation, not launches"
                    + ("; the trace has no step markers, so this is likely warm-up" if unmarked else ""),
                    severity=Severity.INFO
                    if unmarked
                    else severity_from_share(setup_pct, MEDIUM_PCT, HIGH_PCT, LOW_PCT),
                    impact=Impact(step_time_pct=setup_pct, est_saving_ms_per_step=parts["runtime_setup"] / steps),
                    evidence={**per_step, "slow_call_ms": SLOW_CALL_MS},
                    where={"calls": calls, "call_ms_per_step": [round(setup_calls[k] / steps, 3) for k in calls]},
                    confidence=0.7,
                    fixes=[],
                    advice="run warm-up steps before the profiled ones (context creation and lazy module loading "
                    "happen once; CUDA_MODULE_LOADING=EAGER loads every module at start); in every step, "
                    "cudaMalloc/cudaFree mean the caching allocator gives memory back and takes it again: remove "
                    "torch.cuda.empty_cache() from the loop, keep shapes stable, or set "
                    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True.",
                )
            )
        return out

    def _launch_gaps(
        self,
        parts: dict[str, float],
        wall: float,
        steps: int,
        trace_idle: float,
        untraced: dict[str, Any],
        kernel_us: list[np.ndarray],
        launch_us: list[np.ndarray],
        per_step: dict[str, float],
    ) -> Finding | None:
        launch, other = parts["launch"], parts["host_other"]
        share = 100.0 * (launch + other) / wall
        trace_share = 100.0 * trace_idle / wall
        if trace_share <= LOW_PCT:
            return None
        if share <= LOW_PCT and not untraced.get("host_ahead"):
            return None
        ks = np.concatenate(kernel_us) if kernel_us else np.zeros(0)
        ls = np.concatenate(launch_us) if launch_us else np.zeros(0)
        evidence: dict[str, object] = {
            "gpu_idle_host_pct": share,
            **per_step,
            "kernels_per_step": float(ks.size) / steps,
            "trace_host_idle_pct": trace_share,
            **untraced,
        }
        tiny = False
        # the CPU cost of one launch as measured in this trace; 5 us (the low end of current
        # GPUs' launch cost) when the trace has no runtime calls
        launch_cost = float(median(ls)) if ls.size else DEFAULT_LAUNCH_US
        evidence["launch_cost_us"] = launch_cost
        evidence["launch_cost_source"] = "median runtime launch call" if ls.size else "assumed"
        if ks.size:
            evidence["median_kernel_us"] = float(median(ks))
            evidence["kernels_shorter_than_launch_pct"] = 100.0 * float((ks < launch_cost).mean())
            tiny = float(median(ks)) < launch_cost
        title = (
            "GPU idle while the CPU launches kernels shorter than their launch cost"
            if tiny
            else "GPU idle while the CPU prepares and launches work"
        )
        if untraced.get("host_ahead"):
            title = (
                "GPU gaps in the trace come from the profiler's own host cost: without it the host runs "
                "ahead of the GPU"
            )
        return Finding(
            id="host-bound-launch-gaps",
            category="host-bound",
            title=f"{title} ({(trace_share if untraced.get('host_ahead') else share):.1f}% of step time in the trace)",
            severity=severity_from_share(share, MEDIUM_PCT, HIGH_PCT, LOW_PCT),
            impact=Impact(step_time_pct=share, est_saving_ms_per_step=(launch + other) / steps),
            evidence=evidence,
            where={},
            confidence=0.85 if tiny else 0.7,
            fixes=[],
            advice="fewer, larger launches: CUDA graphs (torch.compile mode='reduce-overhead'), fused ops, "
            "larger batches; move Python work out of the step",
        )


def _launch_costs_us(rd: RankData) -> np.ndarray:
    """CPU time of the launch calls in the steps, leaving out those that block (device-to-host or
    pageable copies) and slow ones (set-up inside a launch, e.g. lazy module loading)."""
    ev = rd.events
    lr = ev.rows_named(lambda s: s in _LAUNCH_CALLS, Kind.RUNTIME)
    lr = lr[ev.step[lr] >= 0] if lr.size else lr
    copies = ev.rows_of_kind(Kind.MEMCPY)
    blocking = [
        int(ev.launch_of[r])
        for r in copies
        if len(ev.launch_of) and ("Pageable" in ev.name_of(int(r)) or is_device_to_host(ev.name_of(int(r))))
    ]
    lr = lr[~isin(lr, blocking) & (ev.dur_ns[lr] <= SLOW_CALL_MS * 1e6)]
    return ev.dur_ns[lr] / 1e3


def _setup_calls(rd: RankData, into: dict[str, float]) -> None:
    """Add the call milliseconds of set-up calls (by name) the feeding threads made in the steps."""
    ev = rd.events
    rt = c.in_window(ev, ev.rows_of_kind(Kind.RUNTIME))
    rt = rt[isin(ev.tid[rt], c.issuing_threads(rd))]
    by_name = {int(i): _name_class(ev.names[int(i)]) for i in unique(ev.name[rt])}
    cls = np.asarray([by_name[int(i)] for i in ev.name[rt]], dtype=object)
    setup = (cls == "runtime_setup") | ((cls != "sync") & (ev.dur_ns[rt] > SLOW_CALL_MS * 1e6))
    for r in rt[setup]:
        name = ev.name_of(int(r))
        into[name] = into.get(name, 0.0) + float(ev.dur_ns[r]) / 1e6


def untraced_share(rd, trace_step_ms: float, trace_idle_ms: float) -> tuple[float, dict]:
    """(fraction of the trace's host idle that also exists without the profiler, evidence).

    (1.0, {}) when the run has no untraced steps to compare with (a plain trace)."""
    out = rd.untraced_step_mask()
    if out is None or trace_idle_ms <= 0:
        return 1.0, {}
    tel = rd.telemetry
    wall = np.asarray(tel["wall_ms"], dtype=float)[out]
    gpu = np.asarray(tel.get("gpu_ms", np.full(out.size, np.nan)), dtype=float)[out]
    gpu = gpu[np.isfinite(gpu)]
    if wall.size < MIN_UNTRACED_STEPS:
        return 1.0, {"untraced_steps": int(wall.size)}
    host_ms = float(median(wall))
    evidence: dict = {"untraced_steps": int(wall.size), "untraced_host_step_ms": host_ms}
    if gpu.size >= MIN_UNTRACED_STEPS:
        gpu_ms = float(median(gpu))
        evidence["untraced_gpu_step_ms"] = gpu_ms
        if host_ms < HOST_AHEAD_RATIO * gpu_ms:
            evidence["host_ahead"] = True
            return 0.0, evidence
    added = max(0.0, trace_step_ms - host_ms)
    evidence["profiler_added_ms_per_step"] = added
    return max(0.0, trace_idle_ms - added) / trace_idle_ms, evidence
