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

Cost: the copy time during which no kernel ran (exposed copy time), plus, for pageable
copies, the host time blocked in the copy call when no kernel ran meanwhile. Severity 5 % /
20 % of step time (``_common``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from stallscope.analyzers.base import Finding, Impact, register
from stallscope.analyzers.builtin import _common as c
from stallscope.analyzers.model import Kind

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext, EventTable

TINY_BYTES = 64 * 1024
MANY_COPIES_PER_STEP = 32


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
        if not len(copies) or not total_ns:
            return []
        names = np.array([ev.name_of(int(r)) for r in copies])
        out = []
        pageable = copies[(np.char.find(names.astype(str), "Pageable") >= 0) & (ev.bytes[copies] >= TINY_BYTES)]
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
        d2h = copies[np.char.find(names.astype(str), "DtoH") >= 0]
        lost = exposed_ns(ev, d2h) if len(d2h) else 0
        share = 100.0 * lost / total_ns
        if len(d2h) and not len(pageable[np.isin(pageable, d2h)]) and share > c.LOW_PCT:
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
        launches = launches[launches >= 0]
        host_blocked = int(ev.dur_ns[launches].sum()) if len(launches) else 0
        # Host time blocked in the copy call while the GPU had nothing else to run is lost too.
        k = c.gpu_rows(ev, (Kind.KERNEL,))
        host_exposed = 0
        if len(launches):
            hs, he = ev.ts_ns[launches], ev.ts_ns[launches] + ev.dur_ns[launches]
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
