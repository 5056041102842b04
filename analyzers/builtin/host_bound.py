"""host-bound: the GPU waits for the CPU to issue work (launch overhead, Python between ops).

Measure, from the GPU-timeline breakdown: ``launch_overhead_ms`` (GPU idle while the CPU is in
launch calls, a launched op is still queued, or gaps no longer than two launch costs: HTA's
"kernel wait") plus ``host_other_ms`` (GPU idle while the CPU runs Python and CPU ops, not
counting data loading or synchronization, which other analyzers own). Evidence adds the kernel
side: the median kernel is compared with the median CPU cost of one launch
(``cudaLaunchKernel`` and friends); when kernels are shorter than their launches (typically
~5-10 us on current GPUs), the CPU cannot keep the GPU fed however fast the rest of the loop is,
and the fix is fewer launches (CUDA graphs, torch.compile, fused ops, larger batches).

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

import numpy as np

from stallscope.analyzers.base import Analyzer, Finding, Impact, register, severity_from_share
from stallscope.analyzers.model import AnalysisContext, Kind

MEDIUM_PCT = 5.0
HIGH_PCT = 20.0
LOW_PCT = 1.0
DEFAULT_LAUNCH_US = 5.0
HOST_AHEAD_RATIO = 0.9
MIN_UNTRACED_STEPS = 3
_LAUNCH_CALLS = (
    "cudaLaunchKernel",
    "cuLaunchKernel",
    "cudaLaunchKernelExC",
    "cuLaunchKernelEx",
    "cudaLaunchCooperativeKernel",
    "cudaMemcpyAsync",
    "cudaMemsetAsync",
)


@register
class HostBound(Analyzer):
    """Launch gaps and tiny kernels."""

    name = "host-bound"
    requires = frozenset({"trace", "gpu"})
    description = "GPU idle while the CPU issues kernels; kernels shorter than their launch"

    def analyze(self, ctx: AnalysisContext) -> list[Finding]:
        wall = launch = other = 0.0
        steps = 0
        kernel_us: list[np.ndarray] = []
        launch_us: list[np.ndarray] = []
        worst_rank, worst = None, -1.0
        trace_idle = 0.0
        untraced: dict[str, object] = {}
        for rd in ctx.ranks:
            if not rd.breakdown:
                continue
            r_wall = sum(b.wall_ms for b in rd.breakdown)
            r_launch = sum(b.launch_overhead_ms for b in rd.breakdown)
            r_other = sum(b.host_other_ms for b in rd.breakdown)
            trace_idle += r_launch + r_other
            keep, seen = untraced_share(rd, r_wall / len(rd.breakdown), (r_launch + r_other) / len(rd.breakdown))
            if seen and not untraced:
                untraced = seen
            r_launch, r_other = r_launch * keep, r_other * keep
            r_idle = r_launch + r_other
            wall += r_wall
            launch += r_launch
            other += r_other
            steps += len(rd.breakdown)
            if r_wall > 0 and r_idle / r_wall > worst:
                worst_rank, worst = rd.rank, r_idle / r_wall
            ev = rd.events
            k = np.flatnonzero((ev.kind == Kind.KERNEL) & (ev.step >= 0))
            kernel_us.append(ev.dur_ns[k] / 1e3)
            lr = ev.rows_named(lambda s: s in _LAUNCH_CALLS, Kind.RUNTIME)
            lr = lr[ev.step[lr] >= 0] if lr.size else lr
            launch_us.append(ev.dur_ns[lr] / 1e3)
        if wall <= 0 or steps == 0:
            return []
        share = 100.0 * (launch + other) / wall
        trace_share = 100.0 * trace_idle / wall
        if trace_share <= LOW_PCT:
            return []
        if share <= LOW_PCT and not untraced.get("host_ahead"):
            return []
        ks = np.concatenate(kernel_us) if kernel_us else np.zeros(0)
        ls = np.concatenate(launch_us) if launch_us else np.zeros(0)
        evidence: dict[str, object] = {
            "gpu_idle_host_pct": share,
            "launch_overhead_ms_per_step": launch / steps,
            "host_other_ms_per_step": other / steps,
            "kernels_per_step": float(ks.size) / steps,
            "trace_host_idle_pct": trace_share,
            **untraced,
        }
        tiny = False
        # the CPU cost of one launch as measured in this trace; 5 us (the low end of current
        # GPUs' launch cost) when the trace has no runtime calls
        launch_cost = float(np.median(ls)) if ls.size else DEFAULT_LAUNCH_US
        evidence["launch_cost_us"] = launch_cost
        evidence["launch_cost_source"] = "median runtime launch call" if ls.size else "assumed"
        if ks.size:
            evidence["median_kernel_us"] = float(np.median(ks))
            evidence["kernels_shorter_than_launch_pct"] = 100.0 * float((ks < launch_cost).mean())
            tiny = float(np.median(ks)) < launch_cost
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
        return [
            Finding(
                id="host-bound-launch-gaps",
                category="host-bound",
                title=f"{title} ({(trace_share if untraced.get('host_ahead') else share):.1f}% of step time in the trace)",
                severity=severity_from_share(share, MEDIUM_PCT, HIGH_PCT, LOW_PCT),
                impact=Impact(step_time_pct=share, est_saving_ms_per_step=(launch + other) / steps),
                evidence=evidence,
                where={"ranks": [worst_rank] if worst_rank is not None else []},
                confidence=0.85 if tiny else 0.7,
                fixes=[],
                advice="fewer, larger launches: CUDA graphs (torch.compile mode='reduce-overhead'), fused ops, "
                "larger batches; move Python work out of the step",
            )
        ]


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
    host_ms = float(np.median(wall))
    evidence: dict = {"untraced_steps": int(wall.size), "untraced_host_step_ms": host_ms}
    if gpu.size >= MIN_UNTRACED_STEPS:
        gpu_ms = float(np.median(gpu))
        evidence["untraced_gpu_step_ms"] = gpu_ms
        if host_ms < HOST_AHEAD_RATIO * gpu_ms:
            evidence["host_ahead"] = True
            return 0.0, evidence
    added = max(0.0, trace_step_ms - host_ms)
    evidence["profiler_added_ms_per_step"] = added
    return max(0.0, trace_idle_ms - added) / trace_idle_ms, evidence
