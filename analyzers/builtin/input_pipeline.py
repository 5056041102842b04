"""input-pipeline: how much of each step the GPU (or, CPU-only, the training loop) waits for data.

Two measurements of the data wait, graded from the one that saw more of the run:

* **Telemetry, every steady step of every rank** (run directories: ``steps.csv``, whose
  ``data_wait_ms`` is the loop thread's time inside the DataLoader's ``__next__``). Per rank, the
  median over its steps of ``data_wait_ms`` / step time (``model.step_time_ms``: the slower of
  host wall and GPU time). The steps are :meth:`RankData.untraced_step_mask`'s steady state:
  not step 0 (start-up, worker spawn), not the warm-up before the window, not the window's
  steps (the profiler's own overhead lengthens them), not the export step after it. The
  *worst* rank's figure is graded: in a synchronous job its peers wait for it in a collective,
  so their own data wait is small while the job is input-bound (a per-rank figure is the only
  one that shows this; an average over ranks halves it on two ranks). A rank needs
  :data:`MIN_WHOLE_RUN_STEPS` such steps.
* **The trace window** (``data_wait_ms`` of the step breakdown): time inside ``__next__`` on the
  training loop's thread (``RankData.roles.loop``; a prefetching thread's ``__next__`` is not
  the loop waiting) *while the GPU is idle*. Loading that overlaps GPU work is free and not
  counted; on a CPU-only trace it is the whole ``__next__`` time. Graded only when there is no
  usable telemetry (a plain trace, or a run too short to have steady steps after the window);
  otherwise reported as ``window_data_wait_pct`` and used for the *why* (the causes below).

The telemetry times the host in ``__next__``; on a GPU the host may wait there while the GPU
still runs queued work (a loop that never synchronizes), which is no stall: on the committed
healthy CNN run (tests/fixtures/gpu/runs) the GPU idled for 8 % of the loop's ``__next__`` time.
So a GPU rank's whole-run figure is scaled by the share of its window's ``__next__`` time
(telemetry, ``in_window`` rows) during which the GPU idled (the breakdown's data wait):
``gpu_idle_share_of_next_by_rank``, 0 to 1. A GPU rank whose window cannot say (not traced, or
no data wait in it) takes the median share of the ranks that can, else 1. On a CPU the loop
does nothing else meanwhile and the share is 1. The causes are read on the graded rank's trace.

Grading (share of step time): >= 20 % high, >= 5 % medium, > 1 % low. These are the cut points
of TensorFlow's input-pipeline analyzer ("highly" / "moderately input-bound") and the 5 % of
the TensorBoard profiler's DataLoader rule. Why: step-time noise of a training loop is a few
percent, so a stall under ~5 % is hard to tell from noise and rarely worth a code change; at a
fifth of every step the input pipeline is the first thing to fix, because no GPU-side change can
recover time the GPU spends idle.

Impact: the graded rank's whole data wait per step is the saving estimate (prefetching with
enough workers can hide all of it when producing a batch takes less time than a step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stallscope.analyzers.arrays import median
from stallscope.analyzers.base import Analyzer, Finding, Impact, register, severity_from_share
from stallscope.analyzers.model import AnalysisContext, Kind, RankData, step_time_ms
from stallscope.analyzers.vocab import is_data_wait

MEDIUM_PCT = 5.0
HIGH_PCT = 20.0
LOW_PCT = 1.0
# A rank's whole-run figure needs as many steady steps as the default trace window has: a
# median over fewer steps has seen less of the run than the window, whose figure is then used.
MIN_WHOLE_RUN_STEPS = 5


@dataclass
class WholeRun:
    """Per-rank data-wait figures over the steady steps of ``steps.csv`` (ranks with enough steps)."""

    pct: dict[int, float] = field(default_factory=dict)  # median data_wait / step time, in %
    ms: dict[int, float] = field(default_factory=dict)  # median data wait per step
    steps: dict[int, int] = field(default_factory=dict)
    idle_share: dict[int, float] = field(default_factory=dict)  # GPU idle share of __next__ (GPU ranks)

    def worst(self) -> int | None:
        return max(self.pct, key=lambda r: (self.pct[r], -r)) if self.pct else None


@dataclass
class Window:
    """The trace window's data wait: all ranks' steps together, and the loop's ``__next__`` time."""

    wall_ms: float = 0.0
    data_ms: float = 0.0
    steps: int = 0
    next_ms: float = 0.0
    worst_rank: int | None = None  # the rank with the largest share of its own steps
    iterators: set[str] = field(default_factory=set)

    @property
    def pct(self) -> float | None:
        return 100.0 * self.data_ms / self.wall_ms if self.wall_ms > 0 and self.steps else None


