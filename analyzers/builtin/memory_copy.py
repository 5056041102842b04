"""memory-copy: pageable, tiny or many copies, and device-to-host copies inside the step.

* **Pageable** copies (``Memcpy HtoD (Pageable -> Device)`` and ``DtoH (Device -> Pageable)``)
  of at least ``TINY_BYTES`` are staged by the driver through a pinned bounce buffer: the host
  call blocks, they cannot overlap compute, and they run at roughly half of pinned PCIe
  bandwidth. Fix ``pin-memory``. Smaller ones (a scalar read back by ``.item()``) cost their
  fixed latency whether pinned or not; their cost is the sync, which the synchronization
  analyzer reports.
* **Tiny** copies: under ``TINY_BYTES`` (64 KiB) a copy's fixed cost (a few µs of launch and
  DMA set-up) exceeds its transfer time on PCIe Gen4/5 (64 KiB at ~25 GB/s is ~2.6 µs), so
  many tiny copies cost latency, not bandwidth; batching them into one buffer helps.
  Reported when there are at least ``MANY_COPIES_PER_STEP`` (32) per step: a handful per step
  (a loss scalar, a few labels) is normal bookkeeping.
* **Device-to-host** copies inside the step imply the host wants a value now (usually with a
  sync; the synchronization analyzer charges the bubble). Reported only above 1 % of step
  time: one loss read back per step is normal bookkeeping.

* **Device-to-device copies** (``device-to-device-copies``): ``Memcpy DtoD`` rows and the
  kernels a copy op launches on the device with the same dtype on both sides (``.contiguous()``,
  ``.clone()``, ``copy_``, a strided or ``channels_last`` conversion). They move bytes the
  model's math did not ask for, so they are avoidable by construction (views, in-place ops, a
  layout chosen once). Reported per step: bytes, GPU time, share, the achieved bandwidth
  against the GPU's copy bandwidth (``peaks.GpuPeaks.dram_gbps``, H200 4.25 TB/s measured; a
  copy reads and writes its bytes, so its traffic is twice its size), the ops and the Python
  lines that issue them. Above ``_common.LOW_PCT`` (1 %), graded 5 % / 20 %.
* **Dtype casts** (``dtype-casts``): copy kernels whose two sides differ in dtype (``.to(dtype)``,
  ``.float()``, autocast's casts of inputs and weights). A cast is the precision the model asked
  for: whether it could go (data delivered in bf16, bf16 weights, the cast fused into its
  consumer by torch.compile) is a design choice a trace cannot judge, so casts are named with
  the same figures but graded ``low`` at most (reported above 1 %).

The 64 KiB ``TINY_BYTES`` cut applies to the bandwidth and latency findings above, never to
blocking: a device-to-host copy of any size blocks the host, and that wait is the
synchronization analyzer's (``blocking-syncs``); the pageable finding below leaves it out.

Cost: the copy time during which no (other) kernel ran (exposed copy time), plus, for pageable
host-to-device copies, the host time blocked in the copy call when no kernel ran meanwhile.
Severity 5 % / 20 % of step time (``_common``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from stallscope.analyzers.arrays import isin
from stallscope.analyzers.base import Finding, Impact, Severity, register
from stallscope.analyzers.builtin import _common as c
from stallscope.analyzers.model import Kind
from stallscope.analyzers.peaks import dtype_bytes
from stallscope.analyzers.vocab import is_device_to_host

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext, EventTable
    from stallscope.analyzers.peaks import GpuPeaks

TINY_BYTES = 64 * 1024
MANY_COPIES_PER_STEP = 32
# CPU ops that copy a device tensor into another (innermost is aten::copy_; the outer ones name
# what the user called).
COPY_OPS = frozenset(
    {"aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy", "aten::to", "aten::_copy_from"}
)


def exposed_ns(ev: EventTable, rows: np.ndarray) -> int:
    """Time of these GPU rows during which no kernel ran on the device."""
    if not len(rows):
        return 0
    k = c.gpu_rows(ev, (Kind.KERNEL,))
    busy = c.covered_ns(ev.ts_ns[rows], ev.ts_ns[rows] + ev.dur_ns[rows])
    return busy - c.overlap_ns(
        ev.ts_ns[rows], ev.ts_ns[rows] + ev.dur_ns[rows], ev.ts_ns[k], ev.ts_ns[k] + ev.dur_ns[k]
    )


def _bytes(ev: EventTable, rows: np.ndarray) -> int:
    b = ev.bytes[rows]
    return int(b[b > 0].sum())


@register
class MemoryCopy(c.PerRank):
    """Pageable, tiny, many and device-to-host copies in the step."""

    name = "memory-copy"
    requires = frozenset({"trace", "gpu"})
    description = "pageable, tiny or many memory copies; device-to-host copies inside the step"

    def _analyze_rank(self, ctx: AnalysisContext) -> list[Finding]:
        rank = ctx.ranks[0]
        ev = rank.events
        total_ns, n_steps = c.window_ns(rank)
        copies = c.gpu_rows(ev, (Kind.MEMCPY,))
        out = _device_copies(ev, total_ns, n_steps, c.peaks(ctx)) if total_ns else []
        if not len(copies) or not total_ns:
            return out
        names = [ev.name_of(int(r)) for r in copies]
        is_pageable = np.fromiter(("Pageable" in n for n in names), bool, len(names))
        is_pageable &= ev.bytes[copies] >= TINY_BYTES
        pageable = copies[is_pageable]
        if len(pageable):
            out.append(self._pageable(ev, pageable, total_ns, n_steps))
        sizes = ev.bytes[copies]
        tiny = copies[(sizes >= 0) & (sizes < TINY_BYTES)]
        if len(tiny) / n_steps >= MANY_COPIES_PER_STEP:
            lost = exposed_ns(ev, tiny)
            share = 100.0 * lost / total_ns
            out.append(
                Finding(
                    id="many-tiny-copies",
                    category="memory-copy",
                    title=f"{len(tiny) / n_steps:.0f} copies under 64 KiB per step",
                    severity=c.grade(share),
                    impact=Impact(share, c.ms(lost) / n_steps),
                    evidence={
                        "tiny_copies_per_step": len(tiny) / n_steps,
                        "mean_bytes": float(np.mean(np.clip(ev.bytes[tiny], 0, None))),
                        "exposed_ms_per_step": c.ms(lost) / n_steps,
                    },
                    where={"copies": c.top_counts(ev.name_of(int(r)) for r in tiny)},
                    confidence=0.7,
                    fixes=[],
                    advice="Batch small transfers into one tensor (torch.cat / a pinned staging buffer) per step.",
                )
            )
        is_d2h = np.fromiter(("DtoH" in n for n in names), bool, len(names))
        d2h = copies[is_d2h]
        lost = exposed_ns(ev, d2h) if len(d2h) else 0
        share = 100.0 * lost / total_ns
        if len(d2h) and not (is_pageable & is_d2h).any() and share > c.LOW_PCT:
            out.append(
                Finding(
                    id="device-to-host-in-step",
                    category="memory-copy",
                    title=f"{len(d2h) / n_steps:.0f} device-to-host copies per step",
                    severity=c.grade(share),
                    impact=Impact(share, c.ms(lost) / n_steps),
                    evidence={
                        "d2h_copies_per_step": len(d2h) / n_steps,
                        "d2h_mb_per_step": _bytes(ev, d2h) / n_steps / 1e6,
                        "exposed_ms_per_step": c.ms(lost) / n_steps,
                    },
                    where={"copies": c.top_counts(ev.name_of(int(r)) for r in d2h)},
                    confidence=0.6,
                    fixes=[],
                    advice="Read values back once per step or less; keep metrics on the GPU.",
                )
            )
        return out

    def _pageable(self, ev: EventTable, rows: np.ndarray, total_ns: int, n_steps: int) -> Finding:
        gpu_lost = exposed_ns(ev, rows)
        launches = ev.launch_of[rows] if len(ev.launch_of) else np.full(len(rows), -1)
        to_host = np.fromiter((is_device_to_host(ev.name_of(int(r))) for r in rows), bool, len(rows))
        staged = launches[(launches >= 0) & ~to_host]
        launches = launches[launches >= 0]
        host_blocked = int(ev.dur_ns[launches].sum()) if len(launches) else 0
        # Host time blocked in a host-to-device copy call while the GPU had nothing else to run
        # is lost too; the wait in a device-to-host one is a sync (the synchronization analyzer's).
        k = c.gpu_rows(ev, (Kind.KERNEL,))
        host_exposed = 0
        if len(staged):
            hs, he = ev.ts_ns[staged], ev.ts_ns[staged] + ev.dur_ns[staged]
            host_exposed = c.covered_ns(hs, he) - c.overlap_ns(hs, he, ev.ts_ns[k], ev.ts_ns[k] + ev.dur_ns[k])
        lost = max(gpu_lost, host_exposed)
        share = 100.0 * lost / total_ns
        nbytes = _bytes(ev, rows)
        copy_s = float(ev.dur_ns[rows].sum()) * 1e-9
        h2d = sum(1 for r in rows if "HtoD" in ev.name_of(int(r)))
        return Finding(
            id="pageable-copies",
            category="memory-copy",
            title=f"{len(rows) / n_steps:.0f} pageable (unpinned) copies per step block the host",
            severity=c.grade(share),
            impact=Impact(share, c.ms(lost) / n_steps),
            evidence={
                "pageable_copies_per_step": len(rows) / n_steps,
                "pageable_mb_per_step": nbytes / n_steps / 1e6,
                "copy_ms_per_step": c.ms(ev.dur_ns[rows].sum()) / n_steps,
                "exposed_ms_per_step": c.ms(lost) / n_steps,
                "host_blocked_ms_per_step": c.ms(host_blocked) / n_steps,
                "achieved_gbps": nbytes / copy_s / 1e9 if copy_s > 0 else None,
                "host_to_device_copies": h2d,
            },
            where={"copies": c.top_counts(ev.name_of(int(r)) for r in rows), "python": c.python_lines_of(ev, rows)},
            confidence=0.85,
            fixes=["pin-memory"],
            advice="DataLoader(pin_memory=True) and .to(device, non_blocking=True); for your own buffers, .pin_memory().",
        )


def _label(ev: EventTable, op: int, chain: np.ndarray) -> str:
    """``aten::to (float -> c10::BFloat16, [16384, 2048]) in aten::linear``: the outermost copy op
    the user called, the dtypes and shape of its innermost copy, and the op it ran in; the op
    alone for a copy another op made (``aten::cat``'s ``Memcpy DtoD``)."""
    copy_ops = [int(r) for r in chain if ev.name_of(int(r)) in COPY_OPS]
    parents = [int(r) for r in chain if ev.name_of(int(r)) not in COPY_OPS]
    if op < 0 or ev.name_of(op) not in COPY_OPS:
        return ev.name_of(op) if op >= 0 else "copy outside any recorded op"
    outer = ev.name_of(copy_ops[0]) if copy_ops else ev.name_of(op)
    args = ev.extra.get(op, {})
    types, dims = args.get("input_types") or [], args.get("input_dims") or []
    detail = ""
    if ev.name_of(op) == "aten::copy_" and len(types) >= 2 and len(dims) >= 2:
        detail = f" ({types[1]} -> {types[0]}, {dims[1]})"
    elif types and dims:
        detail = f" ({types[0]}, {dims[0]})"
    return outer + detail + (f" in {ev.name_of(parents[-1])}" if parents else "")


def _copy_kernel_bytes(ev: EventTable, op: int) -> tuple[int, int, bool] | None:
    """(bytes written, bytes read + written, is a cast) of one copy op from its recorded shapes."""
    args = ev.extra.get(op, {})
    types, dims = args.get("input_types") or [], args.get("input_dims") or []
    name = ev.name_of(op)
    if name == "aten::copy_" and len(types) >= 2 and len(dims) >= 2:
        dst = _numel(dims[0]) * dtype_bytes(str(types[0]))
        src = _numel(dims[1]) * dtype_bytes(str(types[1]))
        if dst and src:
            return dst, dst + src, str(types[0]) != str(types[1])
    if name in ("aten::clone", "aten::contiguous") and types and dims:
        n = _numel(dims[0]) * dtype_bytes(str(types[0]))
        return (n, 2 * n, False) if n else None
    return None


def _numel(dims: object) -> int:
    """Elements of a tensor from its recorded dims; 0 when they are not a list of sizes."""
    if not isinstance(dims, list):
        return 0
    n = 1
    for d in dims:
        if not isinstance(d, int) or d < 0:
            return 0
        n *= d
    return n


def _device_copies(ev: EventTable, total_ns: int, n_steps: int, peaks: GpuPeaks | None) -> list[Finding]:
    """The ``device-to-device-copies`` and ``dtype-casts`` findings (module docstring)."""
    memcpy = c.gpu_rows(ev, (Kind.MEMCPY,))
    dtod = memcpy[np.fromiter(("DtoD" in ev.name_of(int(r)) for r in memcpy), bool, len(memcpy))]
    kernels = c.gpu_rows(ev, (Kind.KERNEL,))
    owner = ev.op_of[kernels] if len(ev.op_of) and len(kernels) else np.full(len(kernels), -1)
    copy_ids = ev.name_ids_matching(lambda s: s in COPY_OPS)
    by_copy = (owner >= 0) & isin(ev.name[np.maximum(owner, 0)], copy_ids)
    ck, ck_op = kernels[by_copy], owner[by_copy]
    rows: dict[str, list[int]] = {"layout": [int(r) for r in dtod], "cast": []}
    size = {int(r): (max(int(ev.bytes[r]), 0), 2 * max(int(ev.bytes[r]), 0)) for r in dtod if ev.bytes[r] >= 0}
    timed = set(size)  # rows whose bytes are known (for the bandwidth)
    seen_op: set[int] = set()
    # Ops with the same shapes share one args dict (the decoder and the table store keep one per
    # distinct args): their bytes are worked out once per name and args.
    known: dict[tuple[int, int], tuple[int, int, bool] | None] = {}
    for r, op, name in zip(ck.tolist(), ck_op.tolist(), ev.name[ck_op].tolist(), strict=True):
        key = (name, id(ev.extra.get(op)))
        b = known[key] if key in known else known.setdefault(key, _copy_kernel_bytes(ev, op))
        rows["cast" if b is not None and b[2] else "layout"].append(r)
        if b is not None:
            timed.add(r)
            if op not in seen_op:  # one op's bytes once, however many kernels it launched
                size[r] = (b[0], b[1])
                seen_op.add(op)
    others = kernels[~by_copy]
    open_ops = c.OpenOps(ev)
    out = []
    for kind, fid in (("layout", "device-to-device-copies"), ("cast", "dtype-casts")):
        rr = np.asarray(rows[kind], dtype=np.int64)
        if not len(rr):
            continue
        ends = ev.ts_ns[rr] + ev.dur_ns[rr]
        busy = c.covered_ns(ev.ts_ns[rr], ends)
        exposed = busy - c.overlap_ns(ev.ts_ns[rr], ends, ev.ts_ns[others], ev.ts_ns[others] + ev.dur_ns[others])
        share = 100.0 * exposed / total_ns
        if share <= c.LOW_PCT:
            continue
        listed = rr.tolist()
        written = sum(size[r][0] for r in listed if r in size)
        traffic = sum(size[r][1] for r in listed if r in size)
        sized = np.asarray([r for r in listed if r in timed], dtype=np.int64)
        t_known = c.covered_ns(ev.ts_ns[sized], ev.ts_ns[sized] + ev.dur_ns[sized]) if len(sized) else 0
        gbps = traffic / (t_known * 1e-9) / 1e9 if t_known and traffic else None
        labels: dict[str, float] = {}
        for r in rr[np.argsort(-ev.dur_ns[rr], kind="stable")][:500]:
            launch = int(ev.launch_of[r]) if len(ev.launch_of) else -1
            op = int(ev.op_of[r]) if len(ev.op_of) else -1
            chain = open_ops.at(int(ev.tid[launch]), int(ev.ts_ns[launch])) if launch >= 0 else rr[:0]
            lab = _label(ev, op, chain)
            labels[lab] = labels.get(lab, 0.0) + float(ev.dur_ns[r])
        evidence: dict[str, object] = {
            f"{'dtod' if kind == 'layout' else 'cast'}_gb_per_step": written / n_steps / 1e9,
            f"{'dtod' if kind == 'layout' else 'cast'}_traffic_gb_per_step": traffic / n_steps / 1e9,
            "copies_per_step": len(rr) / n_steps,
            "memcpy_dtod_per_step": int(isin(rr, dtod).sum()) / n_steps,
            "copy_ms_per_step": c.ms(busy) / n_steps,
            "exposed_ms_per_step": c.ms(exposed) / n_steps,
            "achieved_gbps": gbps,
        }
        if peaks is not None:
            evidence["peak_gbps"] = peaks.dram_gbps
            evidence["achieved_pct_of_peak"] = 100.0 * gbps / peaks.dram_gbps if gbps else None
        where = {
            "ops": sorted(labels, key=labels.__getitem__, reverse=True)[:6],
            "python": c.python_lines_of(ev, rr[np.argsort(-ev.dur_ns[rr], kind="stable")]),
        }
        gb = written / n_steps / 1e9
        if kind == "layout":
            title = (
                f"{gb:.3g} GB copied on the device per step ({len(rr) / n_steps:.0f} copies, {share:.1f}% of step time)"
            )
            severity = c.grade(share)
            advice = (
                "avoid copies the math does not need: views instead of .contiguous()/.clone() (transpose/permute "
                "feed most ops as they are), in-place ops (add_, mul_, copy_ into a preallocated buffer), "
                "channels_last conversion once for the model and the input (not per layer); torch.compile fuses "
                "the remaining copies into their consumers."
            )
        else:
            title = f"{gb:.3g} GB cast to another dtype on the device per step ({share:.1f}% of step time)"
            severity = min(c.grade(share), Severity.LOW, key=lambda s: s.rank)
            advice = (
                "keep tensors in the dtype they are used in: deliver inputs in bf16/fp16 from the data pipeline, "
                "keep bf16 weights where the optimizer allows, and let torch.compile fuse the remaining casts "
                "into their consumers; autocast re-casts the weights in every forward."
            )
        out.append(
            Finding(
                id=fid,
                category="memory-copy",
                title=title,
                severity=severity,
                impact=Impact(share, c.ms(exposed) / n_steps),
                evidence=evidence,
                where=where,
                confidence=0.7 if kind == "layout" else 0.4,
                fixes=[],
                advice=advice,
                # copy kernels are GPU compute in the breakdown; Memcpy DtoD rows are its memory part
                slice=("memory_ms", "compute_ms") if kind == "layout" else ("compute_ms",),
            )
        )
    return out
