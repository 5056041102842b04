"""precision: fp32 GEMM/convolution kernels off the tensor cores on a GPU that has them.

Since Ampere, fp32 matmuls can run on tensor cores as TF32 (``torch.backends.cuda.matmul.
allow_tf32`` / ``torch.set_float32_matmul_precision("high")``), 6-8x the fp32 SIMT roof (H200:
~400 vs ~67 TFLOP/s), and bf16 autocast doubles that again. PyTorch leaves TF32 off for
matmuls by default, so fp32 models run their GEMMs on the SIMT units.

A kernel is an fp32 GEMM/conv off the tensor cores when its name is a GEMM/conv family name
(``gemm``, ``gemv``, ``conv``, ``wgrad``/``dgrad``) with a SIMT marker (``sgemm``, ``simt``,
``ffma``, ``f32f32_f32f32`` without ``tf32``) and no tensor-core marker (``tf32``, ``h884``/
``s1688``-style MMA shapes, ``hmma``, ``gmma``, ``bf16``/``f16``), or when its owning op
(``aten::mm``/``addmm``/``bmm``/``convolution``...) had only ``float`` inputs and its name has
no tensor-core marker. Only on GPUs whose peak row has a TF32 roof (``analyzers.peaks``).
Left out: matrix-vector kernels (``gemv``) and split-K reductions, which are bandwidth-bound
so tensor cores do not speed them up, and GEMMs whose mean duration is under the latency
floor (5 µs, ``analyzers.peaks.LATENCY_BOUND_US``): cuBLAS picks SIMT kernels for tiny shapes
even with TF32 allowed, and their time is launch latency, not math.

The saving estimate assumes the kernel would run at the TF32/fp32 roof ratio (an upper
bound: small GEMMs gain less). Severity by the fp32 kernels' share of step time (5 % / 20 %).
Fixes ``tf32`` (keeps fp32 storage, ~1e-3 relative error in matmuls) and ``amp``.

When the trace's GPU timestamps are unusable (``analyzers.clock``: the kernels are
``Kind.UNTIMED_KERNEL`` rows), the same name and op-shape tests run on the untimed kernels.
Durations being unknown, the latency floor is applied to the owning op's FLOPs instead (from its
input shapes; for convolutions an upper bound, stride and padding not being recorded): a GEMM
under 5 µs at the fp32 roof is left out. The impact is a lower bound, said in
``evidence.impact_basis``: the FLOPs of the matmul ops with shapes at the fp32 roof (the fastest
fp32 roof of the peak table on an unknown GPU), capped at the step; 0 when no shape gives FLOPs.
Severity is **medium** when at least half of the GEMM/conv launches are fp32 off the tensor
cores (matmuls and convolutions are most of a training step's GPU time, so half of them at a
sixth of the tensor-core roof is very likely over the 5 % medium cut point) or the lower bound
reaches 5 %, else **low**; never high, since the size is not measured. Confidence 0.5.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from stallscope.analyzers.base import Finding, Impact, Severity, register
from stallscope.analyzers.builtin import _common as c
from stallscope.analyzers.model import Kind
from stallscope.analyzers.peaks import LATENCY_BOUND_US, PEAKS
from stallscope.analyzers.vocab import anycase

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext

_GEMM = anycase(r"gemm|gemv|conv|wgrad|dgrad|fprop|cutlass|xmma|nvjet")
_TENSOR_CORE = anycase(
    r"tf32|h884|h1688|h16816|s1688|s16816|i8816|hmma|gmma|wgmma|bf16|f16|fp16|half|tensorop|_tc_|e4m3|e5m2|16x8x16|nvjet_[thbqe]"
)
_SIMT = anycase(r"sgemm|simt|ffma|f32f32_f32f32|gemmsn|gemmk1|implicit_convolve_sgemm")
_NOT_TENSOR_CORE_WORK = anycase(r"gemv|splitkreduce|reduce")
# Without durations: medium when at least this share of GEMM/conv launches is fp32 off the
# tensor cores (module doc).
UNTIMED_MEDIUM_LAUNCH_SHARE = 0.5
# The fastest fp32 (SIMT) roof of the GPUs with a TF32 roof in the peak table (L40S: 91.6
# TFLOP/s): on an unknown GPU the shape-based times use it, which calls the most GEMMs tiny and
# gives the smallest lower bound.
FASTEST_FP32_TFLOPS = max(p.fp32_tflops for _, p in PEAKS if p.tf32_tflops)
_MATMUL_OPS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::matmul",
    "aten::linear",
    "aten::convolution",
    "aten::_convolution",
    "aten::cudnn_convolution",
    "aten::conv2d",
    "aten::conv1d",
    "aten::conv3d",
    "aten::convolution_backward",
    "aten::addmv",
    "aten::mv",
}


def _fp32_op(ev, op: int) -> bool:
    if op < 0 or ev.name_of(op) not in _MATMUL_OPS:
        return False
    types = [t for t in (ev.extra.get(op, {}).get("input_types") or []) if t not in ("Scalar", "", "ScalarList")]
    return bool(types) and all(t == "float" for t in types if "Tensor" not in t)


@register
class Precision(c.PerRank):
    """fp32 GEMM/conv kernels that could run on tensor cores (TF32/AMP)."""

    name = "precision"
    # "gpu" is not required: with unusable GPU timestamps the kernels are untimed rows, which
    # ctx.has("gpu") does not count, and the name-based fallback reads them
    requires = frozenset({"trace"})
    description = "fp32 matmuls/convolutions off the tensor cores on a GPU that has them"

    def _analyze_rank(self, ctx: AnalysisContext) -> list[Finding]:
        peaks = c.peaks(ctx)
        if peaks is not None and not peaks.has_tensor_cores_fp32:
            return []
        rank = ctx.ranks[0]
        ev = rank.events
        total_ns, n_steps = c.window_ns(rank)
        kernels = c.gpu_rows(ev, (Kind.KERNEL,))
        if not len(kernels):
            untimed = c.gpu_rows(ev, (Kind.UNTIMED_KERNEL,))
            return self._by_name_only(ev, untimed, total_ns, max(n_steps, 1), peaks) if len(untimed) else []
        if not total_ns:
            return []
        hits = self._fp32_kernel_rows(ev, kernels, LATENCY_BOUND_US)
        if not len(hits):
            return []
        spent = int(ev.dur_ns[hits].sum())
        share = 100.0 * spent / total_ns
        ratio = (peaks.fp32_tflops / peaks.tf32_tflops) if peaks is not None and peaks.tf32_tflops else 1 / 6
        saving = spent * (1.0 - ratio)
        gpu_busy = c.covered_ns(ev.ts_ns[kernels], ev.ts_ns[kernels] + ev.dur_ns[kernels])
        evidence = {
            "fp32_gemm_ms_per_step": c.ms(spent) / n_steps,
            "fp32_gemm_pct_of_step": share,
            "fp32_gemm_pct_of_gpu_busy": 100.0 * spent / gpu_busy if gpu_busy else None,
            "kernels_per_step": len(hits) / n_steps,
            "fp32_roof_tflops": peaks.fp32_tflops if peaks else None,
            "tf32_roof_tflops": peaks.tf32_tflops if peaks else None,
        }
        ops = c.top_counts(ev.name_of(int(ev.op_of[r])) for r in hits if len(ev.op_of) and ev.op_of[r] >= 0)
        return [
            Finding(
                id="fp32-matmul-off-tensor-cores",
                category="precision",
                title="fp32 matmuls/convolutions run on SIMT units, not tensor cores",
                severity=c.grade(share),
                impact=Impact(share, c.ms(saving) / n_steps),
                evidence=evidence,
                where={
                    "kernels": c.top_counts(ev.name_of(r) for r in hits),
                    "ops": ops,
                    "python": c.python_lines_of(ev, np.asarray(hits)),
                },
                confidence=0.85 if peaks is not None else 0.6,
                fixes=["tf32", "amp"],
                advice="torch.backends.cuda.matmul.allow_tf32 = True and torch.backends.cudnn.allow_tf32 = True "
                "(or torch.set_float32_matmul_precision('high')), or train under torch.autocast('cuda', torch.bfloat16).",
            )
        ]

    def _by_name_only(self, ev, kernels: np.ndarray, total_ns: int, n_steps: int, peaks) -> list[Finding]:
        """The finding from kernel names and op shapes alone (GPU durations unusable)."""
        roof = peaks.fp32_tflops if peaks is not None and peaks.fp32_tflops else FASTEST_FP32_TFLOPS
        hits, lower_ns, sized, ops = [], 0.0, 0, set()
        for r in self._fp32_kernel_rows(ev, kernels, 0.0):
            op = int(ev.op_of[r])
            exact, upper = _op_flops(ev, op)
            if upper is not None and upper / (roof * 1e12) * 1e6 < LATENCY_BOUND_US:
                continue  # a tiny GEMM: cuBLAS picks SIMT kernels for these even with TF32 on
            hits.append(r)
            if op >= 0 and op not in ops:
                ops.add(op)
                if exact is not None:
                    sized += 1
                    lower_ns += exact / (roof * 1e12) * 1e9
        if not hits:
            return []
        gemms = int(sum(1 for r in kernels if _GEMM(ev.name_of(int(r)))))
        launch_share = len(hits) / max(gemms, len(hits))
        # the steps are CPU ranges here: a host that never waits ends them before the GPU work it
        # queued, so the bound may exceed them; a share is capped at the step, as is the saving
        share = min(100.0 * lower_ns / total_ns, 100.0) if total_ns else 0.0
        ratio = (peaks.fp32_tflops / peaks.tf32_tflops) if peaks is not None and peaks.tf32_tflops else 1 / 6
        medium = launch_share >= UNTIMED_MEDIUM_LAUNCH_SHARE or share >= c.MEDIUM_PCT
        basis = (
            f"lower bound: the FLOPs of {sized} of {len(ops)} matmul ops (from their input shapes) at the fp32 "
            f"roof ({roof:g} TFLOP/s); GPU timestamps are unusable, the rest is not measured"
            if sized
            else "unknown: GPU timestamps are unusable and no op shape gives FLOPs, so step_time_pct and the saving are 0"
        )
        launches = np.asarray([int(ev.launch_of[r]) for r in hits if ev.launch_of[r] >= 0], dtype=np.int64)
        return [
            Finding(
                id="fp32-matmul-off-tensor-cores",
                category="precision",
                title="fp32 matmuls/convolutions run on SIMT units, not tensor cores (from kernel names; GPU times unusable)",
                severity=Severity.MEDIUM if medium else Severity.LOW,
                impact=Impact(share, min(lower_ns * (1.0 - ratio), total_ns) / 1e6 / n_steps),
                evidence={
                    "impact_basis": basis,
                    "fp32_gemm_kernels_per_step": len(hits) / n_steps,
                    "gemm_kernels_per_step": gemms / n_steps,
                    "fp32_share_of_gemm_launches_pct": 100.0 * launch_share,
                    "fp32_gemm_min_ms_per_step": lower_ns / 1e6 / n_steps,
                    "fp32_roof_tflops": roof,
                    "tf32_roof_tflops": peaks.tf32_tflops if peaks else None,
                },
                where={
                    "kernels": c.top_counts(ev.name_of(r) for r in hits),
                    "ops": c.top_counts(ev.name_of(int(ev.op_of[r])) for r in hits if ev.op_of[r] >= 0),
                    "python": c.python_lines_of(ev, launches),
                },
                confidence=0.5,
                fixes=["tf32", "amp"],
                advice="The GPU times in this trace are unusable, so the gain is a lower bound at best; the kernel names "
                "show fp32 matmuls off the tensor cores. torch.backends.cuda.matmul.allow_tf32 = True and "
                "torch.backends.cudnn.allow_tf32 = True (or torch.set_float32_matmul_precision('high')), or "
                "torch.autocast('cuda', torch.bfloat16); re-profile to measure.",
            )
        ]

    @staticmethod
    def _fp32_kernel_rows(ev, kernels: np.ndarray, min_mean_us: float) -> list[int]:
        """Kernel rows (in ``kernels`` order) that are fp32 GEMMs/convs off the tensor cores;
        names whose mean duration is under ``min_mean_us`` are left out (0: no floor).

        Name tests run once per distinct kernel name; only rows whose name is a GEMM without a
        SIMT marker look at their owning op."""
        ids, inverse = np.unique(ev.name[kernels], return_inverse=True)
        mean_us = np.bincount(inverse, weights=ev.dur_ns[kernels]) / np.bincount(inverse) / 1e3
        simt = np.zeros(len(ids), dtype=bool)
        gemm_only = np.zeros(len(ids), dtype=bool)
        for i, name_id in enumerate(ids):
            name = ev.names[int(name_id)]
            if _TENSOR_CORE(name) or _NOT_TENSOR_CORE_WORK(name) or mean_us[i] < min_mean_us:
                continue
            if _GEMM(name):
                simt[i] = _SIMT(name)
                gemm_only[i] = not simt[i]
        hit = simt[inverse]
        has_ops = len(ev.op_of) > 0
        for k in np.flatnonzero(gemm_only[inverse]):
            r = kernels[k]
            hit[k] = _fp32_op(ev, int(ev.op_of[r]) if has_ops else -1)
        return [int(r) for r in kernels[hit]]


def _dims(ev, op: int) -> list[list[int]] | None:
    """The op's input shapes as lists of ints (None when absent or odd)."""
    dims = ev.extra.get(op, {}).get("input_dims") if op >= 0 else None
    if not isinstance(dims, list):
        return None
    out = []
    for d in dims:
        if not isinstance(d, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in d):
            return None
        out.append(d)
    return out


