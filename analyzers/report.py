"""The diagnosis report (``schema_version: 1``): build it from a target, validate, read it back.

:func:`build_report` loads a run directory / trace / folder of traces, computes the breakdown,
runs the analyzers and returns a plain dict (YAML/JSON-ready). The schema lives next to this
module (``report.schema.json``) and is documented in ``docs/report.md``. Numbers carry their
unit in the key. No torch import.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from stallscope.analyzers import peaks
from stallscope.analyzers.breakdown import breakdown_pct, breakdown_totals
from stallscope.analyzers.context import load_context
from stallscope.analyzers.model import AnalysisContext, Kind, RankData, StepBreakdown, step_time_ms
from stallscope.analyzers.run import run_analyzers
from stallscope.analyzers.stats import summary
from stallscope.analyzers.views.report import report_views
from stallscope.profiler.common import ToolError, __version__, read_yaml
from stallscope.profiler.patchphases import Phase, phase_mask, phase_of, read_phases

__all__ = [
    "SCHEMA_VERSION",
    "SCHEMA_PATH",
    "build_report",
    "report_from_context",
    "load_report",
    "validate_report",
    "schema",
]

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
TOP_KERNELS = 15


def _stats(samples: list[float]) -> dict[str, Any]:
    """The summary statistics of step times (ms, 4 decimals) with the samples themselves."""
    out: dict[str, Any] = {k: None if v is None else round(v, 4) for k, v in summary(samples).items()}
    out["samples"] = [round(float(x), 4) for x in samples if x is not None and math.isfinite(x)]
    return out


def _telemetry_samples(ctx: AnalysisContext) -> tuple[list[float], str, list[int]] | None:
    """Whole-run step times from the first rank's steps.csv, leaving out the warm-up steps before
    the trace window (``meta.yaml`` window.skip), the window's own steps and the step after it
    (they run under the profiler's overhead, the latter writes the trace) as long as at least 3
    steps remain.

    A step's time is :func:`~stallscope.analyzers.model.step_time_ms`."""
    window = (ctx.meta or {}).get("window") or {}
    skip = window.get("skip") if isinstance(window, dict) and isinstance(window.get("skip"), int) else 0
    for rd in ctx.ranks:
        tel = rd.telemetry
        if not tel or "wall_ms" not in tel:
            continue
        try:
            wall = np.asarray(tel["wall_ms"], dtype=np.float64)
            gpu = np.asarray(tel.get("gpu_ms", np.full(wall.size, np.nan)), dtype=np.float64)
            inw = np.asarray(tel.get("in_window", np.zeros(wall.size)), dtype=np.float64)
            step = np.asarray(tel.get("step", np.arange(wall.size)), dtype=np.float64)
        except (TypeError, ValueError):
            continue
        ok = np.isfinite(wall)
        wall = step_time_ms(wall, gpu)
        last = ((rd.meta.get("rank") or {}).get("window") or {}).get("last_step")
        if isinstance(last, int):
            ok &= step != last + 1
        untraced = rd.untraced_step_mask()
        assert untraced is not None  # None only without telemetry wall_ms, skipped above
        # under --auto-patch: the steps of the window's phase, the program the findings describe
        first = ((rd.meta.get("rank") or {}).get("window") or {}).get("first_step")
        phase = phase_of(_phases(ctx), first if isinstance(first, int) else 0)
        same = phase_mask(phase, step)
        within = f", {phase.label()}" if phase is not None else ""
        choices = (
            (untraced & same, f"steps outside the trace window and after the {skip} warm-up steps{within}"),
            (ok & (inw == 0) & same, f"steps outside the trace window{within}"),
            (ok & same, f"all steps{within}"),
        )
        for mask, why in choices:
            if mask.sum() >= 3 or (why.startswith("all steps") and mask.any()):
                return (
                    [float(x) for x in wall[mask]],
                    f"telemetry (rank {rd.rank} steps.csv, {why})",
                    [int(x) for x in step[mask]],
                )
    return None


def _phases(ctx: AnalysisContext) -> list[Phase]:
    """The run's auto-patch phases ([] without ``patches.yaml``)."""
    return read_phases((ctx.meta or {}).get("patches"))


def _phase_stats(ctx: AnalysisContext) -> list[dict[str, Any]] | None:
    """Step-time statistics per auto-patch phase, from the first rank with telemetry."""
    phases = _phases(ctx)
    if not phases:
        return None
    for rd in ctx.ranks:
        tel = rd.telemetry
        if not tel or "wall_ms" not in tel or "step" not in tel:
            continue
        wall = np.asarray(tel["wall_ms"], dtype=np.float64)
        gpu = np.asarray(tel.get("gpu_ms", np.full(wall.size, np.nan)), dtype=np.float64)
        step_ms = step_time_ms(wall, gpu)
        step = np.asarray(tel["step"], dtype=np.float64)
        out = []
        for ph in phases:
            st = summary([float(x) for x in step_ms[phase_mask(ph, step) & np.isfinite(step_ms)]])
            out.append(
                {
                    "phase": ph.label(),
                    "rank": rd.rank,
                    "steps": int(phase_mask(ph, step).sum()),
                    **{k: None if v is None else round(v, 4) for k, v in st.items() if k in ("median", "p10", "p90")},
                }
            )
        return out
    return None


def _gpu_step_ms(rd: RankData) -> dict[int, float]:
    """Per step index, the GPU's time for the work the step launched, as a CUDA event pair around
    the step measures it: from when the GPU could start that work (its first op's start, or the
    end of earlier work that started before this step's work ended: the previous step's, or work
    launched before the trace) to the end of its last op. Earlier work still running on another
    stream therefore moves the start later, never earlier, so consecutive steps never share GPU
    time and the figure errs short (the host's wall time then stands). Only GPU ops linked to
    their launch belong to a step (an op without the link has only its own start, which says when
    it ran, not which step issued it). Only differences of GPU timestamps enter: a GPU clock
    offset from the host's does not matter, and all-zero GPU timestamps give 0."""
    ev = rd.events
    g = ev.gpu_rows()
    if not len(g) or not rd.steps:
        return {}
    step = np.where(ev.launch_of[g] >= 0, ev.step[g], -1) if len(ev.launch_of) else np.full(len(g), -1)
    starts = ev.ts_ns[g]
    ends = starts + ev.dur_ns[g]
    out: dict[int, float] = {}
    for s in rd.steps:
        mine = step == s.index
        if not mine.any():
            continue
        first, last = int(starts[mine].min()), int(ends[mine].max())
        earlier = (step < s.index) & (starts < last)
        begin = max(first, int(ends[earlier].max())) if earlier.any() else first
        out[s.index] = max(0, last - min(begin, last)) / 1e6
    return out


def _trace_samples(ctx: AnalysisContext) -> list[float]:
    """Per trace step, the slowest rank's step time (a synchronous step ends with its slowest rank).

    A rank's step time is the slower of the host's wall time and the GPU's time for the work the
    step launched, the rule of the telemetry (:func:`~stallscope.analyzers.model.step_time_ms`): a
    host that runs ahead of the GPU only queues work, and its wall time understates the step
    (a GR-KAN training step on an H200: host 1.5 ms, GPU 29 ms)."""
    by_step: dict[int, float] = {}
    for rd in ctx.ranks:
        gpu = _gpu_step_ms(rd)
        for s in rd.steps:
            by_step[s.index] = max(by_step.get(s.index, 0.0), s.wall_ms, gpu.get(s.index, 0.0))
    return [by_step[k] for k in sorted(by_step)]


def _environment(ctx: AnalysisContext) -> dict[str, Any]:
    meta = ctx.meta or {}
    env: dict[str, Any] = {}
    per_rank = meta.get("per_rank") if isinstance(meta.get("per_rank"), dict) else {}
    first: Any = next(iter(per_rank.values()), {}) if per_rank else {}  # meta.yaml: any YAML value
    first = first if isinstance(first, dict) else {}
    tm = ctx.trace_meta or {}
    gpu = first.get("gpu") if isinstance(first.get("gpu"), dict) else None
    props = tm.get("deviceProperties") if isinstance(tm.get("deviceProperties"), list) else []
    if gpu is None and props and isinstance(props[0], dict):
        p = props[0]
        gpu = {
            "index": p.get("id"),
            "name": p.get("name"),
            "memory_gb": round(p["totalGlobalMem"] / 2**30, 1)
            if isinstance(p.get("totalGlobalMem"), (int, float))
            else None,
            "compute_capability": f"{p.get('computeMajor')}.{p.get('computeMinor')}" if "computeMajor" in p else None,
        }
    env["gpu"] = gpu
    env["gpu_count"] = len(props) if props else (1 if gpu else 0)
    for key in ("driver", "cuda", "torch", "python"):
        env[key] = first.get(key)
    if env.get("cuda") is None and tm.get("cuda_runtime_version"):
        env["cuda"] = str(tm.get("cuda_runtime_version"))
    if env.get("driver") is None and tm.get("cuda_driver_version"):
        env["driver"] = str(tm.get("cuda_driver_version"))
    env["host"] = meta.get("host") or tm.get("host_name")
    dist_info = tm.get("distributedInfo")
    dist: dict[str, Any] = dist_info if isinstance(dist_info, dict) else {}
    env["world_size"] = meta.get("world_size") or dist.get("world_size") or len(ctx.ranks)
    env["backend"] = dist.get("backend")
    env["command"] = meta.get("command")
    env["git"] = meta.get("git")
    env["device_name"] = ctx.device_name
    return env


def _top_kernels(ctx: AnalysisContext) -> list[dict[str, Any]]:
    totals: dict[str, list[float]] = {}
    grand = 0.0
    for rd in ctx.ranks:
        ev = rd.events
        rows = np.flatnonzero(ev.kind == Kind.KERNEL)
        if rows.size == 0:
            continue
        if (ev.step[rows] >= 0).any():
            rows = rows[ev.step[rows] >= 0]
        ids, inv = np.unique(ev.name[rows], return_inverse=True)
        dur = np.bincount(inv, weights=ev.dur_ns[rows].astype(np.float64))
        cnt = np.bincount(inv)
        for i, nid in enumerate(ids):
            t = totals.setdefault(ev.names[int(nid)], [0, 0.0])
            t[0] += int(cnt[i])
            t[1] += float(dur[i]) / 1e6
        grand += float(ev.dur_ns[rows].sum()) / 1e6
    classes: dict[str, str] = {}
    if totals:
        try:
            classes = dict(peaks.classify_kernels(ctx))
        except Exception as exc:  # a classification bug must not cost the report
            ctx.notices.append(f"kernel classification failed ({exc.__class__.__name__}); classes are unknown")
    out = []
    for name, (count, total) in sorted(totals.items(), key=lambda kv: -kv[1][1])[:TOP_KERNELS]:
        out.append(
            {
                "name": name,
                "count": int(count),
                "total_ms": round(total, 4),
                "pct": round(100.0 * total / grand, 3) if grand > 0 else 0.0,
                "class": classes.get(name, "unknown"),
            }
        )
    return out


def _step_source(ctx: AnalysisContext) -> str:
    for rd in ctx.ranks:
        if rd.steps:
            return rd.steps[0].source
    return "none"


def _per_rank(ctx: AnalysisContext) -> list[dict[str, Any]]:
    out = []
    for rd in ctx.ranks:
        walls = [s.wall_ms for s in rd.steps]
        out.append(
            {
                "rank": rd.rank,
                "steps": len(rd.steps),
                "step_time_ms": {k: v for k, v in _stats(walls).items()},
                "breakdown_pct": breakdown_pct(rd.breakdown),
                "trace": rd.trace_path,
            }
        )
    return out


# A report says what it could not do in a few lines; notices come partly from files we did not
# write (meta.yaml), so their number and length are capped.
MAX_NOTICES = 50
MAX_NOTICE_CHARS = 500


def bounded_notices(notices: list[Any]) -> list[str]:
    """Distinct notices as strings, each cut to ``MAX_NOTICE_CHARS``, at most ``MAX_NOTICES``
    (the last line then says how many were left out)."""
    out = list(dict.fromkeys(n if isinstance(n, str) else repr(n)[:MAX_NOTICE_CHARS] for n in notices))
    out = [n if len(n) <= MAX_NOTICE_CHARS else n[: MAX_NOTICE_CHARS - 1] + "…" for n in out]
    if len(out) > MAX_NOTICES:
        out = out[: MAX_NOTICES - 1] + [f"{len(out) - MAX_NOTICES + 1} more notices left out"]
    return out


def report_from_context(ctx: AnalysisContext, debug: bool = False) -> dict[str, Any]:
    """Run the analyzers on a loaded context and assemble the report dict."""
    all_bd: list[StepBreakdown] = [b for rd in ctx.ranks for b in rd.breakdown]
    tel = _telemetry_samples(ctx)
    sample_steps: list[int] | None = None
    if tel is not None:
        samples, samples_source, sample_steps = tel
    else:
        samples, samples_source = (
            _trace_samples(ctx),
            "trace steps (slowest rank per step; the slower of host and GPU)",
        )
    steps_stats = _stats(samples)
    # the findings' savings are held to the step the report states (analyzers/accounting.py)
    result = run_analyzers(ctx, debug=debug, step_ms=steps_stats.get("median"))
    steps_stats["source"] = samples_source
    if sample_steps is not None and len(sample_steps) == len(steps_stats["samples"]):
        steps_stats["sample_steps"] = sample_steps  # the step index of each sample, for charts
    phase_stats = _phase_stats(ctx)
    run_steps = next(
        (len(rd.telemetry["wall_ms"]) for rd in ctx.ranks if rd.telemetry and "wall_ms" in rd.telemetry), None
    )
    over = (ctx.meta or {}).get("overhead")
    if isinstance(over, dict) and over.get("slowed") is True and tel is not None:
        # the telemetry samples are mostly steps after the window: they carry its after-effect
        steps_stats["after_window_pct"] = over.get("after_window_pct")
        ctx.notices.append(
            f"the steps after the trace window ran {over.get('after_window_pct')} % slower than those before it "
            f"(95 % interval {over.get('after_window_ci95_pct')}); the step time above includes that after-effect "
            "(suspected: the profiler's CUPTI left attached; see docs/overhead.md)"
        )
    totals = breakdown_totals(all_bd)
    n_steps = max((len(rd.steps) for rd in ctx.ranks), default=0)
    per_step = {k: round(v / max(len(all_bd), 1), 4) for k, v in totals.items()}
    has_gpu = ctx.has("gpu")
    kind = (
        "run-dir"
        if ctx.meta.get("kind") == "stallscope-run" or any(rd.telemetry is not None for rd in ctx.ranks)
        else ("trace" if len(ctx.ranks) == 1 and Path(ctx.source).is_file() else "trace-folder")
    )
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "stallscope-report",
        "tool": {"name": "stallscope", "version": __version__},
        "source": {
            "path": ctx.source,
            "kind": kind,
            "traces": [rd.trace_path for rd in ctx.ranks if rd.trace_path],
            "ranks": [rd.rank for rd in ctx.ranks],
            "steps_from": _step_source(ctx),
            "events": int(sum(len(rd.events) for rd in ctx.ranks)),
        },
        "environment": _environment(ctx),
        "summary": {
            "steps": n_steps,
            **({"run_steps": run_steps} if run_steps is not None else {}),
            "gpu_events": has_gpu,
            "timeline": "gpu" if has_gpu else "cpu",
            "step_time_ms": steps_stats,
            **({"phases": phase_stats} if phase_stats else {}),
            "breakdown_pct": breakdown_pct(all_bd),
            "breakdown_ms_per_step": per_step,
        },
        "top_kernels": _top_kernels(ctx),
        "findings": [f.to_dict() for f in result.findings],
        **({"accounting": result.accounting.to_dict()} if result.accounting is not None else {}),
        "views": report_views(ctx, ctx.notices),
        "analyzers": {"ran": result.ran, "skipped": result.skipped, "failed": result.failed},
        "notices": bounded_notices(ctx.notices),
    }
    if len(ctx.ranks) > 1:
        report["per_rank"] = _per_rank(ctx)
    patches = (ctx.meta or {}).get("patches")
    if patches is not None:
        report["patches"] = patches
    return _plain(report)


