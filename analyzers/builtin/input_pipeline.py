"""input-pipeline: how much of each step the GPU (or, CPU-only, the training loop) waits for data.

Measure: ``data_wait_ms`` of the step breakdown, i.e. time spent inside the DataLoader's
``__next__`` (``enumerate(DataLoader)#...``) *while the GPU is idle*. Loading that overlaps GPU
work is free and not counted. For CPU-only traces it is the whole ``__next__`` time, since
nothing else could have run meanwhile. When the run directory has per-step telemetry for the
whole run, its ``data_wait_ms`` is reported too (the window may not be typical).

Grading (share of step time): >= 20 % high, >= 5 % medium, > 1 % low. These are the cut points
of TensorFlow's input-pipeline analyzer ("highly" / "moderately input-bound") and the 5 % of
the TensorBoard profiler's DataLoader rule. Why: step-time noise of a training loop is a few
percent, so a stall under ~5 % is hard to tell from noise and rarely worth a code change; at a
fifth of every step the input pipeline is the first thing to fix, because no GPU-side change can
recover time the GPU spends idle.

Impact: the whole data wait is the saving estimate (prefetching with enough workers can hide
all of it when producing a batch takes less time than a step).
"""

from __future__ import annotations

import math

import numpy as np

from stallscope.analyzers.base import Analyzer, Finding, Impact, register, severity_from_share
from stallscope.analyzers.model import AnalysisContext, Kind
from stallscope.analyzers.vocab import is_data_wait

MEDIUM_PCT = 5.0
HIGH_PCT = 20.0
LOW_PCT = 1.0


@register
class InputPipeline(Analyzer):
    """Data-wait share of step time."""

    name = "input-pipeline"
    requires = frozenset({"trace"})
    description = "GPU idle while the DataLoader produces the next batch"

    def analyze(self, ctx: AnalysisContext) -> list[Finding]:
        wall = data = 0.0
        steps = 0
        worst_rank, worst_share = None, -1.0
        next_ms = 0.0
        iter_names: set[str] = set()
        for rd in ctx.ranks:
            r_wall = sum(b.wall_ms for b in rd.breakdown)
            r_data = sum(b.data_wait_ms for b in rd.breakdown)
            wall += r_wall
            data += r_data
            steps += len(rd.breakdown)
            if r_wall > 0 and r_data / r_wall > worst_share:
                worst_rank, worst_share = rd.rank, r_data / r_wall
            ev = rd.events
            rows = ev.rows_named(is_data_wait, Kind.CPU_OP, Kind.ANNOTATION)
            rows = rows[ev.step[rows] >= 0] if rows.size else rows
            next_ms += float(ev.dur_ns[rows].sum()) / 1e6
            iter_names.update(ev.name_of(int(r)).split("#", 1)[-1] for r in rows[:50])
        if wall <= 0 or steps == 0:
            return []
        share = 100.0 * data / wall
        if share <= LOW_PCT:
            return []
        per_step = data / steps
        evidence: dict[str, object] = {
            "data_wait_pct": share,
            "data_wait_ms_per_step": per_step,
            "step_ms_mean": wall / steps,
            "dataloader_next_ms_per_step": next_ms / steps,
            "steps": steps,
            "gpu_timeline": ctx.has("gpu"),
        }
        tel = _telemetry_data_wait(ctx)
        if tel is not None:
            evidence["whole_run_data_wait_pct"] = tel
        single = any("_SingleProcessDataLoaderIter" in n for n in iter_names)
        if single:
            evidence["num_workers"] = 0
        advice = (
            "raise DataLoader num_workers (and pin_memory=True, persistent_workers=True), "
            "or move per-sample preprocessing to the GPU"
        )
        causes, fixes, cause_advice = input_causes(ctx, single, evidence)
        if causes:
            advice = cause_advice
        return [
            Finding(
                id="input-pipeline-data-wait",
                category="input-pipeline",
                title=f"{'GPU idle' if ctx.has('gpu') else 'Loop waits'} {share:.1f}% of step time on the DataLoader",
                severity=severity_from_share(share, MEDIUM_PCT, HIGH_PCT, LOW_PCT),
                impact=Impact(step_time_pct=share, est_saving_ms_per_step=per_step),
                evidence=evidence,
                where={
                    "ranks": [worst_rank] if worst_rank is not None else [],
                    "modules": sorted(iter_names)[:3],
                    "causes": causes,
                },
                confidence=0.9 if ctx.has("gpu") else 0.75,
                fixes=fixes,
                advice=advice,
            )
        ]


def _telemetry_data_wait(ctx: AnalysisContext) -> float | None:
    """Whole-run data-wait share from steps.csv (rank 0 first), or None."""
    for rd in ctx.ranks:
        tel = rd.telemetry
        if not tel or "data_wait_ms" not in tel or "wall_ms" not in tel:
            continue
        try:
            dw = np.asarray(tel["data_wait_ms"], dtype=np.float64)
            wl = np.asarray(tel["wall_ms"], dtype=np.float64)
        except (TypeError, ValueError):
            continue
        ok = np.isfinite(dw) & np.isfinite(wl)
        total = float(wl[ok].sum())
        if total > 0 and not math.isnan(total):
            return 100.0 * float(dw[ok].sum()) / total
    return None


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


def input_causes(ctx: AnalysisContext, single_process: bool, evidence: dict) -> tuple[list[str], list[str], str]:
    """Causes of the data wait, the fix ids they call for, and advice; adds numbers to ``evidence``."""
    causes: list[str] = []
    fixes: list[str] = []
    advice: list[str] = []
    rd = ctx.ranks[0]
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
