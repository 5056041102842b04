"""Helpers of ``bench/diagnose_speed.py``: one measured subprocess, the big-trace builder, the HTA
cross-check and the small bits of bookkeeping (trace figures, versions, medians)."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, cast

ROOT = Path(__file__).resolve().parents[1]

# HTA's own entry points, as its README uses them: load every rank's trace of a folder, then the
# per-rank idle / compute / non-compute breakdown. The output is kept for the cross-check.
HTA_SCRIPT = r"""
import json, logging, sys
logging.disable(logging.WARNING)
from hta.trace_analysis import TraceAnalysis
a = TraceAnalysis(trace_dir=sys.argv[1])
df = a.get_temporal_breakdown(visualize=False)
json.dump(df.to_dict(orient="records"), open(sys.argv[2], "w"))
"""

Run = tuple[float, float, int, float, float]  # one measure(): wall s, PSS MiB, exit code, RSS MiB, CPU s

HTA_VERSIONS = (
    "import json; from importlib.metadata import version as v; "
    "print(json.dumps({p: v(p) for p in ('HolisticTraceAnalysis', 'pandas', 'numpy')}))"
)


def measure(cmd: list[str], env: dict[str, str] | None = None, memory: bool = True) -> Run:
    """(wall seconds, peak PSS MiB, exit code, peak RSS MiB, CPU seconds) of one subprocess;
    without ``memory`` the two memory figures are NaN and nothing runs beside the command (the
    sampler reads each process's smaps every 20 ms: on a 2-core machine that costs the measured
    command time, so timed runs and memory runs are separate runs).

    CPU seconds (user + system, the process and its waited-for children, from ``wait4``) are
    reported next to wall time because this machine is shared: wall time swings with other
    people's load, CPU time much less.

    PSS (proportional set size) summed over the process and all its children, sampled every
    20 ms, is the headline memory: forked workers share their parent's pages copy-on-write, and
    PSS counts a shared page once in total, where summed RSS would count it in every process. The
    RSS figure is the largest ``VmHWM`` (the kernel's own peak RSS of one address space) seen in
    any process of the tree. Not ``wait4``'s ru_maxrss: Linux carries the forking process's peak
    across exec into it, so it would report this benchmark's own RSS for every small command."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, hwm = [0], [0]
    done = threading.Event()

    def sample() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not done.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_full_info().pss
                        hwm[0] = max(hwm[0], _vm_hwm(p.pid))
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            peak[0] = max(peak[0], total)
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    if memory:
        sampler.start()
    else:
        peak[0] = hwm[0] = -1
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    if memory:
        sampler.join()
    if proc.stderr:
        proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(f"  command failed ({proc.returncode}): {' '.join(cmd[:4])} ...\n{err[-2000:]}", file=sys.stderr)
    pss, rss = (peak[0] / 2**20, hwm[0] / 2**20) if memory else (math.nan, math.nan)
    return wall, pss, proc.returncode, rss, usage.ru_utime + usage.ru_stime


def _vm_hwm(pid: int) -> int:
    """Peak resident bytes of one process (``VmHWM`` in /proc/PID/status); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def wall_only(cmd: list[str]) -> float:
    """Wall seconds of one subprocess, nothing sampled beside it (for start-up, where a sampler
    thread in this process would be a visible share of a ~0.1 s run). Terminal-size variables are
    dropped, as ``bench/startup.py`` does, so help is rendered the same way every time."""
    drop = ("COLUMNS", "NO_COLOR", "FORCE_COLOR", "TERMINAL_WIDTH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
    return time.perf_counter() - t0


def spread(xs: Sequence[float], digits: int = 3) -> dict[str, float]:
    """Median, min and max of ``xs``, rounded."""
    return {k: round(f(xs), digits) for k, f in (("median", statistics.median), ("min", min), ("max", max))}


def summary(runs: Sequence[Run], sampled: Sequence[Run] = ()) -> dict[str, Any]:
    """The figures of several :func:`measure` results: spreads of wall and CPU time of ``runs``,
    of PSS and RSS of ``sampled`` (the memory runs; ``runs`` themselves when none), exit codes."""
    mem = [r for r in (sampled or runs) if not math.isnan(r[1])]
    out: dict[str, Any] = {"wall_s": spread([r[0] for r in runs])}
    if mem:
        out["peak_pss_mib"] = spread([r[1] for r in mem], 1)
        out["peak_rss_largest_process_mib"] = spread([r[3] for r in mem], 1)
    return out | {
        "cpu_s": spread([r[4] for r in runs]),
        "exit_codes": sorted({r[2] for r in [*runs, *sampled]}),
        "runs": {"timed": len(runs), "memory": len(mem)},
    }


def open_trace(path: Path) -> IO[bytes]:
    """The trace's bytes, gunzipped when the file is gzip (by its magic bytes, not its name)."""
    with path.open("rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return cast(IO[bytes], gzip.open(path, "rb")) if gz else path.open("rb")


def trace_figures(path: Path) -> dict[str, Any]:
    """Events, MB of JSON, gzipped MB and ``ProfilerStep`` ranges (CPU side) of a trace file."""
    import orjson

    with open_trace(path) as fh:
        raw = fh.read()
    events = orjson.loads(raw)["traceEvents"]
    steps = sum(
        1 for e in events if str(e.get("name", "")).startswith("ProfilerStep#") and e.get("cat") == "user_annotation"
    )
    return {
        "events": len(events),
        "json_mb": round(len(raw) / 1e6, 2),
        "file_mb": round(path.stat().st_size / 1e6, 2),
        "steps": steps,
    }


def build_big_trace(src: Path, dest: Path, json_mb: float) -> dict[str, Any]:
    """Write ``dest`` (gzip when its name ends in ``.gz``): the source trace's timed events repeated
    as many times as needed for at least ``json_mb`` MB of (compact) JSON, copy k shifted by k
    times the source's span (+1 us), ``ProfilerStep#N`` renumbered to follow on
    (#11-#13, #14-#16, ...) and correlation, External id and flow ids offset by k times one more
    than the largest id of the source, so every copy links only to itself. Metadata events and
    the top-level fields are written once. Deterministic: the same source and size give the same
    bytes (the gzip header's time is 0); the SHA-256 of the JSON is returned to show it."""
    import orjson

    with open_trace(src) as fh:
        doc = orjson.loads(fh.read())
    events = doc.pop("traceEvents")
    timed = [e for e in events if e.get("ph") != "M" and isinstance(e.get("ts"), (int, float))]
    meta = [e for e in events if not (e.get("ph") != "M" and isinstance(e.get("ts"), (int, float)))]
    span = max(e["ts"] + e.get("dur", 0) for e in timed) - min(e["ts"] for e in timed) + 1.0
    base_ts = [e["ts"] for e in timed]
    steps = [
        (i, int(e["name"].split("#")[1]))
        for i, e in enumerate(timed)
        if str(e.get("name", "")).startswith("ProfilerStep#")
    ]
    step_stride = (max(s for _, s in steps) - min(s for _, s in steps) + 1) if steps else 0
    links: list[tuple[dict[str, Any], str, int]] = []  # (dict, key, original id)
    for e in timed:
        args = e.get("args")
        for key in ("correlation", "External id"):
            if isinstance(args, dict) and isinstance(args.get(key), int):
                links.append((args, key, args[key]))
        if e.get("ph") in ("s", "f", "t") and isinstance(e.get("id"), int):
            links.append((e, "id", e["id"]))
    id_stride = max((v for _, _, v in links), default=0) + 1
    copies = max(1, math.ceil(json_mb * 1e6 / len(orjson.dumps(timed))))
    sha = hashlib.sha256()
    raw_bytes = 0
    opener = (
        (lambda p: gzip.GzipFile(p, "wb", compresslevel=6, mtime=0))
        if dest.name.endswith(".gz")
        else (lambda p: open(p, "wb"))
    )  # noqa: E731
    with opener(dest) as out:

        def put(b: bytes) -> None:
            nonlocal raw_bytes
            out.write(b)
            sha.update(b)
            raw_bytes += len(b)

        put(orjson.dumps(doc)[:-1] + (b"," if doc else b"") + b'"traceEvents":[')
        put(orjson.dumps(meta)[1:-1] + (b"," if meta else b""))
        for k in range(copies):
            for e, t in zip(timed, base_ts, strict=True):
                e["ts"] = round(t + k * span, 3)
            for i, s in steps:
                timed[i]["name"] = f"ProfilerStep#{s + k * step_stride}"
            for holder, key, v in links:
                holder[key] = v + k * id_stride
            put((b"," if k else b"") + orjson.dumps(timed)[1:-1])
        put(b"]}")
    return {
        "copies": copies,
        "events": copies * len(timed) + len(meta),
        "steps": copies * len({s for _, s in steps}),
        "json_mb": round(raw_bytes / 1e6, 2),
        "file_mb": round(dest.stat().st_size / 1e6, 2),
        "json_sha256": sha.hexdigest(),
    }


def crosscheck(trace: Path, hta_json: Path) -> dict[str, float] | None:
    """Our idle / compute / non-compute GPU time (``hta_temporal``) against HTA's output, as % of
    HTA's span; None when HTA wrote nothing or we find no kernels."""
    from stallscope.analyzers.breakdown import hta_temporal
    from stallscope.analyzers.context import load_context

    if not hta_json.exists():
        return None
    theirs = json.loads(hta_json.read_text())[0]
    ours = hta_temporal(load_context(trace).ranks[0])
    if ours is None:
        return None
    span = float(theirs["kernel_time(us)"])
    diff = {
        k: abs(ours[f"{k}_us"] - float(theirs[f"{k}_time(us)"])) / span * 100.0
        for k in ("idle", "compute", "non_compute")
    }
    return {f"{k}_diff_pct_of_span": round(v, 3) for k, v in diff.items()} | {
        "span_us_hta": span,
        "span_us_ours": round(ours["kernel_us"], 3),
    }


def hta_versions(hta_python: str) -> dict[str, str] | None:
    """Versions of HTA, pandas and numpy in the interpreter that runs HTA; None when HTA is missing."""
    res = subprocess.run([hta_python, "-c", HTA_VERSIONS], capture_output=True, text=True)
    return json.loads(res.stdout) if res.returncode == 0 else None