def window_data_wait(ctx: AnalysisContext) -> Window:
    """The breakdown's data wait over the traced steps of every rank (module doc)."""
    out = Window()
    worst_share = -1.0
    for rd in ctx.ranks:
        r_wall = sum(b.wall_ms for b in rd.breakdown)
        r_data = sum(b.data_wait_ms for b in rd.breakdown)
        out.wall_ms += r_wall
        out.data_ms += r_data
        out.steps += len(rd.breakdown)
        if r_wall > 0 and r_data / r_wall > worst_share:
            out.worst_rank, worst_share = rd.rank, r_data / r_wall
        ev = rd.events
        rows = ev.rows_named(is_data_wait, Kind.CPU_OP, Kind.ANNOTATION)
        rows = rows[ev.step[rows] >= 0] if rows.size else rows
        loop = rd.roles.loop
        if loop is not None:  # a prefetching thread's __next__ is not the loop waiting
            rows = rows[ev.tid[rows] == loop]
        out.next_ms += float(ev.dur_ns[rows].sum()) / 1e6
        out.iterators.update(ev.name_of(int(r)).split("#", 1)[-1] for r in rows[:50])
    return out


@register
class InputPipeline(Analyzer):
    """Data-wait share of step time."""

    name = "input-pipeline"
    requires = frozenset({"trace"})
    description = "GPU idle while the DataLoader produces the next batch"

    def analyze(self, ctx: AnalysisContext) -> list[Finding]:
        win = window_data_wait(ctx)
        whole = whole_run_data_wait(ctx)
        worst = whole.worst()
        evidence: dict[str, object] = {}
        rank: int | None
        if worst is not None:
            share, per_step, rank = whole.pct[worst], whole.ms[worst], worst
            evidence["graded_from"] = "telemetry"
        elif win.pct is not None:
            share, per_step, rank = win.pct, win.data_ms / win.steps, win.worst_rank
            evidence["graded_from"] = "trace-window"
        else:
            return []
        if share <= LOW_PCT:
            if win.pct is not None and win.pct >= MEDIUM_PCT and worst is not None:
                ctx.notices.append(
                    f"the trace window waits {win.pct:.1f} % of its steps on the DataLoader, but over "
                    f"{sum(whole.steps.values())} steady steps of every rank the data wait is at most "
                    f"{share:.1f} %: the window is not typical of the run, no input-pipeline finding"
                )
            return []
        evidence["data_wait_pct"] = share
        evidence["data_wait_ms_per_step"] = per_step
        if worst is not None:
            evidence["whole_run_data_wait_pct_by_rank"] = dict(whole.pct)
            evidence["whole_run_steps"] = dict(whole.steps)
            if whole.idle_share:
                evidence["gpu_idle_share_of_next_by_rank"] = dict(whole.idle_share)
        if win.pct is not None:
            evidence["window_data_wait_pct"] = win.pct
            evidence["window_data_wait_ms_per_step"] = win.data_ms / win.steps
            evidence["step_ms_mean"] = win.wall_ms / win.steps
            evidence["dataloader_next_ms_per_step"] = win.next_ms / win.steps
            evidence["steps"] = win.steps
        evidence["gpu_timeline"] = ctx.has("gpu")
        single = any("_SingleProcessDataLoaderIter" in n for n in win.iterators)
        if single:
            evidence["num_workers"] = 0
        advice = (
            "raise DataLoader num_workers (and pin_memory=True, persistent_workers=True), "
            "or move per-sample preprocessing to the GPU"
        )
        causes, fixes, cause_advice = input_causes(ctx, single, evidence, rank)
        if causes:
            advice = cause_advice
        who = "GPU idle" if ctx.has("gpu") else "Loop waits"
        over = f" (rank {worst}, {whole.steps[worst]} steady steps)" if worst is not None else ""
        return [
            Finding(
                id="input-pipeline-data-wait",
                category="input-pipeline",
                title=f"{who} {share:.1f}% of step time on the DataLoader{over}",
                severity=severity_from_share(share, MEDIUM_PCT, HIGH_PCT, LOW_PCT),
                impact=Impact(share, per_step),
                evidence=evidence,
                where={
                    "ranks": [rank] if rank is not None else [],
                    "modules": sorted(win.iterators)[:3],
                    "causes": causes,
                },
                confidence=0.9 if ctx.has("gpu") else 0.75,
                fixes=fixes,
                advice=advice,
            )
        ]


