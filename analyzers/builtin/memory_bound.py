"""memory-bound: kernels held by memory traffic, and the GR-KAN backward's atomic stall.

**GR-KAN backward (fix ``flashkat``).** A Group-Rational KAN layer's backward reads x and
grad_out and writes grad_x: 12 bytes per element in fp32, its physical floor. KAT's kernel
(``rational_bwd_kernel``, autograd node ``RationalTriton1DGroupBackward``) accumulates the
10 coefficient gradients per group with one atomic add per element, so thousands of threads
serialise on 10·G addresses. The signature (docs/analyzers.md, memory-bound), all three required:

1. the op is a rational backward: kernel ``rational_bwd*`` / ``rational_bwd_cuda_kernel*``,
   autograd node ``*Rational*Backward``, or kernels launched inside a module whose class
   looks like KAT's (``KAT_Group``, ``*Rational*``, ``*GRKAN*``) during backward;
2. effective bandwidth ``12 B x elements / backward time`` is under **10 %** of the GPU's
   copy bandwidth. A healthy backward reaches >= 70 % (FlashKAT's figure); the atomic
   baseline sits near 1 %. 10 % leaves a 7x margin to the healthy case and 10x to the stall;
3. backward time over forward time of the same layers is above **10x**. The backward moves
   12 B/element against the forward's 8 B, so a healthy ratio is ~1.5x; the atomic baseline
   shows ~200x in the paper. 10x sits well clear of both.

When elements or the peak bandwidth are unknown (no shapes, GPU not in the peak table),
criterion 2 is skipped and confidence drops from 0.9 to 0.6. The saving is the backward time
minus its time at 70 % of copy bandwidth. Severity by share of step time (5 % / 20 %, see
``_common``).

**Generic memory-bound kernels (no fix id; advice: fuse, torch.compile).** Kernels the
roofline puts under the bandwidth roof (``analyzers.peaks``) that reach less than **50 %** of
peak bandwidth while lasting longer than the latency floor: a streaming kernel on an HBM GPU
normally reaches 70-90 % of copy bandwidth, so under half means most of its time is not
bytes moving (poor access pattern, atomics, too little parallelism). Only the 10 longest
kernels, each taking at least 2 % of step time, are considered: a kernel below that cannot be
the bottleneck whatever its efficiency, and summing many small elementwise kernels would
report a diffuse property of every eager-mode model rather than a fixable stall. The saving
is each kernel's time minus its minimum bytes at 70 % of peak; graded 5 % / 20 % on it.
Communication kernels (NCCL/RCCL) are never considered: they wait on peers and the link, and
their time is the communication analyzer's (exposed communication in the breakdown).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from stallscope.analyzers.base import Finding, Impact, register
from stallscope.analyzers.builtin import _common as c
from stallscope.analyzers.model import Kind
from stallscope.analyzers.peaks import kernel_rooflines
from stallscope.analyzers.vocab import is_comm_kernel

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext, EventTable

BYTES_PER_ELEMENT_BWD = 12
GRKAN_BW_PCT_MAX = 10.0
GRKAN_BWD_FWD_RATIO_MIN = 10.0
HEALTHY_BW_FRACTION = 0.70
GENERIC_BW_PCT_MAX = 50.0
GENERIC_MIN_PCT_OF_STEP = 2.0
GENERIC_TOP_KERNELS = 10

_BWD_KERNEL = re.compile(r"rational.*bwd|rational.*backward", re.I)
_FWD_KERNEL = re.compile(r"rational.*fwd|rational.*forward", re.I)
_BWD_NODE = re.compile(r"rational\w*backward", re.I)
_FWD_OP = re.compile(r"^(?!autograd::)(?!.*backward)\w*rational\w*$", re.I)
# The activation modules themselves (KAT's KAT_Group, ours KATGroup, any *Rational*), not the
# model around them (KATVisionTransformer would take the whole forward as "the layer's").
_KAT_MODULE = re.compile(r"^nn\.Module: (\w*KAT_?Group\w*|\w*Rational\w*|\w*GRKAN\w*|\w*GrKan\w*)(_\d+)?$", re.I)


def _grkan_rows(ev: EventTable) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(backward GPU rows, forward GPU rows, backward anchor ops, forward anchor ops)."""
    bwd_nodes = ev.rows_named(lambda s: bool(_BWD_NODE.search(s)) and not s.startswith("autograd::engine"), Kind.CPU_OP)
    if not len(bwd_nodes):
        bwd_nodes = ev.rows_named(lambda s: bool(_BWD_NODE.search(s)), Kind.CPU_OP)
    fwd_ops = ev.rows_named(lambda s: bool(_FWD_OP.match(s)), Kind.CPU_OP)
    bwd_k = ev.rows_named(lambda s: bool(_BWD_KERNEL.search(s)), Kind.KERNEL)
    fwd_k = ev.rows_named(lambda s: bool(_FWD_KERNEL.search(s)), Kind.KERNEL)
    if not len(bwd_k) and len(bwd_nodes):
        bwd_k = c.gpu_rows_launched_within(ev, bwd_nodes)
    if not len(fwd_k) and len(fwd_ops):
        fwd_k = c.gpu_rows_launched_within(ev, fwd_ops)
    if not len(fwd_k):
        mods = ev.rows_named(lambda s: bool(_KAT_MODULE.match(s)), Kind.PYTHON)
        if len(mods):
            fwd_k = c.gpu_rows_launched_within(ev, mods)
    return c.in_window(ev, bwd_k), c.in_window(ev, fwd_k), bwd_nodes, fwd_ops


