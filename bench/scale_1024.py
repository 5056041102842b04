"""`stallscope diagnose` of a 1,024-rank run directory whose ranks wrote their compact tables.

    python bench/scale_1024.py [--ranks 64 1024] [--out bench/results/distributed-scale-1024.yaml]

The run directory is built on this machine from the real 2-rank DDP traces recorded on two H200s
(``tests/fixtures/gpu/ddp_h200/healthy``): rank r is a copy of rank ``r % 2`` with

* its own clock offset (every event shifted by r x 13.7 us: ranks' clocks never agree) and its
  own kernel durations (x U(0.97, 1.03), seeded by r);
* collective kernels that last the **transfer time** (see ``build_run``): in each of the pair's
  all-reduces the rank with the shorter kernel arrived last and waited for nobody, so its
  duration is the transfer; stretched by 2(N-1)/N (a ring all-reduce moves 2(N-1)/N times the
  buffer through each link), so that the N-rank group's bus bandwidth is the measured pair's;
* a planted **straggler** (rank N/3): its compute kernels stretched x1.5. Its peers wait for
  it: each of their collective kernels is longer by the extra compute the straggler did since
  its previous collective (it joins that much later), the straggler's own are not;
* a planted **slow link**: one link of the group at half its rate (a port trained at 200 of
  400 Gb/s, PCIe x8 for x16). Every rank leaves an all-reduce together (each needs every
  other rank's data), so the slowest link paces the whole ring: **every** rank's transfer time
  doubles, whichever rank's link it is, and no rank's collective is longer than its peers'.
  The trace cannot tell which rank's link it is; the diagnose names the group
  (``comm-slow-link``, C4's communication-slow, ``where.ranks`` = every rank).

Durations only are planted (timestamps stay, so a lengthened kernel may overlap the next one of
its stream): the analyzers' cross-rank figures are durations, since ranks' clocks do not agree.

Each rank's tables are written by the compaction command (``python -m
stallscope.analyzers.compaction``, what the profiler starts at the end of each rank's window),
then ``stallscope diagnose RUN -f yaml -o report.yaml`` runs in a fresh process: wall and CPU
time from process start to report written, its peak RSS (``wait4``), the time spent loading
(``load_context_s``) and how many stored tables it could not use (``tables_missed``, 0 when all
were read). Whether the report names the straggler rank (``comm-straggler``) and the slow link's
group (``comm-slow-link`` over every rank) is recorded as it is. A second diagnose runs the
per-rank analyzers (``worst_rank``) on the full ranks only
(``per_rank_analyzers_on_full_ranks_only``: what they cost on 1,000 compacted ranks),
and, with ``--baseline all`` (the default), one without any table files (today's path: every
trace parsed). All commands run a copy of the package taken at the start, so that an edit of the
source during the run cannot make the tables stale. Writes
``bench/results/distributed-scale-1024.yaml``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "fixtures" / "gpu" / "ddp_h200" / "healthy"
STRETCH = 1.5  # the straggler's compute kernels
SLOW_LINK = 2.0  # every rank's collective transfer time: one link of the group at half its rate
CLOCK_STEP_US = 13.7

# Run in the diagnose process: times load_context (stderr) and, with BENCH_FULL_RANKS_ONLY=1,
# runs the per-rank analyzers on the full ranks only (a variant measured beside the default).
_CONTEXT_PATCH = r"""
import sys
from stallscope.analyzers import context
import os, time, dataclasses
from stallscope.analyzers import inputs, report
load_context = context.load_context


def timed_load_context(target):
    t0 = time.perf_counter()
    try:
        return load_context(target)
    finally:
        sys.stderr.write(f"bench: load_context_s={time.perf_counter() - t0:.3f}\n")


report.load_context = inputs.load_context = timed_load_context
if os.environ.get("BENCH_FULL_RANKS_ONLY") == "1":  # per-rank analyzers on the full ranks only
    from stallscope.analyzers.builtin import _common
    worst_rank = _common.worst_rank

    def full_ranks_only(ctx, analyze_one):
        full = [r for r in ctx.ranks if not r.meta.get("compacted")]
        return worst_rank(dataclasses.replace(ctx, ranks=full) if full else ctx, analyze_one)

    _common.worst_rank = full_ranks_only