def _gpu_idle_share_of_next(rd: RankData, tel_dw: np.ndarray, in_window: np.ndarray) -> float | None:
    """The share of the window's ``__next__`` time (telemetry) the GPU spent idle (the breakdown's
    data wait), 0..1; None without a GPU timeline or a data wait in the window to compare."""
    if not rd.breakdown or not len(rd.events.gpu_rows()):
        return None
    host = float(np.nansum(tel_dw[in_window]))
    if host <= 0:
        return None
    idle = float(sum(b.data_wait_ms for b in rd.breakdown))
    return min(1.0, max(0.0, idle / host))


def whole_run_data_wait(ctx: AnalysisContext) -> WholeRun:
    """Each rank's data-wait share over the steady steps of its telemetry (module doc). A GPU rank
    whose window cannot say how much of ``__next__`` left the GPU idle (untraced, or no data wait
    in its window) takes the median of the ranks that can, else counts all of it."""
    out = WholeRun()
    raw: dict[int, tuple[float, float, bool]] = {}  # rank -> (share, ms, ran on a GPU)
    for rd in ctx.ranks:
        tel = rd.telemetry
        mask = rd.untraced_step_mask()
        if tel is None or mask is None or "data_wait_ms" not in tel:
            continue
        try:
            dw = np.clip(np.asarray(tel["data_wait_ms"], dtype=np.float64), 0.0, None)
            wall = np.asarray(tel["wall_ms"], dtype=np.float64)
            gpu = np.asarray(tel.get("gpu_ms", np.full(wall.shape, np.nan)), dtype=np.float64)
            in_window = np.asarray(tel.get("in_window", np.zeros(wall.size)), dtype=np.float64) > 0
        except (TypeError, ValueError):
            continue
        t = step_time_ms(wall, gpu)
        ok = mask & np.isfinite(dw) & np.isfinite(t) & (t > 0)
        n = int(ok.sum())
        if n < MIN_WHOLE_RUN_STEPS:
            continue
        idle = _gpu_idle_share_of_next(rd, dw, in_window)
        if idle is not None:
            out.idle_share[rd.rank] = idle
        raw[rd.rank] = (float(median(dw[ok] / t[ok])), float(median(dw[ok])), bool(np.isfinite(gpu).any()))
        out.steps[rd.rank] = n
    fallback = float(median(list(out.idle_share.values()))) if out.idle_share else 1.0
    for r, (share, ms, on_gpu) in raw.items():
        scale = out.idle_share.get(r, fallback if on_gpu else 1.0)
        out.pct[r] = 100.0 * scale * share
        out.ms[r] = scale * ms
    return out


# --------------------------------------------------------------------------- causes
# Split the data wait by cause where the data allows. Thresholds:
# * a worker is *saturated* when it averages >= WORKER_SATURATED_PCT (85 %) of one core over the
#   window: a CPU-bound worker runs at ~100 % of a core; below ~85 % it is waiting on I/O or on a
#   full prefetch queue, so more workers would not help;
# * *too few workers*: saturated workers and fewer of them than the host's cores (when the run
#   recorded ``cpu_count``), or no core count known and fewer than 4 workers;
# * *preprocessing in the main process*: ``_SingleProcessDataLoaderIter`` (num_workers=0);
# * *pageable host-to-device copies*: ``Memcpy HtoD (Pageable -> Device)`` in the window;
# * *float32 where uint8 would do*: the largest host-to-device copy per step comes from a float32
#   image-shaped tensor ([B, 1|3, H, W], H, W >= 32): 4 bytes per pixel channel where the decoded
#   image has 1; normalising on the GPU moves a quarter of the bytes.
WORKER_SATURATED_PCT = 85.0
FEW_WORKERS_WITHOUT_CORE_COUNT = 4


def _window_host(rd) -> dict | None:
    host = rd.host
    if not host or "t_ns" not in host:
        return None
    t = np.asarray(host["t_ns"], dtype=np.float64)
    keep = np.ones(len(t), bool)
    tel = rd.telemetry
    if tel and "in_window" in tel and "start_ns" in tel:
        win = np.asarray(tel["in_window"], dtype=np.float64) > 0
        if win.any():
            lo = float(np.asarray(tel["start_ns"], dtype=np.float64)[win].min())
            hi = float(np.asarray(tel["end_ns"], dtype=np.float64)[win].max())
            sel = (t >= lo) & (t <= hi)
            if sel.sum() >= 2:
                keep = sel
    return {
        k: np.asarray(v, dtype=np.float64)[keep]
        for k, v in host.items()
        if getattr(v, "dtype", None) != np.dtype(object)
    }