def _elements(ev: EventTable, anchors: np.ndarray, bwd_kernels: np.ndarray) -> int | None:
    """Elements processed by the rational backwards in the window (grad_output numel)."""
    total = 0
    for r in c.in_window(ev, anchors):
        dims = ev.extra.get(int(r), {}).get("input_dims") or []
        for d in dims:
            if isinstance(d, list) and d and all(isinstance(x, (int, float)) for x in d):
                total += int(np.prod(d))
                break
    if total:
        return total
    for r in bwd_kernels:  # KAT's 1-D launch: ceil(N / 256) programs of 256 elements
        grid = ev.extra.get(int(r), {}).get("grid")
        if grid and len(grid) == 3 and grid[1] == 1 and grid[2] == 1:
            total += int(grid[0]) * 256
        else:
            return None
    return total or None


def _grkan_finding(ctx: AnalysisContext) -> Finding | None:
    rank = ctx.ranks[0]
    ev = rank.events
    bwd_k, fwd_k, bwd_nodes, fwd_ops = _grkan_rows(ev)
    on_gpu = c.has_gpu(ev)
    if on_gpu:
        if not len(bwd_k):
            return None
        bwd_ns = int(ev.dur_ns[bwd_k].sum())
        fwd_ns = int(ev.dur_ns[fwd_k].sum()) if len(fwd_k) else 0
    else:
        bwd_ns = c.device_time_ns(ev, c.in_window(ev, bwd_nodes))
        fwd_ns = c.device_time_ns(ev, c.in_window(ev, fwd_ops))
        if not bwd_ns:
            return None
    total_ns, n_steps = c.window_ns(rank)
    if not total_ns:
        return None
    ratio = bwd_ns / fwd_ns if fwd_ns else None
    if ratio is not None and ratio <= GRKAN_BWD_FWD_RATIO_MIN:
        return None
    peaks = c.peaks(ctx)
    elements = _elements(ev, bwd_nodes, bwd_k)
    evidence: dict[str, object] = {
        "backward_ms_per_step": c.ms(bwd_ns) / n_steps,
        "forward_ms_per_step": c.ms(fwd_ns) / n_steps,
        "backward_over_forward_x": ratio,
        "backward_calls_per_step": (len(bwd_k) if on_gpu else len(c.in_window(ev, bwd_nodes))) / n_steps,
    }
    confidence = 0.9
    saving_ns = float(bwd_ns) * 0.9
    if elements and peaks is not None and on_gpu:
        eff_gbps = BYTES_PER_ELEMENT_BWD * elements / (bwd_ns * 1e-9) / 1e9
        pct = 100.0 * eff_gbps / peaks.dram_gbps
        evidence.update(
            {
                "elements_per_step": elements / n_steps,
                "effective_bandwidth_gbps": eff_gbps,
                "effective_bandwidth_pct_of_peak": pct,
                "peak_bandwidth_gbps": peaks.dram_gbps,
                "peak_source": peaks.source,
            }
        )
        if pct >= GRKAN_BW_PCT_MAX:
            return None
        floor_ns = BYTES_PER_ELEMENT_BWD * elements / (HEALTHY_BW_FRACTION * peaks.dram_gbps * 1e9) * 1e9
        saving_ns = max(0.0, bwd_ns - floor_ns)
    else:
        confidence = 0.6
        evidence["bandwidth_check"] = "skipped: " + (
            "no GPU in trace" if not on_gpu else "elements or GPU peak unknown"
        )
    if ratio is None:
        if not (elements and peaks is not None and on_gpu):
            return None
        confidence = min(confidence, 0.7)
    share = 100.0 * bwd_ns / total_ns
    kernels = c.top_counts(ev.name_of(int(r)) for r in bwd_k)
    nodes = c.top_counts(ev.name_of(int(r)) for r in bwd_nodes)
    evidence["backward_pct_of_step"] = share
    return Finding(
        id="grkan-atomic-backward",
        category="memory-bound",
        title="GR-KAN backward is stalled on per-element atomic gradient accumulation",
        severity=c.grade(share),
        impact=Impact(share, c.ms(saving_ns) / n_steps),
        evidence=evidence,
        where={"kernels": kernels, "autograd_nodes": nodes},
        confidence=confidence,
        fixes=["flashkat"],
        advice="Swap the rational activation for the FlashKAT kernels (stallscope profile --auto-patch), "
        "which accumulate coefficient gradients per block instead of per element.",
    )


