"""GPU peaks, FLOPs and minimum bytes of ops, and a roofline class for every kernel.

Peaks are keyed by device name (the string NVML / ``torch.cuda.get_device_name`` reports).
The H200 row was *measured* on our machine (device-to-device copy 4.25 TB/s, dense bf16
GEMM ~790 TFLOP/s, fp32 SIMT ~67 TFLOP/s, TF32 ~400 TFLOP/s); every other row is the vendor
datasheet's dense (non-sparse) figure and says so in ``source``. Datasheet bandwidth is a
ceiling that copies reach at ~90 %, so achieved-fraction figures against datasheet rows are
slightly pessimistic.

Classification of a kernel (aggregated by name over the window), in order:

0. **communication** for collective kernels (NCCL/RCCL names, ``vocab.is_comm_kernel``): their
   time is spent waiting on peers and the link, not on this GPU's memory or arithmetic, so no
   roofline applies (their launching op's tensor bytes over the kernel's time would read as a
   badly memory-bound kernel). Their cost is the breakdown's exposed communication.
1. **latency-bound** when its mean duration is under ``LATENCY_BOUND_US`` (5 µs). A kernel
   launch costs 2-5 µs of CPU and ~1-2 µs of GPU ramp-up (grid launch, tail of the last wave);
   below 5 µs that fixed cost is comparable to the work, so neither roof explains its time and
   the remedy is fewer, larger launches (fusion, CUDA graphs), not a faster algorithm.
2. **compute-bound** / **memory-bound** by roofline position when FLOPs and minimum bytes of
   the owning op are known: arithmetic intensity (FLOP per byte) at or above the ridge point
   (peak FLOP/s / peak bytes/s for the op's dtype) is compute-bound, below it memory-bound.
   Ops with known bytes and no FLOP formula (elementwise, copies, reductions, norms) have an
   intensity near zero and are memory-bound.
3. From the kernel name alone (GEMM/conv/attention families -> compute-bound; elementwise,
   reduce, copy, fill -> memory-bound) when no shapes were recorded.
4. **unknown** otherwise.

No torch import here.
"""

from __future__ import annotations

import heapq
import math
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stallscope.analyzers.model import Kind
from stallscope.analyzers.vocab import anycase, is_comm_kernel

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext, EventTable

__all__ = [
    "GpuPeaks",
    "KernelRoofline",
    "PEAKS",
    "LATENCY_BOUND_US",
    "classify_kernels",
    "dtype_bytes",
    "kernel_rooflines",
    "op_flops",
    "op_min_bytes",
    "peaks_for",
]

LATENCY_BOUND_US = 5.0


@dataclass(frozen=True)
class GpuPeaks:
    """Peak throughputs of one GPU model. ``*_tflops`` are dense; ``None`` = no such unit."""

    name: str
    dram_gbps: float
    bf16_tflops: float | None
    fp16_tflops: float | None
    tf32_tflops: float | None
    fp32_tflops: float
    memory_gb: float
    source: str  # "measured" or "datasheet"

    @property
    def has_tensor_cores_fp32(self) -> bool:
        """Whether fp32 matmuls could run on tensor cores (TF32, Ampere and later)."""
        return self.tf32_tflops is not None

    def compute_tflops(self, dtype: str) -> float:
        """The roof for a dtype class: ``bf16``, ``fp16``, ``tf32``, ``fp32``."""
        value = {"bf16": self.bf16_tflops, "fp16": self.fp16_tflops or self.bf16_tflops, "tf32": self.tf32_tflops}.get(
            dtype
        )
        return float(value) if value else float(self.fp32_tflops)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dram_gbps": self.dram_gbps,
            "bf16_tflops": self.bf16_tflops,
            "tf32_tflops": self.tf32_tflops,
            "fp32_tflops": self.fp32_tflops,
            "memory_gb": self.memory_gb,
            "source": self.source,
        }


