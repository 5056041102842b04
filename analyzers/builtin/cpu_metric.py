"""cpu-metric: the GPU idles inside the step while the host computes a metric in Python.

Signature (research/seed-methods.md §2, TensorBLEU):

* inside a step, a GPU idle gap of at least ``GAP_MIN_MS`` (5 ms) or ``GAP_MIN_PCT`` (10 %)
  of the step: shorter gaps are launch latency and eager dispatch (host-bound analyzer);
* the host was not waiting for data in it (DataLoader ``__next__`` / the data phase cover
  less than half the gap: that is the input-pipeline analyzer's), and torch ops cover less
  than half of it (the host was running plain Python, not dispatching work);
* and the host was computing a metric: with Python stacks, frames of ``nltk.translate``,
  ``sacrebleu``, ``rouge_score``, ``evaluate`` or functions named like a metric (bleu,
  rouge, chrf, meteor, reward, metric, score) are on the stack in the gap (confidence 0.85);
  without stacks, the gap opens right after a device-to-host copy or ``.item()``/``.tolist()``
  (the values a metric needs), confidence 0.5.

On a CPU-only trace there are no GPU gaps; with stacks the time in metric frames inside the
steps is reported instead. Severity by the gaps' share of step time (5 % / 20 %). Fix
``tensorbleu`` (vectorised per-sentence token-id BLEU on the GPU) when the metric is BLEU or
unknown; other metrics get the advice to vectorise on the GPU.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from analyzers.base import Analyzer, Finding, Impact, register
from analyzers.builtin import _common as c
from analyzers.model import Kind

if TYPE_CHECKING:
    from analyzers.model import AnalysisContext, EventTable

GAP_MIN_MS = 5.0
GAP_MIN_PCT = 10.0
OTHER_WORK_MAX_FRACTION = 0.5
PRECEDING_D2H_WINDOW_MS = 1.0
_METRIC_FRAME = re.compile(
    r"nltk/translate|sacrebleu|rouge_score|(^|/)evaluate/|bleu|rouge|chrf|meteor|cider|reward|metric|score", re.I
)
_READBACK_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::tolist", "aten::to", "aten::_to_copy", "aten::copy_"}


def _is_data(name: str) -> bool:
    return name.startswith("enumerate(DataLoader)") or name.startswith("stallscope.phase/data")


def _gaps(ev: "EventTable", lo: int, hi: int, gs: np.ndarray, ge: np.ndarray) -> list[tuple[int, int]]:
    out = []
    cur = lo
    i = np.searchsorted(ge, lo, side="right")
    while i < len(gs) and gs[i] < hi:
        if gs[i] > cur:
            out.append((cur, int(gs[i])))
        cur = max(cur, int(ge[i]))
        i += 1
    if cur < hi:
        out.append((cur, hi))
    return out


def _cover(ev: "EventTable", rows: np.ndarray, lo: int, hi: int) -> int:
    if not len(rows):
        return 0
    s = np.clip(ev.ts_ns[rows], lo, hi)
    e = np.clip(ev.ts_ns[rows] + ev.dur_ns[rows], lo, hi)
    return c.covered_ns(s, e)


_METRIC_LIBRARY = re.compile(r"nltk/translate/|sacrebleu/|rouge_score/|(^|/)evaluate/|torchmetrics/functional/text")


def _is_metric_frame(name: str) -> bool:
    if _METRIC_LIBRARY.search(name):
        return True
    func = name.split("): ", 1)[-1]
    return c.is_user_frame(name) and bool(_METRIC_FRAME.search(func))


def _metric_frames(ev: "EventTable", py: np.ndarray, tid: int, lo: int, hi: int) -> list[str]:
    names = []
    for t in np.linspace(lo, hi, 7)[1:-1]:
        for f in reversed(c.frames_at(ev, tid, int(t), py)):
            if _is_metric_frame(f):
                names.append(f)
                break
    return names


@register
class CpuMetric(Analyzer):
    """GPU-idle gaps inside the step spent in CPU-side metric code (e.g. per-sentence BLEU)."""

    name = "cpu-metric"
    requires = frozenset({"trace"})
    description = "CPU-side metric computation (per-sentence BLEU, rewards) leaving the GPU idle in the step"

    def analyze(self, ctx: "AnalysisContext") -> list[Finding]:
        return c.worst_rank(ctx, self._analyze_rank)

    def _analyze_rank(self, ctx: "AnalysisContext") -> list[Finding]:
        rank = ctx.ranks[0]
        ev = rank.events
        total_ns, n_steps = c.window_ns(rank)
        if not total_ns or not rank.steps:
            return []
        py = ev.rows_of_kind(Kind.PYTHON)
        if c.has_gpu(ev):
            return self._gpu(ctx, ev, py, total_ns, n_steps)
        if len(py):
            return self._cpu_only(ctx, ev, py, total_ns, n_steps)
        return []

    def _main_tid(self, ev: "EventTable") -> int:
        ops = ev.rows_of_kind(Kind.CPU_OP)
        if not len(ops):
            return -1
        tids, counts = np.unique(ev.tid[ops], return_counts=True)
        return int(tids[np.argmax(counts)])

    def _gpu(self, ctx: "AnalysisContext", ev: "EventTable", py: np.ndarray, total_ns: int, n_steps: int) -> list[Finding]:
        g = ev.gpu_rows()
        gs, ge = c.merge(ev.ts_ns[g], ev.ts_ns[g] + ev.dur_ns[g])
        tid = self._main_tid(ev)
        ops = ev.rows_of_kind(Kind.CPU_OP)
        main_ops = ops[ev.tid[ops] == tid]
        torch_ops = main_ops[np.fromiter((ev.name_of(int(r)).startswith("aten::") for r in main_ops), bool, len(main_ops))]
        data_rows = ev.rows_named(_is_data, Kind.CPU_OP, Kind.ANNOTATION)
        readback = ev.rows_named(lambda s: s in _READBACK_OPS, Kind.CPU_OP)
        d2h = ev.rows_named(lambda s: "DtoH" in s, Kind.MEMCPY)
        lost = 0
        gaps = 0
        frames: list[str] = []
        by_d2h = 0
        longest = 0
        for st in ctx.ranks[0].steps:
            step_ns = st.end_ns - st.start_ns
            for lo, hi in _gaps(ev, st.start_ns, st.end_ns, gs, ge):
                width = hi - lo
                if width < GAP_MIN_MS * 1e6 and width < GAP_MIN_PCT / 100.0 * step_ns:
                    continue
                if _cover(ev, data_rows, lo, hi) >= 0.5 * width:
                    continue
                if _cover(ev, torch_ops, lo, hi) >= OTHER_WORK_MAX_FRACTION * width:
                    continue
                found = _metric_frames(ev, py, tid, lo, hi) if len(py) else []
                win = PRECEDING_D2H_WINDOW_MS * 1e6
                after_d2h = bool(
                    (len(d2h) and np.any(np.abs(ev.ts_ns[d2h] + ev.dur_ns[d2h] - lo) <= win))
                    or (len(readback) and np.any((ev.ts_ns[readback] + ev.dur_ns[readback] >= lo - win) & (ev.ts_ns[readback] <= hi)))
                )
                if len(py) and not found:
                    continue
                if not found and not after_d2h:
                    continue
                frames += found
                by_d2h += after_d2h
                lost += width
                gaps += 1
                longest = max(longest, width)
        if not gaps:
            return []
        return [self._finding(lost, total_ns, n_steps, frames, bool(len(py)), {
            "gaps_per_step": gaps / n_steps,
            "longest_gap_ms": c.ms(longest),
            "gaps_after_device_to_host": by_d2h,
        })]

    def _cpu_only(self, ctx: "AnalysisContext", ev: "EventTable", py: np.ndarray, total_ns: int, n_steps: int) -> list[Finding]:
        hits = py[np.fromiter((_is_metric_frame(ev.name_of(int(r))) for r in py), bool, len(py))]
        hits = c.in_window(ev, hits)
        if not len(hits):
            return []
        lib = np.fromiter((bool(_METRIC_LIBRARY.search(ev.name_of(int(r)))) for r in hits), bool, len(hits))
        user = hits[~lib]
        user = user[np.lexsort((-ev.dur_ns[user], ev.ts_ns[user], ev.tid[user]))]
        ends = ev.ts_ns[user] + ev.dur_ns[user]
        has_child = np.zeros(len(user), bool)
        has_child[:-1] = (ev.tid[user][1:] == ev.tid[user][:-1]) & (ev.ts_ns[user][1:] < ends[:-1])
        # A user function named like a metric that calls another one is the loop around the
        # metric, not the metric; library frames (nltk, sacrebleu) count whole.
        hits = np.concatenate([user[~has_child], hits[lib]])
        lost = c.covered_ns(ev.ts_ns[hits], ev.ts_ns[hits] + ev.dur_ns[hits])
        frames = [ev.name_of(int(r)) for r in hits]
        named = [f for f in frames if _METRIC_FRAME.search(f.split("): ", 1)[-1])]
        frames = named or frames
        f = self._finding(lost, total_ns, n_steps, frames, True, {"note": "CPU-only trace: time in metric frames"})
        f.confidence = 0.6
        return [f]

    def _finding(self, lost: int, total_ns: int, n_steps: int, frames: list[str], stacks: bool, extra: dict[str, Any]) -> Finding:
        share = 100.0 * lost / total_ns
        bleu = any("bleu" in f.lower() for f in frames)
        metric = "BLEU" if bleu else ("metric" if frames else "CPU work after a device-to-host copy")
        evidence: dict[str, Any] = {"idle_ms_per_step": c.ms(lost) / n_steps, "idle_pct_of_step": share, "metric": metric}
        evidence.update(extra)
        where = {"python": c.top_counts(frames)} if frames else {}
        return Finding(
            id="cpu-metric-in-step",
            category="cpu-metric",
            title=f"GPU idles {share:.0f}% of the step while the host computes {metric if frames else 'in Python'}",
            severity=c.grade(share),
            impact=Impact(share, c.ms(lost) / n_steps * 0.95),
            evidence=evidence,
            where=where,
            confidence=0.85 if frames and stacks else 0.5,
            fixes=["tensorbleu"] if bleu or not frames else [],
            advice="Compute the metric on the GPU over the whole batch (TensorBLEU for token-id BLEU), "
            "or move it off the training loop (every N steps, another process).",
        )
