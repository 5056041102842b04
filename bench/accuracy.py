#!/usr/bin/env python3
"""Accuracy scoreboard: run ``stallscope diagnose`` over the labelled trace corpus and score the reports.

Each label file (``bench/corpus/labels/<name>.yaml``, written from reading the trace before the tool ran
on it; format in ``bench/corpus/README.md``) names a trace or a folder of per-rank traces (``trace``,
relative to the parent of the label folder, or absolute) and a list of expectations (``expect``). This
script runs the real CLI on every trace in a subprocess (``python3 -m stallscope.cli diagnose TRACE
--format yaml -o REPORT``, with this checkout first on ``PYTHONPATH``), loads the report with
``yaml.safe_load`` and scores every expectation.

Expectation kinds (``kind`` plus the keys below; every expectation also carries a ``why``):

* ``top_category`` (``category``): the report's highest-impact finding has this category. The
  highest-impact finding is the first finding, in report order (the report ranks by estimated saving),
  among those of the highest severity present; findings at ``info`` do not count. No finding at ``low``
  or above fails.
* ``present`` (``category``; optional ``min_severity`` low|medium|high, default ``low``; ``where_rank``
  an int; ``evidence_contains`` a string or a list of strings): some finding of that category at or above
  that severity, whose ``where.ranks`` contains ``where_rank`` (when given), and whose text contains one of
  the substrings (case-insensitive; the text is the title, the advice, ``where`` and ``evidence``).
* ``absent`` (``category``; optional ``min_severity``, default ``medium``; optional ``evidence_contains``):
  no finding of that category at or above that severity (and, when ``evidence_contains`` is given, none
  whose text contains one of the substrings: "no memory-bound finding that names an NCCL kernel").
* ``notice`` (``any``: a list of substrings): some notice of the report contains one of them
  (case-insensitive).
* ``step_ms`` (``range: [lo, hi]``): ``summary.step_time_ms.median`` lies in [lo, hi] (ms).
* ``gpu_timeline`` (``value: true|false``): the report says it had a usable GPU timeline:
  ``summary.timeline == "gpu"`` (reports without ``timeline``: ``summary.gpu_events``).

Two checks need no label. ``silent_empty``: the report has no finding at ``low`` or above, and either
(a) it has no notice and its breakdown leaves more than half of the step unexplained
(``compute_pct < 50`` or no breakdown), or (b) it fell back to a CPU timeline (``timeline: cpu`` or
``gpu_events: false``) and no notice mentions the GPU, or (c) it found no step markers (``steps_from``
``none`` / ``whole-trace``, or 0 steps) and no notice mentions steps. ``out_of_bounds``: a step time
(median or any sample) longer than the trace's span (per rank the larger of the profiler's own window,
the ``Trace`` event, and the extent of all complete events other than the ``ProfilerStep#N`` markers;
the longest rank of a folder; 1 % tolerance; not checked for run directories, whose samples come from
telemetry), a percentage outside [0, 100] (``breakdown_pct`` of the summary and of
every rank, findings' ``impact.step_time_pct`` and ``*_pct`` evidence, ``top_kernels[].pct``; relative
changes such as slowdowns are left out), a negative duration in ``step_time_ms`` or
``breakdown_ms_per_step``, or the findings' ``est_saving_ms_per_step`` summing to more than the median step.

Writes ``bench/results/accuracy.yaml`` (atomically) with the per-trace outcomes, the disagreements and
the totals. Exit 0 once written (the scoreboard reports, it does not gate); 2 on a bad label or bad use.

    python3 bench/accuracy.py [--labels DIR ...] [--only NAME ...] [--jobs N] [--out FILE] [--timeout S]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import gzip
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for the sibling bench package (bench.recorded); stallscope is installed
from bench.recorded import recorded_argv, recorded_path  # noqa: E402

CORPUS = ROOT / "bench" / "corpus"
DEFAULT_LABEL_DIRS = (CORPUS / "labels", CORPUS / "h200" / "labels", CORPUS / "cpu" / "labels")
DEFAULT_OUT = ROOT / "bench" / "results" / "accuracy.yaml"
SEVERITY = {"info": 0, "low": 1, "medium": 2, "high": 3}
# The finding categories of stallscope.analyzers.base.CATEGORIES, repeated so that this script never imports
# stallscope (the diagnosis runs in a subprocess, from this checkout).
CATEGORIES = (
    "memory-bound",
    "input-pipeline",
    "communication",
    "host-bound",
    "synchronization",
    "memory-copy",
    "precision",
    "gpu-health",
    "memory-capacity",
    "cpu-metric",
    "attention",
    "compile",
)
KINDS = {
    "top_category": {"category"},
    "present": {"category", "min_severity", "where_rank", "evidence_contains"},
    "absent": {"category", "min_severity", "evidence_contains"},
    "notice": {"any"},
    "step_ms": {"range"},
    "gpu_timeline": {"value"},
}
# Keys of relative changes, which may legitimately exceed 100 % or be negative.
RELATIVE_PCT = ("slowdown", "overhead", "added", "change", "delta", "speedup", "growth", "ratio")
STEP_MARKER = re.compile(r"^ProfilerStep#\d+$")
TOLERANCE = 1.01  # 1 %: reports round to 3-4 decimals and spans are read from the same µs timestamps.


class LabelError(Exception):
    """A label file that cannot be scored (one line: which file, what is wrong)."""


@dataclass
class Label:
    """One corpus entry: its trace, where it comes from and what a reader expects of the report."""

    name: str
    trace: Path
    file: Path
    group: str
    expect: list[dict[str, Any]]
    multi_rank: bool = field(init=False)

    def __post_init__(self) -> None:
        # a folder of per-rank traces, or a run directory with more than one rank folder
        if not self.trace.is_dir():
            self.multi_rank = False
        elif (self.trace / "meta.yaml").exists():
            self.multi_rank = sum(1 for p in self.trace.glob("rank[0-9]*") if p.is_dir()) > 1
        else:
            self.multi_rank = True


def load_labels(dirs: list[Path], only: set[str]) -> list[Label]:
    """Every label in ``dirs`` (sorted by name), or those named in ``only``; raises LabelError."""
    labels: dict[str, Label] = {}
    for folder in (d.resolve() for d in dirs):
        for path in sorted(folder.glob("*.yaml")):
            try:
                doc = yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                raise LabelError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
            if not isinstance(doc, dict) or not {"name", "trace", "expect"} <= set(doc):
                raise LabelError(f"{path}: a label needs name, trace and expect")
            name = str(doc["name"])
            if name in labels:
                raise LabelError(f"{path}: the name {name!r} is also used by {labels[name].file}")
            expect = doc["expect"] or []
            if not isinstance(expect, list) or not all(isinstance(e, dict) and "kind" in e for e in expect):
                raise LabelError(f"{path}: expect must be a list of mappings, each with a kind")
            for i, exp in enumerate(expect):
                problem = _malformed(exp)
                if problem:
                    raise LabelError(f"{path}: expect[{i}] ({exp['kind']}): {problem}")
            trace = Path(str(doc["trace"]))
            trace = trace if trace.is_absolute() else (folder.parent / trace)
            if not trace.exists():
                raise LabelError(f"{path}: trace {trace} does not exist")
            group = str(doc.get("group") or next((g for g in ("h200", "cpu") if g in folder.parts), "public"))
            labels[name] = Label(name, trace, path, group, expect)
    missing = only - set(labels)
    if missing:
        raise LabelError(f"--only: no label named {', '.join(sorted(missing))}")
    return [lb for n, lb in sorted(labels.items()) if not only or n in only]


def _malformed(exp: dict[str, Any]) -> str:
    """What is wrong with one expectation of a known kind ("" when nothing); unknown kinds are scored as failed."""
    kind = exp["kind"]
    if kind not in KINDS:
        return ""
    if kind in ("top_category", "present", "absent") and exp.get("category") not in CATEGORIES:
        return f"category must be one of {', '.join(CATEGORIES)}"
    if "min_severity" in exp and exp["min_severity"] not in SEVERITY:
        return "min_severity must be info, low, medium or high"
    if kind == "notice" and not (isinstance(exp.get("any"), list) and exp["any"]):
        return "any must be a non-empty list of substrings"
    rng = exp.get("range")
    if kind == "step_ms" and not (
        isinstance(rng, list) and len(rng) == 2 and all(isinstance(v, (int, float)) for v in rng) and rng[0] <= rng[1]
    ):
        return "range must be [lo, hi] in ms"
    if kind == "gpu_timeline" and not isinstance(exp.get("value"), bool):
        return "value must be true or false"
    if "where_rank" in exp and not isinstance(exp["where_rank"], int):
        return "where_rank must be an integer"
    return ""


def trace_span_ms(target: Path) -> float | None:
    """The span a step must fit in, in ms: per rank the larger of the profiler's own window (``Trace`` events)
    and the extent of every complete event other than the ``ProfilerStep#N`` markers; the longest rank's.
    None for a run directory (its step samples come from telemetry, outside the trace)."""
    if target.is_dir():
        if (target / "meta.yaml").exists():
            return None
        files = sorted(p for p in target.iterdir() if p.name.endswith((".json", ".json.gz")))
    else:
        files = [target]
    spans = []
    for path in files:
        opener = gzip.open if path.name.endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            continue
        events = doc.get("traceEvents", []) if isinstance(doc, dict) else doc
        lo, hi, window = float("inf"), float("-inf"), 0.0
        for ev in events:
            ts = ev.get("ts") if isinstance(ev, dict) and ev.get("ph") == "X" else None
            if not isinstance(ts, (int, float)):
                continue
            dur = ev.get("dur")
            end = float(ts) + (float(dur) if isinstance(dur, (int, float)) else 0.0)
            if str(ev.get("cat", "")).lower() == "trace":
                window = max(window, end - float(ts))
            elif not STEP_MARKER.match(str(ev.get("name", ""))):
                lo, hi = min(lo, float(ts)), max(hi, end)
        span = max(window, hi - lo if hi > lo else 0.0)
        if span > 0:
            spans.append(span / 1000.0)
    return max(spans) if spans else None


def _finding_text(f: dict[str, Any]) -> str:
    parts = [
        str(f.get("title", "")),
        str(f.get("advice", "")),
        json.dumps(f.get("where", {})),
        json.dumps(f.get("evidence", {})),
    ]
    return " ".join(parts).lower()


def _substrings(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v).lower() for v in (value if isinstance(value, list) else [value])]


def _severity(f: dict[str, Any]) -> int:
    return SEVERITY.get(str(f.get("severity", "info")), 0)


def _brief(f: dict[str, Any]) -> str:
    pct = (f.get("impact") or {}).get("step_time_pct")
    return f"{f.get('category')}/{f.get('severity')} ({pct} %): {f.get('title', '')}"


def score(exp: dict[str, Any], report: dict[str, Any]) -> tuple[bool, str]:
    """Whether one expectation holds for a report, and why not (or what was seen) in one line."""
    kind = exp.get("kind")
    if kind not in KINDS:
        return False, f"unknown expectation kind {kind!r} (known: {', '.join(sorted(KINDS))})"
    findings = [f for f in report.get("findings") or [] if isinstance(f, dict)]
    summary = report.get("summary") or {}
    cat = exp.get("category")
    if kind == "top_category":
        ranked = [f for f in findings if _severity(f) >= 1]
        if not ranked:
            return False, "no finding at severity low or above"
        best = max(_severity(f) for f in ranked)
        top = next(f for f in ranked if _severity(f) == best)
        return top.get("category") == cat, f"top finding: {_brief(top)}"
    if kind in ("present", "absent"):
        floor = SEVERITY.get(str(exp.get("min_severity", "low" if kind == "present" else "medium")))
        if floor is None:
            return False, f"unknown min_severity {exp.get('min_severity')!r}"
        subs = _substrings(exp.get("evidence_contains"))
        hits = [f for f in findings if f.get("category") == cat and _severity(f) >= floor]
        if subs:
            hits = [f for f in hits if any(s in _finding_text(f) for s in subs)]
        if kind == "present" and "where_rank" in exp:
            hits = [f for f in hits if exp["where_rank"] in ((f.get("where") or {}).get("ranks") or [])]
        if kind == "present":
            same = [_brief(f) for f in findings if f.get("category") == cat]
            return bool(hits), (f"found: {_brief(hits[0])}" if hits else f"not found; {cat} findings: {same or 'none'}")
        return not hits, ("none reported" if not hits else f"reported: {'; '.join(_brief(f) for f in hits)}")
    if kind == "notice":
        notices = [str(n) for n in report.get("notices") or []]
        subs = _substrings(exp.get("any"))
        hit = next((n for n in notices if any(s in n.lower() for s in subs)), None)
        return hit is not None, (
            f"notice: {hit[:160]}" if hit else f"{len(notices)} notices, none matches: {[n[:80] for n in notices[:4]]}"
        )
    if kind == "step_ms":
        lo, hi = exp.get("range") or [None, None]
        med = (summary.get("step_time_ms") or {}).get("median")
        if not isinstance(med, (int, float)):
            return False, "the report has no median step time"
        return float(lo) <= float(med) <= float(hi), f"median step {med} ms, expected [{lo}, {hi}]"
    gpu = summary.get("timeline") == "gpu" if "timeline" in summary else bool(summary.get("gpu_events"))
    seen = f"timeline {summary.get('timeline')!r}, gpu_events {summary.get('gpu_events')!r}"
    return gpu == bool(exp.get("value")), seen


def silent_empty(report: dict[str, Any]) -> tuple[bool, str]:
    """Whether a report found nothing and says nothing about why (definition in the module docstring)."""
    if any(_severity(f) >= 1 for f in report.get("findings") or [] if isinstance(f, dict)):
        return False, ""
    notices = " ".join(str(n) for n in report.get("notices") or []).lower()
    summary = report.get("summary") or {}
    compute = (summary.get("breakdown_pct") or {}).get("compute_pct")
    if not notices and not (isinstance(compute, (int, float)) and compute >= 50):
        return True, f"no finding, no notice, compute {compute} % of the step"
    if (summary.get("timeline") == "cpu" or summary.get("gpu_events") is False) and "gpu" not in notices:
        return True, "no finding, CPU timeline and no notice about the GPU"
    steps_from = (report.get("source") or {}).get("steps_from")
    if (steps_from in ("none", "whole-trace") or summary.get("steps") == 0) and "step" not in notices:
        return True, f"no finding, steps from {steps_from!r} and no notice about steps"
    return False, ""


def _pct_values(node: Any, path: str) -> list[tuple[str, float]]:
    """(path, value) of every percentage under ``node`` (keys ``pct`` or ``*_pct``), relative changes excluded."""
    out: list[tuple[str, float]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            key = str(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if (key == "pct" or key.endswith("_pct") or "_pct_" in key) and not any(r in key for r in RELATIVE_PCT):
                    out.append((f"{path}.{key}", float(v)))
            else:
                out.extend(_pct_values(v, f"{path}.{key}"))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_pct_values(v, f"{path}[{i}]"))
    return out


def out_of_bounds(report: dict[str, Any], span_ms: float | None) -> list[str]:
    """Figures outside physical bounds (definition in the module docstring), one line each."""
    bad: list[str] = []
    summary = report.get("summary") or {}
    steps = summary.get("step_time_ms") or {}
    med = steps.get("median")
    samples = [s for s in steps.get("samples") or [] if isinstance(s, (int, float))]
    if span_ms is not None:
        longest = max([*samples, med] if isinstance(med, (int, float)) else samples, default=None)
        if longest is not None and longest > span_ms * TOLERANCE:
            bad.append(f"step time {longest} ms is longer than the trace span {span_ms:.3f} ms")
    for key in ("step_time_ms", "breakdown_ms_per_step"):
        for k, v in (summary.get(key) or {}).items():
            if isinstance(v, (int, float)) and v < 0:
                bad.append(f"summary.{key}.{k} = {v} is negative")
    sources = {
        "summary.breakdown_pct": summary.get("breakdown_pct"),
        "per_rank": [r.get("breakdown_pct") for r in report.get("per_rank") or [] if isinstance(r, dict)],
        "findings": [
            {"impact": f.get("impact"), "evidence": f.get("evidence")}
            for f in report.get("findings") or []
            if isinstance(f, dict)
        ],
        "top_kernels": report.get("top_kernels"),
    }
    for where, node in sources.items():
        for path, v in _pct_values(node, where):
            if v < -0.01 or v > 100.01:
                bad.append(f"{path} = {v} is outside [0, 100]")
    savings = [
        ((f.get("impact") or {}).get("est_saving_ms_per_step") or 0.0)
        for f in report.get("findings") or []
        if isinstance(f, dict)
    ]
    total = sum(float(s) for s in savings if isinstance(s, (int, float)))
    if isinstance(med, (int, float)) and total > med * TOLERANCE + 1e-6:
        bad.append(f"estimated savings sum to {total:.3f} ms per step, more than the {med} ms median step")
    return bad


def _python_path_shim(workdir: Path) -> str:
    """A folder where ``stallscope`` is this checkout, first on PYTHONPATH: the scoreboard scores this tree."""
    shim = workdir / "pkg"
    shim.mkdir()
    (shim / "stallscope").symlink_to(ROOT, target_is_directory=True)
    rest = os.environ.get("PYTHONPATH")
    return str(shim) + (os.pathsep + rest if rest else "")


def run_one(label: Label, workdir: Path, pythonpath: str, timeout: float) -> dict[str, Any]:
    """Diagnose one trace with the CLI and score its report."""
    out = workdir / f"{label.name}.report.yaml"
    cmd = [sys.executable, "-m", "stallscope.cli", "diagnose", str(label.trace), "--format", "yaml", "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": pythonpath}
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(workdir))
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        rc, err = 124, f"timed out after {timeout:.0f} s"
    seconds = round(time.monotonic() - t0, 2)
    report: dict[str, Any] | None = None
    if rc == 0:
        try:
            loaded = yaml.safe_load(out.read_text())
            report = loaded if isinstance(loaded, dict) else None
        except (OSError, yaml.YAMLError) as exc:
            err = f"report unreadable: {exc}"
    row: dict[str, Any] = {
        "name": label.name,
        "group": label.group,
        "multi_rank": label.multi_rank,
        "path": _rel(label.trace),
        "label": _rel(label.file),
        "exit_code": rc,
        "seconds": seconds,
    }
    exps = []
    for exp in label.expect:
        spec = {k: v for k, v in exp.items() if k != "why"}
        met, detail = score(exp, report) if report is not None else (False, f"no report (exit {rc})")
        exps.append({**spec, "met": met, "detail": detail})
    row["expectations"] = exps
    if report is None:
        row.update(silent_empty=False, out_of_bounds=False, error=(err.strip().splitlines() or [""])[-1][:300])
        return row
    silent, why = silent_empty(report)
    bounds = out_of_bounds(report, trace_span_ms(label.trace))
    summary = report.get("summary") or {}
    row.update(
        silent_empty=silent,
        out_of_bounds=bool(bounds),
        steps=summary.get("steps"),
        median_step_ms=(summary.get("step_time_ms") or {}).get("median"),
        timeline=summary.get("timeline"),
        findings=[_brief(f) for f in (report.get("findings") or [])[:6] if isinstance(f, dict)],
        notices=[str(n)[:200] for n in report.get("notices") or []],
    )
    if silent:
        row["silent_empty_reason"] = why
    if bounds:
        row["out_of_bounds_detail"] = bounds
    return row


def _rel(path: Path) -> str:
    """A path as the results record it: relative to the repository, or without machine folders (bench/recorded.py)."""
    return recorded_path(path.resolve())


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over all traces and by source (public / h200 / cpu / multi_rank)."""

    def count(sel: list[dict[str, Any]]) -> dict[str, Any]:
        exps = [e for r in sel for e in r["expectations"]]
        met = sum(1 for e in exps if e["met"])
        return {
            "traces": len(sel),
            "expectations": len(exps),
            "expectations_met": met,
            "expectations_met_pct": round(100.0 * met / len(exps), 1) if exps else None,
            "silent_empty": sum(1 for r in sel if r["silent_empty"]),
            "out_of_bounds": sum(1 for r in sel if r["out_of_bounds"]),
            "failed_runs": sum(1 for r in sel if r["exit_code"] != 0),
        }

    out = count(rows)
    out["by_source"] = {
        "public": count([r for r in rows if r["group"] == "public"]),
        "h200": count([r for r in rows if r["group"] == "h200"]),
        "cpu": count([r for r in rows if r["group"] == "cpu"]),
        "multi_rank": count([r for r in rows if r["multi_rank"]]),
    }
    return out