# Most specific patterns first; matched case-insensitively against the device name.
PEAKS: list[tuple[str, GpuPeaks]] = [
    ("gh200", GpuPeaks("NVIDIA GH200", 4000, 989, 989, 495, 67, 96, "datasheet")),
    ("h200", GpuPeaks("NVIDIA H200", 4250, 790, 790, 400, 67, 141, "measured")),
    ("h100 nvl", GpuPeaks("NVIDIA H100 NVL", 3900, 835, 835, 418, 60, 94, "datasheet")),
    ("h100 pcie", GpuPeaks("NVIDIA H100 PCIe", 2000, 756, 756, 378, 51, 80, "datasheet")),
    ("h100", GpuPeaks("NVIDIA H100 SXM", 3350, 989, 989, 495, 67, 80, "datasheet")),
    ("h800", GpuPeaks("NVIDIA H800", 3350, 989, 989, 495, 67, 80, "datasheet")),
    ("b200", GpuPeaks("NVIDIA B200", 8000, 2250, 2250, 1100, 75, 180, "datasheet")),
    ("a100-sxm4-40gb", GpuPeaks("NVIDIA A100 SXM 40GB", 1555, 312, 312, 156, 19.5, 40, "datasheet")),
    ("a100-pcie-40gb", GpuPeaks("NVIDIA A100 PCIe 40GB", 1555, 312, 312, 156, 19.5, 40, "datasheet")),
    ("a100 80gb pcie", GpuPeaks("NVIDIA A100 PCIe 80GB", 1935, 312, 312, 156, 19.5, 80, "datasheet")),
    ("a100", GpuPeaks("NVIDIA A100 SXM 80GB", 2039, 312, 312, 156, 19.5, 80, "datasheet")),
    ("a800", GpuPeaks("NVIDIA A800", 2039, 312, 312, 156, 19.5, 80, "datasheet")),
    ("l40s", GpuPeaks("NVIDIA L40S", 864, 362, 362, 183, 91.6, 48, "datasheet")),
    ("l40", GpuPeaks("NVIDIA L40", 864, 181, 181, 90.5, 90.5, 48, "datasheet")),
    ("l4", GpuPeaks("NVIDIA L4", 300, 121, 121, 60, 30.3, 24, "datasheet")),
    ("a10g", GpuPeaks("NVIDIA A10G", 600, 70, 70, 35, 31.2, 24, "datasheet")),
    ("a10", GpuPeaks("NVIDIA A10", 600, 125, 125, 62.5, 31.2, 24, "datasheet")),
    ("rtx 4090", GpuPeaks("NVIDIA GeForce RTX 4090", 1008, 165, 165, 82.6, 82.6, 24, "datasheet")),
    ("rtx 3090", GpuPeaks("NVIDIA GeForce RTX 3090", 936, 71, 71, 35.6, 35.6, 24, "datasheet")),
    ("rtx a6000", GpuPeaks("NVIDIA RTX A6000", 768, 155, 155, 77.4, 38.7, 48, "datasheet")),
    ("v100", GpuPeaks("NVIDIA V100", 900, None, 125, None, 15.7, 32, "datasheet")),
    ("t4", GpuPeaks("NVIDIA T4", 320, None, 65, None, 8.1, 16, "datasheet")),
]


def peaks_for(device_name: str | None) -> GpuPeaks | None:
    """The peak table row for a device name, or None when the GPU is not in the table."""
    if not device_name:
        return None
    low = device_name.lower()
    for pattern, peaks in PEAKS:
        if pattern in low:
            return peaks
    return None


_DTYPE_BYTES = {
    "float": 4,
    "double": 8,
    "c10::half": 2,
    "c10::bfloat16": 2,
    "half": 2,
    "bfloat16": 2,
    "long int": 8,
    "long": 8,
    "int": 4,
    "short int": 2,
    "short": 2,
    "signed char": 1,
    "unsigned char": 1,
    "bool": 1,
    "c10::float8_e4m3fn": 1,
    "c10::float8_e5m2": 1,
    "c10::complex<float>": 8,
}


def dtype_bytes(type_name: str) -> int:
    """Bytes per element of a profiler ``Input type`` string (0 for scalars, lists, unknown)."""
    return _DTYPE_BYTES.get(type_name.strip().lower(), 0)


