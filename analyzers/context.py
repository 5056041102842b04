"""Build the :class:`AnalysisContext` of a run directory, a trace file or a folder of traces.

:func:`load_context(target)` accepts

* a run directory written by ``stallscope profile`` (its layout belongs to
  :mod:`stallscope.profiler.runformat`: the run's meta, one folder per rank with the window's
  trace and the per-step, host and NVML tables),
* a single trace from any torch.profiler user (``*.json``, ``*.json.gz``),
* a folder of per-rank traces (HTA's layout; the rank comes from ``distributedInfo.rank`` in the
  trace, else from ``rank<N>`` in the file name).

Each trace is loaded (:mod:`analyzers.loader`), its steps found (:mod:`analyzers.steps`), ranks
beyond the first ``FULL_RANKS`` compacted (:mod:`analyzers.compact`) and every rank's breakdown
computed (:mod:`analyzers.breakdown`). No torch import.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from stallscope.analyzers.breakdown import compute_breakdowns
from stallscope.analyzers.compact import FULL_RANKS, compact_rank
from stallscope.analyzers.loader import EVENT_COUNTS, find_traces, load_trace
from stallscope.analyzers.model import AnalysisContext, RankData, empty_table
from stallscope.analyzers.steps import assign_steps, find_steps
from stallscope.analyzers.tracefile import TEXT_REPLACED
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


def load_rank(path: Path, rank: int | None, notices: list[str]) -> RankData:
    """One trace as a rank: events, steps (a step notice goes to ``notices``) and its rank number
    (``rank``, else the trace's ``distributedInfo.rank`` or ``rank<N>`` in the name, else -1)."""
    table, meta = load_trace(path)
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
    steps, notice = find_steps(table)
    if notice and notice not in notices:
        notices.append(notice)
    assign_steps(table, steps)
    r = _rank_of(meta, path) if rank is None else rank
    return RankData(
        rank=r if r is not None else -1, events=table, steps=steps, meta={"trace": meta}, trace_path=str(path)
    )


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
        ctx.notices.append(
            "no GPU events in the trace (CPU-only run or CUDA activity not recorded): "
            "GPU figures are absent; the CPU side is analysed"
        )
    compute_breakdowns(ctx)
    return ctx


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
            rd = load_rank(trace, r, notices)
        else:
            rd = RankData(rank=r, events=empty_table(), steps=[], trace_path=None)
            notices.append(f"rank {r}: no trace in {folder} (the window may not have been reached); telemetry only")
        rd.telemetry = _step_rows(_finite(runformat.read_csv_columns(folder / runformat.STEPS_CSV)))
        rd.nvml = _finite(runformat.read_csv_columns(folder / runformat.NVML_CSV))
        rd.host = _finite(runformat.read_csv_columns(folder / runformat.HOST_CSV))
        rank_info = runformat.read_rank_info(folder)
        if rank_info:
            rd.meta["rank"] = _mapping_sections(rank_info, f"rank {r} {runformat.RANK_INFO}", notices)
        if len(ranks) >= FULL_RANKS:
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
        rd = load_rank(p, None, notices)
        if i >= FULL_RANKS:
            compact_rank(rd)
        ranks.append(rd)
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