def _generic_finding(ctx: AnalysisContext, exclude: set[str]) -> Finding | None:
    peaks = c.peaks(ctx)
    rank = ctx.ranks[0]
    total_ns, n_steps = c.window_ns(rank)
    if peaks is None or not total_ns:
        return None
    slow = []
    saving_ms = 0.0
    step_ms = c.ms(total_ns)
    for k in kernel_rooflines(ctx)[:GENERIC_TOP_KERNELS]:
        if 100.0 * k.total_ms / step_ms < GENERIC_MIN_PCT_OF_STEP:
            continue
        if k.kernel in exclude or is_comm_kernel(k.kernel) or k.cls != "memory-bound":
            continue
        if k.bandwidth_pct_of_peak is None or k.bytes is None:
            continue
        if k.bandwidth_pct_of_peak >= GENERIC_BW_PCT_MAX:
            continue
        floor_ms = k.bytes / (HEALTHY_BW_FRACTION * peaks.dram_gbps * 1e9) * 1e3
        gain = max(0.0, k.total_ms - floor_ms)
        if gain > 0:
            slow.append((gain, k))
            saving_ms += gain
    if not slow:
        return None
    slow.sort(key=lambda t: t[0], reverse=True)
    share = 100.0 * saving_ms / c.ms(total_ns)
    top = slow[0][1]
    return Finding(
        id="memory-bound-kernels",
        category="memory-bound",
        title=f"{len(slow)} memory-bound kernel(s) reach under {GENERIC_BW_PCT_MAX:.0f}% of peak bandwidth",
        severity=c.grade(share),
        impact=Impact(share, saving_ms / n_steps),
        evidence={
            "kernels": len(slow),
            "kernel_ms_per_step": sum(k.total_ms for _, k in slow) / n_steps,
            "top_kernel_bandwidth_pct_of_peak": top.bandwidth_pct_of_peak,
            "top_kernel_achieved_gbps": top.achieved_gbps,
            "peak_bandwidth_gbps": peaks.dram_gbps,
            "peak_source": peaks.source,
        },
        where={"kernels": [k.kernel for _, k in slow[:5]], "ops": sorted({o for _, k in slow[:5] for o in k.ops})},
        confidence=0.6,
        fixes=[],
        advice="Fuse the elementwise chain around these kernels (torch.compile) or fix their access pattern.",
    )


@register
class MemoryBound(c.PerRank):
    """Kernels held by memory traffic; GR-KAN atomic backward (fix flashkat)."""

    name = "memory-bound"
    requires = frozenset({"trace"})
    description = "memory-bound kernels by roofline; the GR-KAN per-element atomic backward"

    def _analyze_rank(self, ctx: AnalysisContext) -> list[Finding]:
        if not ctx.ranks:
            return []
        out = []
        grkan = _grkan_finding(ctx)
        exclude: set[str] = set()
        if grkan is not None:
            out.append(grkan)
            exclude = set(grkan.where.get("kernels", []))
            ev = ctx.ranks[0].events
            exclude |= {ev.name_of(int(r)) for r in _grkan_rows(ev)[0]}
        if c.has_gpu(ctx.ranks[0].events):
            generic = _generic_finding(ctx, exclude)
            if generic is not None:
                out.append(generic)
        return out