def _dtype_class(types: Sequence[str]) -> str:
    low = [t.lower() for t in types]
    if any("bfloat16" in t for t in low):
        return "bf16"
    if any("half" in t for t in low):
        return "fp16"
    if any("float8" in t for t in low):
        return "bf16"
    return "fp32"


def _numel(dims: Any) -> int:
    if not isinstance(dims, (list, tuple)) or not dims or not all(isinstance(d, (int, float)) for d in dims):
        return 0 if not (isinstance(dims, (list, tuple)) and len(dims) == 0) else 1
    return int(math.prod(int(d) for d in dims))


def _tensor_dims(dims: Sequence[Any]) -> list[list[int]]:
    return [list(d) for d in dims if isinstance(d, (list, tuple)) and d and all(isinstance(x, (int, float)) for x in d)]


def op_flops(name: str, dims: Sequence[Any]) -> float | None:
    """FLOPs of one call of a common op from its input dims (multiply-add = 2), or None.

    Covers mm, addmm, bmm, baddbmm, matmul, linear and scaled_dot_product_attention (forward;
    its backward nodes count 2.5x). Convolutions need stride/padding that the trace lacks:
    their FLOPs come from the profiler's ``flops`` field instead.
    """
    short = name.split("::")[-1]
    t = _tensor_dims(dims)
    try:
        if short in ("mm",) and len(t) >= 2:
            (m, k), (_, n) = t[0][-2:], t[1][-2:]
            return 2.0 * m * k * n
        if short in ("addmm",) and len(t) >= 3:
            (m, k), (_, n) = t[1][-2:], t[2][-2:]
            return 2.0 * m * k * n
        if short in ("bmm",) and len(t) >= 2:
            b, m, k = t[0][-3:]
            n = t[1][-1]
            return 2.0 * b * m * k * n
        if short in ("baddbmm",) and len(t) >= 3:
            b, m, k = t[1][-3:]
            n = t[2][-1]
            return 2.0 * b * m * k * n
        if short in ("matmul",) and len(t) >= 2:
            a, w = t[0], t[1]
            k = a[-1]
            n = w[-1] if len(w) >= 2 else 1
            m = math.prod(a[:-1]) if len(a) >= 2 else 1
            batch_w = math.prod(w[:-2]) if len(w) > 2 else 1
            return 2.0 * m * k * n * (batch_w if len(a) <= 2 else 1)
        if short in ("linear",) and len(t) >= 2:
            a, w = t[0], t[1]
            return 2.0 * math.prod(a[:-1]) * a[-1] * w[0]
        if (
            "scaled_dot_product" in short
            or short.startswith("_flash_attention")
            or short.startswith("_efficient_attention")
        ):
            if len(t) >= 3 and len(t[0]) == 4 and len(t[1]) == 4:
                b, h, length, e = t[0]
                s = t[1][2]
                ev = t[2][-1]
                fwd = 2.0 * b * h * length * s * (e + ev)
                return fwd * (2.5 if "backward" in short else 1.0)
    except (ValueError, IndexError, TypeError):
        return None
    return None


_MATMUL_SHORT = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}


# Ops whose output can be larger than every input (or has no input): the largest-input rule
# would understate their bytes and make them look slow, so their bytes are unknown.
_OUTPUT_NOT_FROM_INPUTS = re.compile(
    r"repeat|expand|upsample|interpolate|embedding(?!_dense_backward)|index_select|gather|scatter|pad|cat$|stack|tile|"
    r"arange|ones|zeros|full|empty|rand|normal|bernoulli|one_hot|im2col|col2im|unfold|grid_sampler|index$|nonzero|"
    r"masked_select|unique|multinomial|conv|pool"
)