def disagreements(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every failed expectation, silent empty report, out-of-bounds figure and failed run, one entry each."""
    out: list[dict[str, Any]] = []
    for r in rows:
        if r["exit_code"] != 0:
            out.append({"trace": r["name"], "kind": "exit", "detail": f"exit {r['exit_code']}: {r.get('error', '')}"})
        for e in r["expectations"]:
            if not e["met"]:
                spec = {k: v for k, v in e.items() if k not in ("met", "detail")}
                out.append({"trace": r["name"], "kind": "expectation", "expectation": spec, "detail": e["detail"]})
        if r["silent_empty"]:
            out.append({"trace": r["name"], "kind": "silent_empty", "detail": r.get("silent_empty_reason", "")})
        for line in r.get("out_of_bounds_detail", []):
            out.append({"trace": r["name"], "kind": "out_of_bounds", "detail": line})
    return out


def write_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Write YAML to a temporary file in the same folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False, width=120, allow_unicode=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--labels", type=Path, action="append", default=[],
                    help="label folder to score (repeatable); default: bench/corpus/labels, h200/labels and cpu/labels")  # fmt: skip
    ap.add_argument("--only", action="append", default=[], help="score only this label name (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, help="diagnoses run at once (default 1)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"result file (default {_rel(DEFAULT_OUT)})")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per diagnose (default 600)")
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.timeout <= 0:
        print("accuracy: --jobs must be >= 1 and --timeout > 0", file=sys.stderr)
        return 2
    dirs = args.labels or [d for d in DEFAULT_LABEL_DIRS if d.is_dir()]
    for d in dirs:
        if not d.is_dir():
            print(f"accuracy: label folder {d} does not exist; give a folder of <name>.yaml labels", file=sys.stderr)
            return 2
    try:
        labels = load_labels(dirs, set(args.only))
    except LabelError as exc:
        print(f"accuracy: {exc}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="stallscope-accuracy-"))
    rows: list[dict[str, Any]] = []
    try:
        pythonpath = _python_path_shim(workdir)
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(run_one, lb, workdir, pythonpath, args.timeout): lb for lb in labels}
            for i, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                row = fut.result()
                rows.append(row)
                met = sum(1 for e in row["expectations"] if e["met"])
                flags = "".join(
                    [" SILENT-EMPTY" if row["silent_empty"] else "", " OUT-OF-BOUNDS" if row["out_of_bounds"] else ""]
                )
                print(f"[{i}/{len(labels)}] {row['name']}: exit {row['exit_code']}, {met}/{len(row['expectations'])} met,"
                      f" {row['seconds']:.1f} s{flags}", file=sys.stderr)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows.sort(key=lambda r: r["name"])
    doc: dict[str, Any] = {
        "kind": "stallscope-accuracy",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": platform.node(),
        "python": platform.python_version(),
        "stallscope": {
            "commit": _git("rev-parse", "HEAD"),
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        },
        "command": recorded_argv([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])], args.out.parent),
        "label_dirs": [_rel(d) for d in dirs],
        "totals": totals(rows),
        "disagreements": disagreements(rows),
        "results": rows,
    }
    if rows:
        doc["seconds_median"] = statistics.median(r["seconds"] for r in rows)
    write_atomic(args.out, doc)
    t = doc["totals"]
    print(f"accuracy: {t['traces']} traces, {t['expectations_met']}/{t['expectations']} expectations met"
          f" ({t['expectations_met_pct']} %), silent empty {t['silent_empty']}, out of bounds {t['out_of_bounds']}"
          f" -> {args.out}", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
