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
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from stallscope.analyzers.base import Finding, Impact, register
from stallscope.analyzers.builtin import _common as c
from stallscope.analyzers.model import Kind
from stallscope.analyzers.peaks import LATENCY_BOUND_US

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext

_GEMM = re.compile(r"gemm|gemv|conv|wgrad|dgrad|fprop|cutlass|xmma|nvjet", re.I)
_TENSOR_CORE = re.compile(
    r"tf32|h884|h1688|h16816|s1688|s16816|i8816|hmma|gmma|wgmma|bf16|f16|fp16|half|tensorop|_tc_|e4m3|e5m2|16x8x16|nvjet_[thbqe]",
    re.I,
)
_SIMT = re.compile(r"sgemm|simt|ffma|f32f32_f32f32|gemmSN|gemmk1|implicit_convolve_sgemm", re.I)
_NOT_TENSOR_CORE_WORK = re.compile(r"gemv|splitKreduce|reduce", re.I)
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
    requires = frozenset({"trace", "gpu"})
    description = "fp32 matmuls/convolutions off the tensor cores on a GPU that has them"

    def _analyze_rank(self, ctx: AnalysisContext) -> list[Finding]:
        peaks = c.peaks(ctx)
        if peaks is not None and not peaks.has_tensor_cores_fp32:
            return []
        rank = ctx.ranks[0]
        ev = rank.events
        total_ns, n_steps = c.window_ns(rank)
        kernels = c.gpu_rows(ev, (Kind.KERNEL,))
        if not len(kernels) or not total_ns:
            return []
        hits = self._fp32_kernel_rows(ev, kernels)
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

    @staticmethod
    def _fp32_kernel_rows(ev, kernels: np.ndarray) -> list[int]:
        """Kernel rows (in ``kernels`` order) that are fp32 GEMMs/convs off the tensor cores.

        Name tests run once per distinct kernel name; only rows whose name is a GEMM without a
        SIMT marker look at their owning op."""
        ids, inverse = np.unique(ev.name[kernels], return_inverse=True)
        mean_us = np.bincount(inverse, weights=ev.dur_ns[kernels]) / np.bincount(inverse) / 1e3
        simt = np.zeros(len(ids), dtype=bool)
        gemm_only = np.zeros(len(ids), dtype=bool)
        for i, name_id in enumerate(ids):
            name = ev.names[int(name_id)]
            if _TENSOR_CORE.search(name) or _NOT_TENSOR_CORE_WORK.search(name) or mean_us[i] < LATENCY_BOUND_US:
                continue
            if _GEMM.search(name):
                simt[i] = bool(_SIMT.search(name))
                gemm_only[i] = not simt[i]
        hit = simt[inverse]
        has_ops = len(ev.op_of) > 0
        for k in np.flatnonzero(gemm_only[inverse]):
            r = kernels[k]
            hit[k] = _fp32_op(ev, int(ev.op_of[r]) if has_ops else -1)
        return [int(r) for r in kernels[hit]]