def op_min_bytes(name: str, dims: Sequence[Any], types: Sequence[str]) -> int | None:
    """Minimum bytes one call must move: every tensor input read once plus its output written once.

    The output is derived from shapes for matmul-like ops and taken as the largest input
    otherwise (elementwise, norms, copies, reductions: an upper bound for a reduction's output,
    which errs towards calling it efficient). None when no tensor input has a known dtype, or for
    ops whose output is not bounded by their inputs (repeat, upsample, embedding, gather, cat,
    factories, convolutions and pooling, whose output depends on stride/padding).
    """
    if _OUTPUT_NOT_FROM_INPUTS.search(name.split("::")[-1]):
        return None
    total = 0
    largest = 0
    elem = 0
    for d, ty in zip(dims, types, strict=False):
        size = dtype_bytes(str(ty))
        if not size or not isinstance(d, (list, tuple)):
            continue
        nbytes = _numel(d) * size
        total += nbytes
        if nbytes > largest:
            largest, elem = nbytes, size
    if not total:
        return None
    short = name.split("::")[-1]
    t = _tensor_dims(dims)
    out = largest
    try:
        if short in _MATMUL_SHORT and len(t) >= 2:
            a = t[1] if short in ("addmm", "baddbmm") else t[0]
            w = t[2] if short in ("addmm", "baddbmm") and len(t) >= 3 else t[1]
            n = w[0] if short == "linear" else w[-1]
            out = math.prod(a[:-1]) * n * elem
    except (ValueError, IndexError, TypeError):
        out = largest
    return int(total + out)


_COMPUTE_NAME = anycase(
    r"gemm|gemv|xmma|cutlass|cublas|conv|wgrad|dgrad|fprop|flash|fmha|attention|s1688|h1688|s16816|h16816|hmma|gmma"
)
_MEMORY_NAME = anycase(
    r"elementwise|vectorized|reduce|copy|fill|memset|memcpy|cat_|layer_norm|softmax|index|scatter|gather|unrolled"
)
_TF32_NAME = anycase(r"tf32|s1688|s16816|xmma_gemm_f32f32_tf32")


# Ridge points (FLOP per byte) when the GPU is not in the table: an A100-class part.
_DEFAULT_RIDGE = {"bf16": 150.0, "fp16": 150.0, "tf32": 75.0, "fp32": 10.0}


def _name_class(kernel: str) -> str:
    if _COMPUTE_NAME(kernel):
        return "compute-bound"
    if _MEMORY_NAME(kernel):
        return "memory-bound"
    return "unknown"


def _tensor_core_fp32(kernel: str) -> bool:
    return _TF32_NAME(kernel)


@dataclass
class KernelRoofline:
    """One kernel name aggregated over the window, with its place on the roofline."""

    kernel: str
    calls: int
    total_ms: float
    mean_us: float
    flops: float | None
    bytes: float | None
    dtype: str
    achieved_tflops: float | None
    achieved_gbps: float | None
    compute_pct_of_peak: float | None
    bandwidth_pct_of_peak: float | None
    cls: str
    ops: list[str]

    def evidence(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "calls": self.calls,
            "total_ms": self.total_ms,
            "mean_us": self.mean_us,
            "class": self.cls,
        }
        if self.achieved_tflops is not None:
            out["achieved_tflops"] = self.achieved_tflops
        if self.achieved_gbps is not None:
            out["achieved_gbps"] = self.achieved_gbps
        if self.compute_pct_of_peak is not None:
            out["compute_pct_of_peak"] = self.compute_pct_of_peak
        if self.bandwidth_pct_of_peak is not None:
            out["bandwidth_pct_of_peak"] = self.bandwidth_pct_of_peak
        return out


def _op_info(ev: EventTable, op_row: int) -> tuple[str, float | None, int | None, str]:
    name = ev.name_of(op_row)
    extra = ev.extra.get(op_row, {})
    dims = extra.get("input_dims") or []
    types = extra.get("input_types") or []
    flops = float(ev.flops[op_row]) if not np.isnan(ev.flops[op_row]) and ev.flops[op_row] > 0 else op_flops(name, dims)
    nbytes = op_min_bytes(name, dims, types) if dims and types else None
    return name, flops, nbytes, _dtype_class(types)