from stallscope.cli import entry
sys.argv = ["stallscope", *sys.argv[1:]]
entry()
"""


def _load(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt") as fh:
        return json.load(fh)


def _is_comm(e: dict[str, Any]) -> bool:
    return e.get("cat") == "kernel" and "nccl" in str(e.get("name", "")).lower()


def _is_compute(e: dict[str, Any]) -> bool:
    return e.get("cat") == "kernel" and not _is_comm(e)


def lateness_us(trace: dict[str, Any]) -> list[float]:
    """Per collective kernel (in time order) of a rank whose compute is stretched by STRETCH: how
    much later it joins, i.e. the extra compute it did since its previous collective."""
    kernels = sorted((e for e in trace["traceEvents"] if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    out, extra = [], 0.0
    for e in kernels:
        if _is_comm(e):
            out.append(extra)
            extra = 0.0
        else:
            extra += (STRETCH - 1.0) * float(e.get("dur", 0.0))
    return out


def rank_trace(
    base: dict[str, Any], rank: int, world: int, straggler: bool, late: list[float], transfer: list[float]
) -> dict[str, Any]:
    """Rank ``rank``'s trace: ``base`` with its clock offset and jitter; its k-th collective kernel
    lasts ``transfer[k]`` (before jitter) plus, unless it is the ``straggler``, ``late[k]``."""
    rng = random.Random(rank)
    shift = rank * CLOCK_STEP_US
    events, comm_index = [], 0
    for e in sorted(base["traceEvents"], key=lambda e: (e.get("ts") is None, e.get("ts") or 0)):
        e = dict(e)
        if isinstance(e.get("ts"), (int, float)):
            e["ts"] = round(e["ts"] + shift, 3)
        if e.get("cat") == "kernel" and isinstance(e.get("dur"), (int, float)):
            dur = float(e["dur"])
            if _is_comm(e) and comm_index < len(transfer):
                dur = transfer[comm_index]
            dur *= rng.uniform(0.97, 1.03)
            if _is_compute(e) and straggler:
                dur *= STRETCH
            if _is_comm(e):
                if not straggler and comm_index < len(late):
                    dur += late[comm_index]
                comm_index += 1
            e["dur"] = round(dur, 3)
        args = e.get("args")
        if isinstance(args, dict) and "Group size" in args:
            e["args"] = dict(args, **{"Group size": world, "Rank": rank})
        events.append(e)
    out = {k: v for k, v in base.items() if k != "traceEvents"}
    info = dict(out.get("distributedInfo") or {})
    info.update(rank=rank, world_size=world)
    info["pg_config"] = [dict(pg, pg_size=world, ranks=list(range(world))) for pg in info.get("pg_config") or []]
    out["distributedInfo"] = info
    out["traceEvents"] = events
    return out


def _collectives(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(filter(_is_comm, trace["traceEvents"]), key=lambda e: e["ts"])


def transfer_us(bases: list[dict[str, Any]], world: int, slow_link: bool) -> list[float]:
    """The k-th collective's transfer time in a ``world``-rank group (see module doc): the shorter
    of the pair's two kernels (the last arriver's), x 2(N-1)/N (a ring all-reduce's bytes
    through each link, per byte of buffer: 1 for the pair), x SLOW_LINK with the slow link."""
    pair = [_collectives(b) for b in bases]
    if len({len(p) for p in pair}) != 1 or not all("allreduce" in e["name"].lower() for p in pair for e in p):
        raise SystemExit(f"{SOURCE}: expected the same all-reduces on both ranks; re-record the fixture")
    ring = 2.0 * (world - 1) / world
    slow = SLOW_LINK if slow_link else 1.0
    return [min(float(a["dur"]), float(b["dur"])) * ring * slow for a, b in zip(*pair, strict=True)]


def build_run(folder: Path, world: int, straggler: bool = True, slow_link: bool = True) -> dict[str, Any]:
    """Write ``world`` rank folders under ``folder``, with the planted straggler and slow link
    (module doc) unless turned off; returns what was planted: the straggler's rank (or None) and
    ``slow_link`` (True or False: the whole group's collectives, no one rank)."""
    bases = [_load(SOURCE / f"rank{r}.pt.trace.json.gz") for r in (0, 1)]
    planted: dict[str, Any] = {"straggler": world // 3 if straggler else None, "slow_link": slow_link}
    late = lateness_us(bases[world // 3 % 2]) if straggler else []
    transfer = transfer_us(bases, world, slow_link)
    for r in range(world):
        trace = rank_trace(bases[r % 2], r, world, r == planted["straggler"], late, transfer)
        d = folder / f"rank{r}"
        d.mkdir(parents=True, exist_ok=True)
        with gzip.open(d / "trace.json.gz", "wt", compresslevel=3) as fh:
            json.dump(trace, fh)
    return planted


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str, float]:
    """Wall seconds, peak RSS (MiB, the largest process), stderr and CPU seconds (user + system:
    on this shared machine wall time swings with other people's load, CPU time much less) of one
    subprocess."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if proc.stderr:
        proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd[:6])} ...\n{err[-1500:]}")
    return wall, usage.ru_maxrss / 1024.0, err, usage.ru_utime + usage.ru_stime


def findings(report: Path) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load(report.read_text())
    return {f["id"]: f for f in doc.get("findings") or []}


def _straggler_named(found: dict[str, Any], rank: int) -> bool:
    return rank in (((found.get("comm-straggler") or {}).get("where") or {}).get("ranks") or [])


def _group_named(found: dict[str, Any], world: int) -> bool:
    """``comm-slow-link`` over the whole group: a slow link paces every rank's collectives."""
    return (((found.get("comm-slow-link") or {}).get("where") or {}).get("ranks") or []) == list(range(world))


def _load_s(err: str) -> float | None:
    for line in err.splitlines():
        if line.startswith("bench: load_context_s="):
            return float(line.split("=", 1)[1])
    return None


# Every command runs the package from a copy taken at the start (``snapshot``): the tables are
# keyed to the source of the code that wrote them, and on a shared machine someone may edit
# that source between the compaction and the diagnose.
_BOOT = (
    "import importlib.util, os, sys\n"
    "home = sys.argv.pop(1)\n"
    "spec = importlib.util.spec_from_file_location('stallscope', os.path.join(home, '__init__.py'), "
    "submodule_search_locations=[home])\n"
    "pkg = importlib.util.module_from_spec(spec)\n"
    "sys.modules['stallscope'] = pkg\n"
    "spec.loader.exec_module(pkg)\n"
)
_CLI = "from stallscope.cli import entry\nsys.argv = ['stallscope', *sys.argv[1:]]\nentry()\n"
_COMPACTION = "from stallscope.analyzers.compaction import main\nsys.exit(main(sys.argv[1:]))\n"


def snapshot(work: Path) -> Path:
    """A copy of the package's code (what a run of this bench executes)."""
    dest = work / "stallscope"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("analyzers", "profiler", "fixes"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("__init__.py", "cli.py"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def _cmd(pkg: Path, code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", _BOOT + code, str(pkg), *args]


def _diagnosed(
    pkg: Path, code: str, run: Path, report: Path, env: dict[str, str], planted: dict[str, Any]
) -> dict[str, Any]:
    """One diagnose of ``run``: its figures and what its report names."""
    cache = Path(env.get("XDG_CACHE_HOME", "/nonexistent")) / "stallscope" / "tables"
    before = len(list(cache.glob("*.npz")))
    wall, rss, err, cpu = measure(_cmd(pkg, code, "diagnose", str(run), "-f", "yaml", "-o", str(report)), env)
    found = findings(report)
    return {
        "diagnose_s": round(wall, 2),
        "diagnose_cpu_s": round(cpu, 2),
        "load_context_s": _load_s(err),
        "peak_rss_mb": round(rss, 1),
        # a table the diagnose could not use is parsed and stored in the user cache instead
        "tables_missed": len(list(cache.glob("*.npz"))) - before,
        "straggler_named": _straggler_named(found, planted["straggler"]),
        "slow_link_named": _group_named(found, planted["world"]),
        "comm_straggler_ranks": (found.get("comm-straggler") or {}).get("where", {}).get("ranks"),
        "slow_link_busbw_gbps": ((found.get("comm-slow-link") or {}).get("evidence") or {}).get(
            "busbw_gbps_by_collective"
        ),
        "findings": sorted(found),
    }


def run_point(world: int, work: Path, pkg: Path, baseline: bool) -> dict[str, Any]:
    """Build the ``world``-rank run, compact it, diagnose it (see module doc); its row."""
    run = work / f"run{world}"
    t0 = time.perf_counter()
    planted = dict(build_run(run, world), world=world)
    build_s = time.perf_counter() - t0
    traces = sorted(run.glob("rank*/trace.json.gz"), key=lambda p: int(p.parent.name[4:]))
    env = dict(os.environ, STALLSCOPE_TABLE_CACHE="off", STALLSCOPE_PARSE_WORKERS="0")
    row: dict[str, Any] = {
        "ranks": world,
        "straggler_rank": planted["straggler"],
        "slow_link": "group (every rank's collectives)",
    }
    if baseline:  # today's path: every trace parsed, no table files anywhere
        row["without_tables"] = _diagnosed(pkg, _CLI, run, work / "plain.yaml", env, planted)
        print(f"ranks={world}: without tables {row['without_tables']['diagnose_s']} s", flush=True)
    compact_s, _, _, compact_cpu = measure(_cmd(pkg, _COMPACTION, "--quiet", *map(str, traces)), env)
    tables = list(run.glob("rank*/.*.stallscope-*.npz"))
    # the stored tables are read in every cache mode but off; "user" keeps the diagnose from writing
    # next to the traces (a miss goes to the user cache, where _diagnosed counts it). Each diagnose
    # has a user cache of its own, empty: a report kept by one (analyzers/reportcache.py) would
    # answer the next diagnose of the same run without running it.
    env_read = dict(env, STALLSCOPE_TABLE_CACHE="user", XDG_CACHE_HOME=str(work / f"xdg{world}"))
    row.update(_diagnosed(pkg, _CONTEXT_PATCH, run, work / "report.yaml", env_read, planted))
    row.update(
        compaction_s_per_rank=round(compact_s / world, 4),
        compaction_cpu_s_per_rank=round(compact_cpu / world, 4),
        tables=len(tables),
        tables_mb=round(sum(p.stat().st_size for p in tables) / 1e6, 2),
        traces_gz_mb=round(sum(p.stat().st_size for p in traces) / 1e6, 2),
        build_s=round(build_s, 1),
    )
    row["per_rank_analyzers_on_full_ranks_only"] = _diagnosed(
        pkg,
        _CONTEXT_PATCH,
        run,
        work / "variant.yaml",
        dict(env_read, BENCH_FULL_RANKS_ONLY="1", XDG_CACHE_HOME=str(work / f"xdg{world}-variant")),
        planted,
    )
    print(
        f"ranks={world}: diagnose {row['diagnose_s']} s, {row['peak_rss_mb']} MiB, {row['tables_missed']} tables "
        f"missed; straggler named {row['straggler_named']}, slow link named {row['slow_link_named']}; "
        f"compaction {compact_s:.1f} s",
        flush=True,
    )
    shutil.rmtree(run, ignore_errors=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[64, 1024])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "distributed-scale-1024.yaml")
    ap.add_argument(
        "--baseline", choices=("all", "first"), default="all", help="diagnose without tables at every N or the first"
    )
    args = ap.parse_args()
    sizes = sorted(set(args.ranks))
    work = Path(tempfile.mkdtemp(prefix="scale-1024-"))
    load = os.getloadavg()[0]
    try:
        pkg = snapshot(work)
        rows = [run_point(n, work, pkg, baseline=args.baseline == "all" or n == sizes[0]) for n in sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        b["s_per_added_rank"] = round((b["diagnose_s"] - a["diagnose_s"]) / (b["ranks"] - a["ranks"]), 5)
        b["cpu_s_per_added_rank"] = round((b["diagnose_cpu_s"] - a["diagnose_cpu_s"]) / (b["ranks"] - a["ranks"]), 5)
        b["mb_per_added_rank"] = round((b["peak_rss_mb"] - a["peak_rss_mb"]) / (b["ranks"] - a["ranks"]), 4)
    from stallscope.profiler.common import write_yaml

    write_yaml(
        args.out,
        {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} ({os.cpu_count()} cores), CPU only, load average {load:.1f} at start",
            "python": platform.python_version(),
            "command": f"python bench/scale_1024.py --ranks {' '.join(map(str, sizes))} --baseline {args.baseline}",
            "source_traces": str(SOURCE.relative_to(ROOT)),
            "planted": {
                "straggler_compute_stretch": STRETCH,
                "slow_link_transfer_factor": SLOW_LINK,
                "slow_link": "one link at 1/SLOW_LINK of its rate paces the group: every rank's "
                "transfer time x SLOW_LINK; slow_link_named = comm-slow-link over every rank",
            },
            "rows": rows,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
