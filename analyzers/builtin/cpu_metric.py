"""cpu-metric: the GPU idles inside the step while the host computes a metric in Python.

Signature (docs/analyzers.md, cpu-metric; the loop TensorBLEU replaces):

* inside a step, a GPU idle gap of at least ``GAP_MIN_MS`` (5 ms) or ``GAP_MIN_PCT`` (10 %)
  of the step: shorter gaps are launch latency and eager dispatch (host-bound analyzer);
* the training loop's thread (``RankData.roles.loop``, see ``analyzers/roles.py``; not the
  thread with the most ops, which is the autograd engine's when backward runs on CUDA) was
  not waiting for data in it (DataLoader ``__next__`` / the data phase cover less than half
  the gap: that is the input-pipeline analyzer's), and known work covers less than half of
  it: the loop thread's own ops and runtime calls (a blocking copy, the optimizer, a sync),
  torch.compile's compile ranges, and whatever the autograd, communication and compile
  threads run (the loop is blocked in ``backward()`` or a collective meanwhile). What is left
  is the loop thread running plain Python;
* and that Python computes a metric: with Python stacks, frames of ``nltk.translate``,
  ``sacrebleu``, ``rouge_score``, ``evaluate`` or functions named like a metric (bleu,
  rouge, chrf, meteor, reward, metric, score) are on the loop thread's stack in the gap
  (confidence 0.85); without stacks, the loop thread read values back just before or in the
  gap (a device-to-host memcpy it launched, or ``.item()`` / ``.tolist()``: what a metric
  needs), confidence 0.5. ``aten::to`` / ``aten::copy_`` alone are no readback: they run in
  every step, mostly host-to-device or on the device.

On a CPU-only trace there are no GPU gaps; with stacks the time in metric frames on the loop
thread inside the steps is reported instead. Severity by the gaps' share of step time (5 % /
20 %). Fix ``tensorbleu`` (vectorised per-sentence token-id BLEU on the GPU) when the metric is
BLEU or unknown; other metrics get the advice to vectorise on the GPU.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from stallscope.analyzers.arrays import isin
from stallscope.analyzers.base import Finding, Impact, register
from stallscope.analyzers.builtin import _common as c
from stallscope.analyzers.model import Kind
from stallscope.analyzers.vocab import DATA_PHASE, anycase, is_data_wait, is_device_to_host

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext, EventTable
    from stallscope.analyzers.roles import ThreadRoles

GAP_MIN_MS = 5.0
GAP_MIN_PCT = 10.0
OTHER_WORK_MAX_FRACTION = 0.5
PRECEDING_D2H_WINDOW_MS = 1.0
_METRIC_FRAME = anycase(
    r"nltk/translate|sacrebleu|rouge_score|(^|/)evaluate/|bleu|rouge|chrf|meteor|cider|reward|metric|score"
)
# Host reads of device values that always end in a device-to-host copy; a ``.cpu()`` shows as
# the memcpy its ``aten::copy_`` launched.
_READBACK_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::tolist"}
_STEP_MARK = re.compile(r"^(ProfilerStep#|stallscope\.)")


def _is_data(name: str) -> bool:
    return is_data_wait(name) or name.startswith(DATA_PHASE)


def _gaps(ev: EventTable, lo: int, hi: int, gs: np.ndarray, ge: np.ndarray) -> list[tuple[int, int]]:
    """The GPU-idle spans of ``[lo, hi)``; ``gs`` / ``ge``: merged busy intervals (sorted)."""
    i = int(np.searchsorted(ge, lo, side="right"))
    j = max(i, int(np.searchsorted(gs, hi, side="left")))
    s, e = gs[i:j], ge[i:j]
    # Merged intervals end in order, so the GPU is idle before each from the end of the one before
    # it (or from ``lo``) to its start.
    idle_from = np.empty(len(s), dtype=np.int64)
    idle_from[:1] = lo
    idle_from[1:] = np.maximum(e[:-1], lo)
    gap = s > idle_from
    out = list(zip(idle_from[gap].tolist(), s[gap].tolist(), strict=True))
    cur = max(lo, int(e[-1])) if len(e) else lo
    if cur < hi:
        out.append((cur, hi))
    return out


# Paths of metric libraries: a frame in one is metric code wherever it is called from.
_METRIC_LIBRARY = ("nltk/translate/", "sacrebleu/", "rouge_score/", "/evaluate/", "torchmetrics/functional/text")


def _in_metric_library(name: str) -> bool:
    """Plain substring tests: cheap enough for every frame name of a trace."""
    return name.startswith("evaluate/") or any(path in name for path in _METRIC_LIBRARY)


def _is_metric_frame(name: str) -> bool:
    return _in_metric_library(name) or (_METRIC_FRAME(name.split("): ", 1)[-1]) and c.is_user_frame(name))


@register
class CpuMetric(c.PerRank):
    """GPU-idle gaps inside the step spent in CPU-side metric code (e.g. per-sentence BLEU)."""

    name = "cpu-metric"
    requires = frozenset({"trace"})
    description = "CPU-side metric computation (per-sentence BLEU, rewards) leaving the GPU idle in the step"

    def _analyze_rank(self, ctx: AnalysisContext) -> list[Finding]:
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

    def _gpu(self, ctx: AnalysisContext, ev: EventTable, py: np.ndarray, total_ns: int, n_steps: int) -> list[Finding]:
        roles = ctx.ranks[0].roles
        tid = roles.loop
        if tid is None:
            return []
        g = ev.gpu_rows()
        gs, ge = c.merge(ev.ts_ns[g], ev.ts_ns[g] + ev.dur_ns[g])
        on_loop = ev.tid == tid
        known = self._known_work(ev, roles, on_loop)
        data = ev.rows_named(_is_data, Kind.CPU_OP, Kind.ANNOTATION)
        data_idx = c.IntervalIndex.of_rows(ev, data[on_loop[data]])
        readback_end = self._readback_ends(ev, on_loop)
        metric = ev.rows_named(_is_metric_frame, Kind.PYTHON)
        metric = metric[on_loop[metric]]
        metric = metric[np.argsort(ev.ts_ns[metric], kind="stable")]
        metric_idx = c.IntervalIndex.of_rows(ev, metric)
        win = int(PRECEDING_D2H_WINDOW_MS * 1e6)
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
                if data_idx.covered(lo, hi) >= 0.5 * width:
                    continue
                if known.covered(lo, hi) >= OTHER_WORK_MAX_FRACTION * width:
                    continue
                found = metric_idx.covered(lo, hi) > 0
                k = int(np.searchsorted(readback_end, lo - win, side="left"))
                after_d2h = bool(k < len(readback_end) and readback_end[k] < hi)
                if len(py) and not found:
                    continue
                if not found and not after_d2h:
                    continue
                if found and len(frames) < 200:
                    i = int(np.searchsorted(ev.ts_ns[metric], hi, side="left"))
                    for r in metric[max(0, i - 200) : i]:
                        if ev.ts_ns[r] + ev.dur_ns[r] > lo:
                            frames.append(ev.name_of(int(r)))
                by_d2h += after_d2h
                lost += width
                gaps += 1
                longest = max(longest, width)
        if not gaps:
            return []
        named = [f for f in frames if _METRIC_FRAME(f.split("): ", 1)[-1])]
        frames = named or frames
        return [
            self._finding(
                lost,
                total_ns,
                n_steps,
                frames,
                bool(len(py)),
                {
                    "gaps_per_step": gaps / n_steps,
                    "longest_gap_ms": c.ms(longest),
                    "gaps_after_device_to_host": by_d2h,
                },
            )
        ]

    @staticmethod
    def _known_work(ev: EventTable, roles: ThreadRoles, on_loop: np.ndarray) -> c.IntervalIndex:
        """What the host is known to do besides plain Python on the loop: the loop thread's ops
        and runtime calls (not its step / phase ranges), torch.compile's compile ranges on any
        thread (a backward graph compiles on the autograd thread: the compile analyzer owns that
        gap), and everything the autograd, communication and compile threads run (the loop is
        blocked in ``backward()`` or a collective while they do)."""
        busy = isin(ev.kind, np.asarray((Kind.CPU_OP, Kind.RUNTIME, Kind.ANNOTATION), dtype=np.int8))
        marks = isin(ev.name, ev.name_ids_matching(lambda s: bool(_STEP_MARK.match(s))))
        own = busy & on_loop & (ev.kind != Kind.ANNOTATION) & ~marks
        helper_tids = roles.tids("autograd") + roles.tids("comm") + roles.tids("compile")
        helpers = busy & isin(ev.tid, np.asarray(helper_tids, dtype=np.int64))
        compiling = isin(ev.name, ev.name_ids_matching(lambda s: bool(c.COMPILE_EVENT.match(s))))
        return c.IntervalIndex.of_rows(ev, np.flatnonzero(own | helpers | (busy & compiling)))

    @staticmethod
    def _readback_ends(ev: EventTable, on_loop: np.ndarray) -> np.ndarray:
        """Sorted end times of the loop thread's reads of device values: device-to-host memcpys
        it launched (or whose launch is unknown) and ``.item()`` / ``.tolist()`` ops."""
        d2h = ev.rows_named(is_device_to_host, Kind.MEMCPY)
        launch = ev.launch_of[d2h]
        op = ev.op_of[d2h]
        by = np.where(launch >= 0, launch, op)
        d2h = d2h[(by < 0) | on_loop[np.maximum(by, 0)]]
        ops = ev.rows_named(lambda s: s in _READBACK_OPS, Kind.CPU_OP)
        rows = np.concatenate([d2h, ops[on_loop[ops]]])
        return np.sort(ev.ts_ns[rows] + ev.dur_ns[rows])

    def _cpu_only(
        self, ctx: AnalysisContext, ev: EventTable, py: np.ndarray, total_ns: int, n_steps: int
    ) -> list[Finding]:
        hits = py[np.fromiter((_is_metric_frame(ev.name_of(int(r))) for r in py), bool, len(py))]
        hits = c.in_window(ev, hits)
        loop = ctx.ranks[0].roles.loop
        if loop is not None:  # a metric on another thread does not hold the loop back
            hits = hits[ev.tid[hits] == loop]
        if not len(hits):
            return []
        lib = np.fromiter((_in_metric_library(ev.name_of(int(r))) for r in hits), bool, len(hits))
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
        named = [f for f in frames if _METRIC_FRAME(f.split("): ", 1)[-1])]
        frames = named or frames
        f = self._finding(
            lost, total_ns, n_steps, frames, True, {"note": "CPU-only trace: time in metric frames"}, gpu=False
        )
        f.confidence = 0.6
        return [f]

    def _finding(
        self,
        lost: int,
        total_ns: int,
        n_steps: int,
        frames: list[str],
        stacks: bool,
        extra: dict[str, Any],
        gpu: bool = True,
    ) -> Finding:
        share = 100.0 * lost / total_ns
        bleu = any("bleu" in f.lower() for f in frames)
        metric = "BLEU" if bleu else ("metric" if frames else "CPU work after a device-to-host copy")
        evidence: dict[str, Any] = {
            "idle_ms_per_step": c.ms(lost) / n_steps,
            "idle_pct_of_step": share,
            "metric": metric,
        }
        evidence.update(extra)
        where = {"python": c.top_counts(frames)} if frames else {}
        return Finding(
            id="cpu-metric-in-step",
            category="cpu-metric",
            title=(
                f"GPU idles {share:.0f}% of the step while the host computes {metric if frames else 'in Python'}"
                if gpu
                else f"The loop spends {share:.0f}% of the step computing {metric} in Python"
            ),
            severity=c.grade(share),
            impact=Impact(share, c.ms(lost) / n_steps * 0.95),
            evidence=evidence,
            where=where,
            confidence=0.85 if frames and stacks else 0.5,
            fixes=["tensorbleu"] if bleu or not frames else [],
            advice=(
                "Score the whole batch in one call on the GPU instead of one sentence at a time "
                "(the tensorbleu fix below shows the change)."
                if bleu
                else "Compute the metric on the GPU over the whole batch (TensorBLEU for token-id BLEU), "
                "or move it off the training loop (every N steps, another process)."
            ),
        )