def _ops_info(ev: EventTable, op_rows: np.ndarray) -> list[tuple[str, float | None, int | None, str]]:
    """:func:`_op_info` of each row (-1: no op), computed once per distinct (name, flops, args):
    the loader shares one args dict between ops with the same shapes and dtypes."""
    none = ("", None, None, "fp32")
    if not len(op_rows):
        return []
    extra = ev.extra
    at = np.maximum(op_rows, 0)
    flops = ev.flops[at]
    keys = np.stack(
        [
            np.where(op_rows >= 0, ev.name[at].astype(np.int64), -1),
            np.where(flops > 0, flops, 0.0).view(np.int64),  # the float's bits: equal floats, equal keys
            np.asarray([id(extra.get(o)) for o in op_rows.tolist()], dtype=np.int64),
        ]
    )
    order = np.lexsort(keys)  # rows with equal keys side by side (a lexsort: np.unique on rows is slow)
    ranked = keys[:, order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (ranked[:, 1:] != ranked[:, :-1]).any(axis=0)
    group = np.empty(len(order), dtype=np.int64)
    group[order] = np.cumsum(new) - 1
    infos = [none if op_rows[i] < 0 else _op_info(ev, int(op_rows[i])) for i in order[new].tolist()]
    return [infos[g] for g in group.tolist()]


_ROOFLINES: dict[tuple[int, int, str | None], tuple[Any, list[KernelRoofline]]] = {}


def kernel_rooflines(ctx: AnalysisContext, rank_index: int = 0) -> list[KernelRoofline]:
    """Every kernel name of one rank, with FLOPs, bytes, achieved rates and class; longest first.

    A kernel's FLOPs and bytes are those of the CPU op that launched it (``op_of``); when an
    op launches several kernels the op's work is split across them in proportion to time,
    which keeps the achieved rates of the op as a whole. Computed once per event table and
    GPU (the report and the memory-bound analyzer both ask); callers must not mutate it.
    """
    if not ctx.ranks or rank_index >= len(ctx.ranks):
        return []
    ev = ctx.ranks[rank_index].events
    key = (id(ev), len(ev), ctx.device_name)
    cached = _ROOFLINES.get(key)
    if cached is not None and cached[0]() is ev:
        return list(cached[1])
    out = _kernel_rooflines(ev, ctx.device_name)
    for k in [k for k, (ref, _) in _ROOFLINES.items() if ref() is None]:
        del _ROOFLINES[k]
    _ROOFLINES[key] = (weakref.ref(ev), out)
    return list(out)


def _kernel_rooflines(ev: EventTable, device_name: str | None) -> list[KernelRoofline]:
    peaks = peaks_for(device_name)
    krows = ev.rows_of_kind(Kind.KERNEL)
    if not len(krows):
        return []
    in_step = ev.step[krows] >= 0
    if in_step.any():
        krows = krows[in_step]
    ops = ev.op_of[krows] if len(ev.op_of) else np.full(len(krows), -1)
    dur = ev.dur_ns[krows].astype(np.float64)
    kname_ids, kinv = np.unique(ev.name[krows], return_inverse=True)
    nk = len(kname_ids)
    has_op = ops >= 0
    uops, oinv = np.unique(np.where(has_op, ops, -1), return_inverse=True)
    op_time = np.bincount(oinv, weights=dur, minlength=len(uops))
    info = _ops_info(ev, uops)
    op_fl = np.array([i[1] if i[1] is not None else np.nan for i in info], dtype=np.float64)
    op_nb = np.array([i[2] if i[2] is not None else np.nan for i in info], dtype=np.float64)
    share = np.where(op_time[oinv] > 0, dur / np.maximum(op_time[oinv], 1.0), 0.0)
    nb_known = has_op & np.isfinite(op_nb[oinv])
    fl_known = nb_known & np.isfinite(op_fl[oinv])
    calls = np.bincount(kinv, minlength=nk)
    total_ns = np.bincount(kinv, weights=dur, minlength=nk)
    bytes_sum = np.bincount(kinv, weights=np.where(nb_known, np.nan_to_num(op_nb[oinv]) * share, 0.0), minlength=nk)
    known_ns = np.bincount(kinv, weights=np.where(nb_known, dur, 0.0), minlength=nk)
    flops_sum = np.bincount(kinv, weights=np.where(fl_known, np.nan_to_num(op_fl[oinv]) * share, 0.0), minlength=nk)
    fl_ns = np.bincount(kinv, weights=np.where(fl_known, dur, 0.0), minlength=nk)
    # dtype of each kernel: that of the op behind its longest call with known bytes (else fp32)
    order = np.lexsort((np.where(nb_known, dur, -1.0), kinv))
    last = np.r_[np.flatnonzero(np.diff(kinv[order])), len(order) - 1] if len(order) else np.array([], int)
    dtype_of = {int(kinv[order[i]]): (info[int(oinv[order[i]])][3] if nb_known[order[i]] else "fp32") for i in last}
    pair_key = kinv.astype(np.int64) * (len(uops) + 1) + oinv
    pkeys, pinv = np.unique(pair_key[has_op], return_inverse=True)
    pdur = np.bincount(pinv, weights=dur[has_op], minlength=len(pkeys))
    ops_of: dict[int, list[tuple[float, str]]] = {}
    pk, po = np.divmod(pkeys, len(uops) + 1)
    for k, o, d in zip(pk.tolist(), po.tolist(), pdur.tolist(), strict=False):
        ops_of.setdefault(k, []).append((d, info[o][0]))
    out = []
    for k in range(nk):
        kname = ev.names[int(kname_ids[k])]
        total_ms = float(total_ns[k]) / 1e6
        mean_us = float(total_ns[k]) / int(calls[k]) / 1e3
        dtype = dtype_of.get(k, "fp32")
        if dtype == "fp32" and _tensor_core_fp32(kname):
            dtype = "tf32"
        flops = float(flops_sum[k]) if fl_ns[k] > 0 else None
        nbytes = float(bytes_sum[k]) if known_ns[k] > 0 else None
        ach_tf = flops / (fl_ns[k] * 1e-9) / 1e12 if flops else None
        ach_bw = nbytes / (known_ns[k] * 1e-9) / 1e9 if nbytes else None
        c_pct = b_pct = None
        if peaks is not None:
            if ach_tf is not None:
                c_pct = 100.0 * ach_tf / peaks.compute_tflops(dtype)
            if ach_bw is not None:
                b_pct = 100.0 * ach_bw / peaks.dram_gbps
        if is_comm_kernel(kname):  # no roofline: no achieved rates, no % of peak
            cls = "communication"
            ach_tf = ach_bw = c_pct = b_pct = None
        elif mean_us < LATENCY_BOUND_US:
            cls = "latency-bound"
        elif nbytes and flops and peaks is not None:
            ridge = peaks.compute_tflops(dtype) * 1e12 / (peaks.dram_gbps * 1e9)
            cls = "compute-bound" if flops / nbytes >= ridge else "memory-bound"
        elif nbytes and flops:
            cls = "compute-bound" if flops / nbytes >= _DEFAULT_RIDGE[dtype] else "memory-bound"
        elif nbytes and not flops and _name_class(kname) != "compute-bound":
            cls = "memory-bound"
        else:
            cls = _name_class(kname)
        out.append(
            KernelRoofline(
                kernel=kname,
                calls=int(calls[k]),
                total_ms=total_ms,
                mean_us=mean_us,
                flops=flops,
                bytes=nbytes,
                dtype=dtype,
                achieved_tflops=ach_tf,
                achieved_gbps=ach_bw,
                compute_pct_of_peak=c_pct,
                bandwidth_pct_of_peak=b_pct,
                cls=cls,
                ops=[n for _, n in heapq.nlargest(3, ops_of.get(k, []))],
            )
        )
    out.sort(key=lambda k: k.total_ms, reverse=True)
    return out


def classify_kernels(ctx: AnalysisContext) -> dict[str, str]:
    """Kernel name -> ``compute-bound`` | ``memory-bound`` | ``latency-bound`` | ``communication`` |
    ``unknown`` (rank 0)."""
    return {k.kernel: k.cls for k in kernel_rooflines(ctx)}