def _op_flops(ev, op: int) -> tuple[float | None, float | None]:
    """(exact FLOPs, an upper bound of the FLOPs) of a matmul / convolution op from its shapes;
    None where the shapes do not tell. Convolutions have only the bound (stride and padding are
    not recorded: the output is taken as no larger than the input plus the kernel)."""
    if op < 0:
        return None, None
    flops = float(ev.flops[op]) if len(ev.flops) else math.nan
    if math.isfinite(flops) and flops > 0:
        return flops, flops
    name, dims = ev.name_of(op), _dims(ev, op)
    if not dims:
        return None, None
    exact = _gemm_flops(name, [d for d in dims if d])
    if exact is not None:
        return exact, exact
    # forward: (input, weight, ...); backward: (grad_output, input, weight, ...), twice the work
    backward = name == "aten::convolution_backward"
    x, w = (dims[1], dims[2]) if backward and len(dims) >= 3 else (dims[0], dims[1]) if len(dims) >= 2 else ([], [])
    if "conv" in name and len(x) >= 3 and len(w) == len(x):
        out_spatial = math.prod(xi + wi for xi, wi in zip(x[2:], w[2:], strict=True))
        return None, (2.0 if backward else 1.0) * 2.0 * x[0] * w[0] * math.prod(w[1:]) * out_spatial
    return None, None


def _gemm_flops(name: str, dims: list[list[int]]) -> float | None:
    """2·M·N·K (times the batch) of a matmul op from its non-empty input shapes."""
    try:
        if name in ("aten::mm", "aten::addmm") and len(dims[-2]) == 2 and len(dims[-1]) == 2:
            (m, k), (_, n) = dims[-2], dims[-1]
            return 2.0 * m * k * n
        if name in ("aten::bmm", "aten::baddbmm") and len(dims[-2]) == 3 and len(dims[-1]) == 3:
            (b, m, k), (_, _, n) = dims[-2], dims[-1]
            return 2.0 * b * m * k * n
        if name == "aten::linear" and len(dims[1]) == 2:
            n, k = dims[1]
            return 2.0 * math.prod(dims[0][:-1]) * k * n
        if name == "aten::matmul" and len(dims[0]) >= 2 and len(dims[1]) >= 2:
            *batch, m, k = dims[0]
            return 2.0 * math.prod(batch) * m * k * dims[1][-1]
        if name in ("aten::mv", "aten::addmv"):
            mat = next(d for d in dims if len(d) == 2)
            return 2.0 * mat[0] * mat[1]
    except (ValueError, IndexError, StopIteration):
        return None
    return None