def build_report(target: str | Path, debug: bool = False) -> dict[str, Any]:
    """Load ``target`` (run directory, trace file, folder of traces) and return the report dict."""
    return report_from_context(load_context(target), debug=debug)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def schema() -> dict[str, Any]:
    """The report's JSON Schema."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when the report does not follow the schema."""
    import jsonschema

    jsonschema.validate(report, schema())


def load_report(path: str | Path, *, check_version: bool = True, need: str = "summary") -> dict[str, Any]:
    """Read a report file: JSON for ``.json``, else YAML. It must be a mapping of kind
    ``stallscope-report`` with a ``schema_version`` (this one's, unless ``check_version`` is
    False: the gate compares two reports' versions itself) and a ``summary`` mapping; anything
    else is a one-line :class:`ToolError` (exit 2)."""
    p = Path(path)
    if not p.is_file():
        raise ToolError(f"{p}: no such report; check the path")
    if p.suffix.lower() == ".json":
        try:
            doc = json.loads(p.read_bytes())
        except (OSError, ValueError) as exc:
            raise ToolError(
                f"{p}: not a readable JSON report ({exc.__class__.__name__}); "
                "regenerate it with stallscope diagnose -o report.json"
            ) from None
    else:
        doc = read_yaml(p)
    if not isinstance(doc, dict) or doc.get("kind", "stallscope-report") != "stallscope-report":
        raise ToolError(f"{p}: not a stallscope report; pass a report written by stallscope diagnose")
    if "schema_version" in doc and check_version and doc["schema_version"] != SCHEMA_VERSION:
        raise ToolError(
            f"{p}: unknown report schema_version {doc.get('schema_version')!r}; this stallscope reads "
            f"version {SCHEMA_VERSION}: upgrade stallscope or regenerate the report"
        )
    # Presenting a report needs its summary; planning patches needs only its findings.
    wanted = dict if need == "summary" else list
    if not isinstance(doc.get(need), wanted):
        raise ToolError(
            f"{p}: not a stallscope report (no `{need}` {'mapping' if wanted is dict else 'list'}); "
            "make one with stallscope diagnose RUN -o report.yaml"
        )
    if "schema_version" not in doc:
        raise ToolError(
            f"{p}: not a stallscope report (no schema_version); pass a report written by stallscope diagnose"
        )
    return doc