def _image_like_float_h2d(rd) -> tuple[float, float | None]:
    """(HtoD MB per step, bytes per sample of float32 image-shaped copies or None)."""
    ev = rd.events
    rows = ev.rows_named(lambda s: "HtoD" in s, Kind.MEMCPY)
    rows = rows[ev.step[rows] >= 0] if rows.size else rows
    steps = max(1, len(rd.steps))
    if not rows.size:
        return 0.0, None
    mb = float(np.clip(ev.bytes[rows], 0, None).sum()) / 1e6 / steps
    per_sample = None
    for r in rows[np.argsort(ev.bytes[rows])[::-1][:8]]:
        op = int(ev.op_of[r]) if len(ev.op_of) else -1
        for cand in (op, *(range(op - 1, max(op - 4, -1), -1) if op >= 0 else ())):
            extra = ev.extra.get(int(cand), {}) if cand >= 0 else {}
            dims = extra.get("input_dims") or []
            types = extra.get("input_types") or []
            if dims and types and isinstance(dims[0], list) and len(dims[0]) == 4 and types[0] == "float":
                b, ch, h, w = dims[0]
                if ch in (1, 3) and h >= 32 and w >= 32:
                    per_sample = 4.0 * ch * h * w
                    break
        if per_sample:
            break
    return mb, per_sample


def input_causes(
    ctx: AnalysisContext, single_process: bool, evidence: dict, rank: int | None = None
) -> tuple[list[str], list[str], str]:
    """Causes of the data wait on ``rank`` (the graded one; the first rank when it has no trace),
    the fix ids they call for, and advice; adds numbers to ``evidence``."""
    causes: list[str] = []
    fixes: list[str] = []
    advice: list[str] = []
    rd = next((r for r in ctx.ranks if r.rank == rank and len(r.events)), ctx.ranks[0])
    host = _window_host(rd)
    workers = None
    if host and "workers" in host and len(host["workers"]):
        workers = int(np.nanmedian(host["workers"]))
        evidence["workers"] = workers
        if workers > 0 and "workers_cpu_pct" in host:
            per_worker = float(np.nanmean(host["workers_cpu_pct"])) / workers
            evidence["worker_cpu_pct_of_core"] = per_worker
            if "max_worker_cpu_pct" in host:
                evidence["max_worker_cpu_pct_of_core"] = float(np.nanmean(host["max_worker_cpu_pct"]))
            if per_worker >= WORKER_SATURATED_PCT:
                causes.append("workers saturated")
                cores = None
                for info in (
                    (ctx.meta.get("per_rank") or {}).values() if isinstance(ctx.meta.get("per_rank"), dict) else []
                ):
                    if isinstance(info, dict) and info.get("cpu_count"):
                        cores = int(info["cpu_count"])
                if cores is not None:
                    evidence["host_cores"] = cores
                if (cores is not None and workers < cores) or (
                    cores is None and workers < FEW_WORKERS_WITHOUT_CORE_COUNT
                ):
                    causes.append("too few workers")
                    fixes.append("dataloader-workers")
                    advice.append(f"raise num_workers above {workers} (each worker is a full core busy)")
                if ctx.has("gpu"):  # moving preprocessing to a GPU needs one
                    fixes.append("gpu-preprocess")
                    advice.append("move per-sample decode/resize/normalise to the GPU")
        if "proc_cpu_pct" in host and len(host["proc_cpu_pct"]):
            evidence["main_process_cpu_pct"] = float(np.nanmean(host["proc_cpu_pct"]))
    if single_process or workers == 0:
        causes.append("preprocessing in the main process")
        fixes += ["dataloader-workers", "gpu-preprocess"] if ctx.has("gpu") else ["dataloader-workers"]
        device = "GPU" if ctx.has("gpu") else "model"
        advice.append(f"DataLoader(num_workers=N) so batches are prepared while the {device} computes")
    pageable = rd.events.rows_named(lambda s: "HtoD" in s and "Pageable" in s, Kind.MEMCPY)
    pageable = pageable[rd.events.step[pageable] >= 0] if pageable.size else pageable
    if pageable.size:
        causes.append("pageable host-to-device copies")
        evidence["pageable_h2d_copies_per_step"] = pageable.size / max(1, len(rd.steps))
        fixes.append("pin-memory")
        advice.append("pin_memory=True and .to(device, non_blocking=True)")
    mb, per_sample = _image_like_float_h2d(rd)
    if mb:
        evidence["h2d_mb_per_step"] = mb
    if per_sample:
        causes.append("float32 images cross PCIe where uint8 would do")
        evidence["h2d_bytes_per_sample"] = per_sample
        fixes.append("gpu-preprocess")
        advice.append("ship uint8 images and convert/normalise on the GPU (a quarter of the bytes)")
    if not fixes:
        fixes = ["dataloader-workers", "gpu-preprocess"]
    return causes, list(dict.fromkeys(fixes)), "; ".join(dict.fromkeys(advice))
