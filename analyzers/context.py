"""Build the :class:`AnalysisContext` of a run directory, a trace file or a folder of traces.

:func:`load_context(target)` accepts

* a run directory written by ``stallscope profile`` (its layout belongs to
  :mod:`stallscope.profiler.runformat`: the run's meta, one folder per rank with the window's
  trace and the per-step, host and NVML tables),
* a single trace from any torch.profiler user (``*.json``, ``*.json.gz``),
* a folder of per-rank traces (HTA's layout; the rank comes from ``distributedInfo.rank`` in the
  trace, else from ``rank<N>`` in the file name).

Each trace is loaded (:mod:`analyzers.loader`), its clocks checked and its start-up measured
(:mod:`analyzers.clock`: the verdict goes to ``RankData.meta["clock"]``), its steps found
(:mod:`analyzers.steps`), ranks beyond the first ``FULL_RANKS`` compacted
(:mod:`analyzers.compact`) and every rank's breakdown computed (:mod:`analyzers.breakdown`).
Parsed tables are kept in table files (:mod:`analyzers.tablestore`): the full table of each of
the first ``FULL_RANKS`` ranks and the compact form of every further rank, written next to the
trace by the first diagnose or by the rank itself at the end of its window
(:mod:`analyzers.compaction`), so a repeated diagnose and a 1,024-rank run read small columnar
files instead of parsing JSON.
What could not be read (an unknown schema, a GPU clock that is unusable, launches without GPU
events, ranks of the job that are missing) is said in ``ctx.notices``. No torch import.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stallscope.analyzers import tablestore
from stallscope.analyzers.arrays import isin
from stallscope.analyzers.breakdown import compute_breakdowns
from stallscope.analyzers.clock import CLOCK_KEY, check_gpu_clock, clock_notice, startup_notice, startup_span
from stallscope.analyzers.compact import FULL_RANKS, compact_rank
from stallscope.analyzers.loader import CATEGORIES, EVENT_COUNTS, find_traces, load_trace
from stallscope.analyzers.model import AnalysisContext, EventTable, Kind, RankData, empty_table
from stallscope.analyzers.steps import assign_steps, find_steps
from stallscope.analyzers.tracefile import TEXT_REPLACED
from stallscope.analyzers.vocab import GPU_KINDS, KIND_OF_CATEGORY, UNTIMED_KINDS, is_work_call
from stallscope.profiler import runformat
from stallscope.profiler.common import ToolError, read_yaml

__all__ = ["load_context", "load_rank"]

MAX_RANK = 10**9  # a rank number past this is not one (the report keeps ranks in int32 arrays)
_RANK_IN_NAME = re.compile(r"rank[_-]?(\d+)", re.IGNORECASE)
_TB_NAME = re.compile(r"^(?P<who>.+?)\.(?P<stamp>\d+)\.pt\.trace\.json(?:\.gz)?$")


def load_context(target: str | os.PathLike[str]) -> AnalysisContext:
    """Load a run directory, a trace file or a folder of per-rank traces (see module doc)."""
    root = Path(target)
    if not root.exists():
        raise ToolError(f"{root}: no such file or directory; pass a run directory, a trace file or a folder of traces")
    if root.is_file():
        notices: list[str] = []
        rd = load_rank(root, None, notices)
        return _finish(AnalysisContext(ranks=[rd], source=str(root), notices=notices))
    if runformat.looks_like_run_dir(root):
        return _load_run_dir(root)
    return _load_trace_folder(root)


def load_rank(
    path: Path,
    rank: int | None,
    notices: list[str],
    load: Callable[[Path], tuple[EventTable, dict[str, Any]]] | None = None,
) -> RankData:
    """One trace as a rank: events, steps (a step notice goes to ``notices``) and its rank number
    (``rank``, else the trace's ``distributedInfo.rank`` or ``rank<N>`` in the name, else -1).
    ``load`` reads the trace (default: :func:`load_trace` through the table cache)."""
    table, meta = load(path) if load is not None else tablestore.load_cached(path, load_trace)
    table_notice = meta.pop(tablestore.TABLE_NOTICE, None)
    if table_notice:
        notices.append(str(table_notice))
    if meta.pop(TEXT_REPLACED, False):
        notices.append(
            f"{path.name}: invalid Unicode (lone surrogates or bytes that are not UTF-8) replaced by U+FFFD; "
            "the rest of the trace was read as it is"
        )
    bad_time = (meta.get(EVENT_COUNTS) or {}).get("bad_time", 0)
    if bad_time:
        notices.append(
            f"{path.name}: {bad_time} events whose ts is not a time (a finite number of microseconds) were left out"
        )
    table, clock = check_gpu_clock(table)
    steps, notice = find_steps(table)
    whole = bool(steps) and steps[0].source == "whole-trace"
    found = [clock_notice(path.name, clock, steps[0].source if steps else None) or ""]
    found += _schema_notices(table, meta, path.name, clock)
    su = startup_span(table, None if whole or not steps else steps[0].start_ns)
    clock["startup_ms"] = su.ms if su is not None else 0.0
    if su is not None:
        clock["startup_calls_ms"] = su.calls_ns / 1e6
        clock["startup_end_ns"] = su.end_ns
        if whole:
            steps, notice = find_steps(table, not_before_ns=su.end_ns)
        span = int((table.ts_ns + table.dur_ns).max() - table.ts_ns.min())
        found.append(startup_notice(path.name, su, span, has_steps=not whole) or "")
    for n in [n for n in found if n] + ([notice] if notice else []):
        if n not in notices:
            notices.append(n)
    assign_steps(table, steps)
    r = _rank_of(meta, path) if rank is None else rank
    return RankData(
        rank=r if r is not None else -1,
        events=table,
        steps=steps,
        meta={"trace": meta, CLOCK_KEY: clock},
        trace_path=str(path),
    )


# Kinds that show the loader understood the trace (a table with none of them was written in a
# schema it does not know).
_READ_KINDS = np.asarray(sorted({int(k) for k in KIND_OF_CATEGORY.values()} | set(UNTIMED_KINDS)), dtype=np.int8)


def _schema_notices(t: EventTable, meta: dict[str, Any], label: str, clock: dict[str, Any]) -> list[str]:
    """What the trace lacks that the analysis needs: any event it can read, and GPU events when
    the host launched GPU work (their count goes to ``clock["unrecorded_launches"]``)."""
    cats = meta.get(CATEGORIES) or {}
    unknown = sorted(c for c, k in cats.items() if k == "other" and c.lower() not in _KNOWN_OTHER)
    if len(t) and not isin(t.kind, _READ_KINDS).any():
        return [
            f"{label}: no event category stallscope reads (found: {', '.join(sorted(cats)) or 'none'}; read: "
            "cpu_op, user_annotation, cuda_runtime, kernel, gpu_memcpy, gpu_memset and their older spellings): "
            "nothing to analyse; re-export the trace with torch.profiler"
        ]
    if isin(t.kind, np.asarray(GPU_KINDS + UNTIMED_KINDS, dtype=np.int8)).any():
        return []
    launches = isin(t.name, t.name_ids_matching(is_work_call)) & (t.kind == Kind.RUNTIME)
    if not launches.any():
        return []
    why = f"categories not read: {', '.join(unknown)}" if unknown else "GPU activity was not recorded"
    clock["unrecorded_launches"] = int(launches.sum())
    return [
        f"{label}: {int(launches.sum())} GPU launches or copies on the host but no GPU events ({why}; profile "
        "with ProfilerActivity.CUDA): GPU figures are absent; the CPU side is analysed"
    ]


# Kineto categories that are read as Kind.OTHER on purpose (instant events, sync and range marks).
_KNOWN_OTHER = frozenset({"cpu_instant_event", "cuda_sync", "cuda_profiler_range", "external_correlation"})


def _rank_of(meta: dict[str, Any], path: Path) -> int | None:
    info = meta.get("distributedInfo")
    rank = info.get("rank") if isinstance(info, dict) else None
    if isinstance(rank, int) and not isinstance(rank, bool) and 0 <= rank < MAX_RANK:
        return rank
    m = _RANK_IN_NAME.search(path.name)
    return int(m.group(1)) if m and len(m.group(1)) <= 9 else None


def _device_name(meta: dict[str, Any]) -> str | None:
    props = meta.get("deviceProperties")
    if isinstance(props, list) and props and isinstance(props[0], dict) and props[0].get("name"):
        return str(props[0]["name"])
    return None


def _finish(ctx: AnalysisContext) -> AnalysisContext:
    """Number the ranks that have none, sort them, fill the device name and the breakdowns."""
    ranks = ctx.ranks
    used = {r.rank for r in ranks if r.rank >= 0}
    nxt = 0
    for r in ranks:
        if r.rank < 0:
            while nxt in used:
                nxt += 1
            r.rank = nxt
            used.add(nxt)
    ranks.sort(key=lambda r: r.rank)
    if ranks and not ctx.trace_meta:
        ctx.trace_meta = ranks[0].meta.get("trace", {})
    if ctx.device_name is None:
        for r in ranks:
            name = _device_name(r.meta.get("trace", {}))
            if name:
                ctx.device_name = name
                break
    if ranks and not ctx.has("gpu"):
        clocks = [r.meta.get(CLOCK_KEY) or {} for r in ranks]
        if not any(c.get("untimed_events") or c.get("unrecorded_launches") for c in clocks):
            # else a clock or schema notice of load_rank says why GPU figures are absent
            ctx.notices.append(
                "no GPU events in the trace (CPU-only run or CUDA activity not recorded): "
                "GPU figures are absent; the CPU side is analysed"
            )
    if not ctx.meta:
        _missing_ranks_notice(ctx)
    compute_breakdowns(ctx)
    return ctx


def _missing_ranks_notice(ctx: AnalysisContext) -> None:
    """Plain traces of a distributed job: say when the job had ranks whose traces are not here."""
    found = [(r.meta.get("trace") or {}).get("distributedInfo") for r in ctx.ranks]
    worlds = [info.get("world_size") for info in found if isinstance(info, dict)]
    sizes = {w for w in worlds if isinstance(w, int) and not isinstance(w, bool) and 0 < w < MAX_RANK}
    if len(sizes) != 1:
        return
    (world,) = sizes
    have = sorted(r.rank for r in ctx.ranks)
    if world > len(have):
        shown = ", ".join(map(str, have[:8])) + (" ..." if len(have) > 8 else "")
        which = f"the trace of rank {shown}" if len(have) == 1 else f"traces of {len(have)} ranks ({shown})"
        ctx.notices.append(
            f"{which} of the job's {world} ranks: cross-rank figures (stragglers, collectives) cover "
            f"{'this rank' if len(have) == 1 else 'these ranks'} only; pass a folder with every rank's trace for the whole job"
        )


# Sections of meta.yaml and rank.yaml that stallscope writes as mappings (docs/run-format.md). In a
# damaged file one that is anything else is left out (with a notice): the code that reads a
# section finds a mapping or nothing.
_MAPPING_SECTIONS = ("tool", "exit", "git", "window", "overhead", "per_rank", "options", "gpu", "clock")


def _mapping_sections(doc: dict[str, Any], where: str, notices: list[Any]) -> dict[str, Any]:
    bad = [k for k in _MAPPING_SECTIONS if doc.get(k) is not None and not isinstance(doc[k], dict)]
    if bad:
        notices.append(f"{where}: {', '.join(bad)} not a mapping (a damaged file): left out")
        doc = {k: v for k, v in doc.items() if k not in bad}
    if isinstance(doc.get("per_rank"), dict):
        doc["per_rank"] = {
            k: _mapping_sections(v, f"{where} per_rank", notices) if isinstance(v, dict) else {}
            for k, v in doc["per_rank"].items()
        }
    return doc


def _compacted_rank(path: Path, rank: int | None, notices: list[str]) -> RankData:
    """A rank beyond ``FULL_RANKS``: its stored compact form, else the trace loaded (not kept as
    a full table: a 1,024-rank job would store 1,024 of them) and compacted, its compact form
    stored for the next diagnose."""

    def build(own: list[str]) -> RankData:
        rd = load_rank(path, rank, own, load=load_trace)
        compact_rank(rd)
        return rd

    return tablestore.compact_rank_cached(path, rank, notices, build)


def _load_run_dir(root: Path) -> AnalysisContext:
    meta = runformat.read_meta(root)
    raw = meta.get("notices") or []
    notices: list[Any] = list(raw[:100]) if isinstance(raw, list) else [raw]
    meta = _mapping_sections(meta, runformat.META, notices)
    ranks: list[RankData] = []
    for r, folder in runformat.rank_dirs(root):
        trace = runformat.rank_trace(folder)
        if trace is None:
            traces = find_traces(folder)
            trace = traces[0] if traces else None
        if trace is not None:
            rd = _compacted_rank(trace, r, notices) if len(ranks) >= FULL_RANKS else load_rank(trace, r, notices)
        else:
            rd = RankData(rank=r, events=empty_table(), steps=[], trace_path=None)
            notices.append(f"rank {r}: no trace in {folder} (the window may not have been reached); telemetry only")
        rd.telemetry = _step_rows(_finite(runformat.read_csv_columns(folder / runformat.STEPS_CSV)))
        rd.nvml = _finite(runformat.read_csv_columns(folder / runformat.NVML_CSV))
        rd.host = _finite(runformat.read_csv_columns(folder / runformat.HOST_CSV))
        rank_info = runformat.read_rank_info(folder)
        if rank_info:
            rd.meta["rank"] = _mapping_sections(rank_info, f"rank {r} {runformat.RANK_INFO}", notices)
        if len(ranks) >= FULL_RANKS and not rd.meta.get("compacted"):
            compact_rank(rd)
        ranks.append(rd)
    if not ranks:
        raise ToolError(f"{root}: a run directory without rank folders; pass a trace file or re-run stallscope profile")
    ctx = AnalysisContext(ranks=ranks, source=str(root), meta=meta, device_name=_run_device(meta), notices=notices)
    patches = root / runformat.PATCHES
    if patches.is_file():
        ctx.meta = dict(meta)
        ctx.meta["patches"] = read_yaml(patches)
    return _finish(ctx)


def _finite(cols: dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    """Telemetry columns with the infinities of a damaged file as missing values (NaN)."""
    if not cols:
        return cols
    return {k: np.where(np.isinf(v), np.nan, v) if v.dtype == np.float64 else v for k, v in cols.items()}


def _step_rows(cols: dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    """steps.csv without the rows whose step number is not a number (a damaged file); a step
    column that holds no numbers at all is left out (the rows are then numbered in order)."""
    step = (cols or {}).get("step")
    if cols is None or step is None:
        return cols
    if step.dtype != np.float64:
        return {k: v for k, v in cols.items() if k != "step"}
    ok = np.isfinite(step) & (np.abs(step) < 2**31)
    return cols if ok.all() else {k: v[ok] for k, v in cols.items()}


def _run_device(meta: dict[str, Any]) -> str | None:
    """The GPU name the run's meta records for its first rank that has one."""
    per_rank = meta.get("per_rank") or {}
    if isinstance(per_rank, dict):
        for info in per_rank.values():
            gpu = (info or {}).get("gpu") if isinstance(info, dict) else None
            if isinstance(gpu, dict) and gpu.get("name"):
                return str(gpu["name"])
    return None


def _load_trace_folder(root: Path) -> AnalysisContext:
    traces = find_traces(root)
    if not traces:
        raise ToolError(
            f"{root}: no trace files (*.json, *.json.gz) in this folder; "
            "pass a run directory, a trace file or a folder of per-rank traces"
        )
    notices: list[str] = []
    traces = _pick_traces(traces, notices)
    ranks = []
    for i, p in enumerate(traces):
        ranks.append(_compacted_rank(p, None, notices) if i >= FULL_RANKS else load_rank(p, None, notices))
    if len(ranks) > FULL_RANKS:
        notices.append(
            f"{len(ranks)} ranks: per-rank analyzers looked at the first {FULL_RANKS}; the breakdown and the "
            "communication analysis cover every rank (docs/distributed.md, Scale)"
        )
    seen: dict[int, Path] = {}
    for rd in ranks:
        if rd.rank >= 0 and rd.rank in seen:
            raise ToolError(
                f"{root}: two traces claim rank {rd.rank} ({Path(seen[rd.rank]).name}, "
                f"{Path(rd.trace_path or '').name}); keep one trace per rank in the folder"
            )
        if rd.rank >= 0:
            seen[rd.rank] = Path(rd.trace_path or "")
    if len(ranks) > 1 and any(rd.rank < 0 for rd in ranks):
        notices.append(
            "some traces carry no rank (distributedInfo.rank or rank<N> in the name): ranks were numbered by file name"
        )
    return _finish(AnalysisContext(ranks=ranks, source=str(root), notices=notices))


def _pick_traces(paths: list[Path], notices: list[str]) -> list[Path]:
    """tensorboard_trace_handler writes one file per profiling cycle: keep the newest per process
    when files carry no rank (they are cycles of one process, not ranks)."""
    if len(paths) < 2 or any(_RANK_IN_NAME.search(p.name) for p in paths):
        return paths
    groups: dict[str, list[tuple[int, Path]]] = {}
    for p in paths:
        m = _TB_NAME.match(p.name)
        if not m:
            return paths
        groups.setdefault(m.group("who"), []).append((int(m.group("stamp")), p))
    picked = []
    for who, items in sorted(groups.items()):
        items.sort()
        picked.append(items[-1][1])
        if len(items) > 1:
            notices.append(
                f"{len(items)} traces of {who} (one per profiling cycle): the newest, {items[-1][1].name}, is analysed"
            )
    return picked
