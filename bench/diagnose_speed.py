"""`stallscope diagnose` end to end vs HTA (Holistic Trace Analysis): wall time and peak memory.

    python3 -m venv --system-site-packages /tmp/hta_venv && /tmp/hta_venv/bin/pip install HolisticTraceAnalysis
    python3 bench/diagnose_speed.py --hta-python /tmp/hta_venv/bin/python       # $OUT/diagnose-speed.yaml when OUT is set

Big trace: a committed real H200 recording (``--from-fixture``, default the GPT-2 training loop of
``bench/corpus/h200``) repeated step by step into a temporary trace of at least ``--json-mb`` MB of
JSON (``diagnose_speed_tools.build_big_trace``: time-shifted, steps and ids renumbered, gzipped,
deterministic), or an existing trace (``--trace``). Small traces: committed real traces under
1 MB of JSON (``--small``). Every measurement is a fresh subprocess, from process start until the
output is written (ours: ``python3 -m stallscope.cli diagnose TRACE -f yaml -o OUT``; HTA:
``TraceAnalysis(dir)`` + ``get_temporal_breakdown`` with ``HTA_DISABLE_NS_ROUNDING=1``, see
``Bench.hta``), wall and CPU time (``wait4``) and peak memory (PSS summed over the process tree,
sampled), the tools alternating, ``--runs`` rounds, medians with min and max. Cold: each run of
ours gets an empty ``XDG_CACHE_HOME`` (its table cache goes there; ``STALLSCOPE_TABLE_CACHE`` is
unset) and the trace lies in a temporary folder with nothing beside it; HTA keeps no cache.
``repeat_s``: right after each cold run, the same command again with that run's cache. Start-up:
``stallscope diagnose --help`` (the console script), ``--startup-runs`` times. HTA's idle /
compute / non-compute time on the big trace is cross-checked with ours (``hta_temporal``).
``--big-gb`` adds traces of those sizes (ours only) to show how memory grows. Prints a table last.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import importlib.util
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stallscope.bench.diagnose_speed_tools import (
    HTA_SCRIPT,
    ROOT,
    Run,
    build_big_trace,
    crosscheck,
    hta_versions,
    measure,
    spread,
    summary,
    trace_figures,
    wall_only,
)
from stallscope.bench.recorded import recorded_command, recorded_path

__all__ = ["measure"]  # bench/annotate_memory.py imports it from here

SMALL = [
    "tests/fixtures/gpu/train.pt.trace.json.gz",
    "tests/fixtures/gpu/tiny_kernels.pt.trace.json.gz",
    "tests/fixtures/gpu/sync_item_per_layer.json.gz",
    "tests/fixtures/gpu/healthy_bf16_mlp.json.gz",
    "tests/fixtures/gpu/grkan_baseline.json.gz",
    "tests/fixtures/gpu/ddp_h200/healthy/rank0.pt.trace.json.gz",
    "tests/fixtures/public/hta_sampled_2_of_128/sampled_rank-0.json.gz",
    "tests/fixtures/public/hta_rocm62_mi250.json.gz",
]
MEMORY_RUNS = 2  # sampled runs per command on the big trace
DETAIL = ("big_trace", "big", "crosscheck", "small_traces", "startup", "scaling")  # written after the headline
# The targets, kept next to the figures so a reader sees what each was held to.
TARGETS = {"speedup": (">=", 10.0), "memory_ratio": ("<=", 0.25), "repeat_s": ("<=", 0.2),
           "small_trace_speedup": (">=", 4.0), "startup_s": ("<=", 0.15)}  # fmt: skip


class Bench:
    """The two commands on one trace, each run in a fresh process; ours with its own cache folder."""

    def __init__(self, work: Path, trace: Path, hta_python: str | None, tag: str) -> None:
        self.work, self.trace, self.hta_python, self.tag, self.n = work, trace, hta_python, tag, 0
        self.hta_dir = work / f"hta-{tag}"
        self.hta_dir.mkdir()
        os.symlink(trace.resolve(), self.hta_dir / f"rank0{''.join(trace.suffixes[-2:])}")
        self.base_env = {k: v for k, v in os.environ.items() if k != "STALLSCOPE_TABLE_CACHE"}

    def ours(self, repeat: bool = False, memory: bool = False) -> Run:
        """Diagnose the trace; cold (a new, empty cache folder) unless ``repeat`` (the last one's);
        timed alone, or with its memory sampled (see :func:`measure`)."""
        self.n += 0 if repeat else 1
        env = dict(self.base_env, XDG_CACHE_HOME=str(self.work / f"cache-{self.tag}-{self.n}"))
        out = self.work / f"report-{self.tag}.yaml"
        return measure(
            [sys.executable, "-m", "stallscope.cli", "diagnose", str(self.trace), "-f", "yaml", "-o", str(out)],
            env,
            memory,
        )

    def hta(self, memory: bool = False) -> Run:
        """HTA's temporal breakdown of the trace (its JSON is kept for the cross-check). On exact
        timestamps: by default HTA rounds each start up and each end down to whole microseconds,
        which gives sub-microsecond kernels a negative duration and, on the big trace, fails HTA's
        own ``non_compute_time >= 0`` assertion after the whole parse."""
        assert self.hta_python is not None
        cmd = [self.hta_python, "-c", HTA_SCRIPT, str(self.hta_dir), str(self.work / f"{self.tag}-hta.json")]
        return measure(cmd, dict(self.base_env, HTA_DISABLE_NS_ROUNDING="1"), memory)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--from-fixture", type=Path, default=ROOT / "bench/corpus/h200/traces/hf_gpt2_healthy/rank-0.json.gz",
                     help="committed real trace whose steps are repeated into the big trace")  # fmt: skip
    src.add_argument("--trace", type=Path, help="use this big trace as it is instead")
    ap.add_argument("--json-mb", type=float, default=60.0, help="least MB of JSON of the built trace")
    ap.add_argument(
        "--small", type=Path, nargs="*", default=[ROOT / p for p in SMALL], help="traces under 1 MB of JSON"
    )
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--startup-runs", type=int, default=15)
    ap.add_argument("--hta-python", help="interpreter with HolisticTraceAnalysis installed (omit: ours only)")
    ap.add_argument("--wait-load", type=float, help="first wait (up to 30 min) for a 1-minute load average below this")
    ap.add_argument("--big-gb", type=float, nargs="*", default=[], help="also diagnose traces of these GB of JSON")
    args = ap.parse_args()
    out_path = (
        Path(os.environ["OUT"]) / "diagnose-speed.yaml"
        if os.environ.get("OUT")
        else ROOT / "bench/results/diagnose-speed.yaml"
    )
    source = (args.trace or args.from_fixture).resolve()
    missing = [p for p in [source, *args.small] if not p.is_file()]
    if missing:
        print(
            f"diagnose_speed: no trace at {', '.join(map(str, missing))}; give committed traces (see --help)",
            file=sys.stderr,
        )
        return 2
    versions = hta_versions(args.hta_python) if args.hta_python else None
    if args.hta_python and versions is None:
        print(
            f"diagnose_speed: {args.hta_python} cannot import HTA; pip install HolisticTraceAnalysis there",
            file=sys.stderr,
        )
        return 2
    waited = time.monotonic()
    while args.wait_load and os.getloadavg()[0] >= args.wait_load and time.monotonic() - waited < 1800:
        time.sleep(15)
    os.environ["STALLSCOPE_TABLE_CACHE"] = "off"  # this process's own cross-check loads leave no cache
    # An installed package has its bytecode: pip compiles it at install time. An editable checkout
    # in a shell with PYTHONDONTWRITEBYTECODE=1 would compile every module again in every run.
    package = Path(importlib.util.find_spec("stallscope").origin or ROOT / "__init__.py").parent
    compiled = compileall.compile_dir(package, quiet=1)
    doc: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "load_average_start": [round(x, 2) for x in os.getloadavg()],  # 1, 5, 15 minutes
        "waited_for_load_s": round(time.monotonic() - waited),
        "python": platform.python_version(),
        # HTA's interpreter is a venv of the reader's making (see the module doc): named VENV
        "command": recorded_command(
            [sys.executable, __file__, *("VENV/bin/python" if a == args.hta_python else a for a in sys.argv[1:])]
        ),
        "hta": None
        if versions is None
        else {
            "python": "VENV/bin/python",
            "versions": versions,
            "installed_with": "python3 -m venv --system-site-packages VENV && VENV/bin/pip install HolisticTraceAnalysis",
        },
        "hta_run": "HTA_DISABLE_NS_ROUNDING=1: with HTA's default rounding to whole microseconds its own "
        "non_compute_time >= 0 assertion fails on the big trace",
        "cold": "each run of ours: fresh process, empty XDG_CACHE_HOME, STALLSCOPE_TABLE_CACHE unset, nothing beside the "
        "trace; HTA keeps no cache; the trace file itself is in the page cache for both",
        "runs": args.runs,
        "timing": f"wall and CPU time from runs with nothing beside them; memory from {MEMORY_RUNS} more runs of "
        "each on the big trace (1 on each small one) with PSS sampled every 20 ms (the sampler reads smaps, which "
        "on 2 cores slows the command it watches); the scaling rows are sampled runs",
        "bytecode": f"compiled before timing with compileall ({'done' if compiled else 'some files failed'}), as pip "
        f"does at install; PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', 'unset')}",
    }
    work = Path(tempfile.mkdtemp(prefix="diagnose-speed-"))
    try:
        big = work / "big" / ("rank0.json.gz" if args.trace is None else args.trace.name)
        big.parent.mkdir()
        if args.trace is None:
            print(f"building a {args.json_mb:g} MB trace from {_rel(source)} ...", flush=True)
            built = build_big_trace(source, big, args.json_mb)
            doc["big_trace"] = {"source": _rel(source), "source_figures": trace_figures(source), **built,
                                "built": f"the source's timed events repeated {built['copies']} times (copy k shifted by k "
                                "spans, ProfilerStep numbers following on, correlation / External / flow ids offset per "
                                "copy), gzipped: bench/diagnose_speed_tools.py build_big_trace"}  # fmt: skip
        else:
            shutil.copyfile(source, big)
            doc["big_trace"] = {"source": _rel(source), **trace_figures(big)}
        b = Bench(work, big, args.hta_python, "big")
        ours: list[Run] = []
        again: list[Run] = []
        hta: list[Run] = []
        for i in range(args.runs):
            ours.append(b.ours())
            again.append(b.ours(repeat=True))
            if args.hta_python:
                hta.append(b.hta())
            print(f"  big run {i + 1}: ours {ours[-1][0]:.2f} s, repeat {again[-1][0]:.3f} s"
                  + (f"; HTA {hta[-1][0]:.2f} s" if hta else ""), flush=True)  # fmt: skip
        ours_mem = [b.ours(memory=True) for _ in range(MEMORY_RUNS)]
        hta_mem = [b.hta(memory=True) for _ in range(MEMORY_RUNS)] if args.hta_python else []
        doc["big"] = {"ours": summary(ours, ours_mem), "ours_repeat": summary(again)}
        small_rows: list[dict[str, Any]] = []
        for path in args.small:
            copy = work / f"small-{len(small_rows)}" / path.name  # a folder of its own: nothing beside it
            copy.parent.mkdir()
            shutil.copyfile(path, copy)
            s = Bench(work, copy, args.hta_python, f"small{len(small_rows)}")
            so: list[Run] = []
            sh: list[Run] = []
            for _ in range(args.runs):
                so.append(s.ours())
                if args.hta_python:
                    sh.append(s.hta())
            so_mem = [s.ours(memory=True)]
            sh_mem = [s.hta(memory=True)] if args.hta_python else []
            row: dict[str, Any] = {"trace": _rel(path), **trace_figures(s.trace), "ours": summary(so, so_mem)}
            if sh:
                row |= {"hta": summary(sh, sh_mem), "speedup": _ratio(sh, so, 0), "cpu_speedup": _ratio(sh, so, 4)}
                row["memory_ratio"] = _ratio(so_mem, sh_mem, 1)
            small_rows.append(row)
            print(
                f"  small {path.name}: ours {row['ours']['wall_s']['median']} s"
                + (f", HTA {row['hta']['wall_s']['median']} s ({row['speedup']}x)" if sh else ""),
                flush=True,
            )
        script = (
            shutil.which("stallscope", path=str(Path(sys.executable).parent))
            or shutil.which("stallscope")
            or "stallscope"
        )
        wall_only([script, "diagnose", "--help"])  # page cache
        startup = [wall_only([script, "diagnose", "--help"]) for _ in range(args.startup_runs)]
        doc["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        if hta:
            doc["big"] |= {
                "hta": summary(hta, hta_mem),
                "memory_ratio_rss": _ratio(ours_mem, hta_mem, 3),
            }
            doc["speedup"] = _ratio(hta, ours, 0)
            doc["memory_ratio"] = _ratio(ours_mem, hta_mem, 1)
            doc["cpu_speedup"] = _ratio(hta, ours, 4)  # less swayed by the machine's other load than wall time
        doc["repeat_s"] = round(statistics.median(r[0] for r in again), 3)
        if small_rows and hta:
            doc["small_trace_speedup"] = round(statistics.median(r["speedup"] for r in small_rows), 2)
            doc["small_trace_speedups"] = {Path(r["trace"]).name: r["speedup"] for r in small_rows}
            doc["small_trace_cpu_speedup"] = round(statistics.median(r["cpu_speedup"] for r in small_rows), 2)
        doc["startup_s"] = round(statistics.median(startup), 4)
        doc["meets"] = {k: (doc[k] >= t if op == ">=" else doc[k] <= t) for k, (op, t) in TARGETS.items() if k in doc}
        doc["targets"] = {k: f"{op} {t}" for k, (op, t) in TARGETS.items()}
        doc["units"] = (
            "speedup: HTA's median wall time / ours (x); cpu_speedup: the same of CPU time (x); memory_ratio: our "
            "median peak PSS / HTA's; *_s: seconds; *_mib: MiB (2**20 bytes); *_mb: 10**6 bytes"
        )
        if hta:
            doc["crosscheck"] = crosscheck(big, work / "big-hta.json")
        doc["small_traces"] = small_rows
        doc["startup"] = {
            "command": "stallscope diagnose --help",
            "runs": args.startup_runs,
            "wall_s": spread(startup, 4),
        }
        doc["scaling"] = [_scaling(work, source, gb) for gb in sorted(g for g in args.big_gb if g > 0)]
        from stallscope.profiler.common import write_yaml

        first = [k for k in doc if k not in DETAIL]  # run facts and headline figures above the details
        write_yaml(out_path, {k: doc[k] for k in first + [k for k in DETAIL if k in doc]})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{'big trace':<28}{'wall s':>10}{'PSS MiB':>10}\n{'stallscope diagnose':<28}{doc['big']['ours']['wall_s']['median']:>10}{doc['big']['ours']['peak_pss_mib']['median']:>10}"
    )
    if hta:
        print(
            f"{'HTA ' + doc['hta']['versions']['HolisticTraceAnalysis']:<28}{doc['big']['hta']['wall_s']['median']:>10}{doc['big']['hta']['peak_pss_mib']['median']:>10}"
        )
    print(
        "  ".join(f"{k} {doc[k]}{'' if doc['meets'].get(k, True) else ' (NOT MET)'}" for k in TARGETS if k in doc)
        + f"\n{out_path}"
    )
    return 0


def _rel(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (no machine paths in results)."""
    full = path.resolve()
    return str(full.relative_to(ROOT)) if full.is_relative_to(ROOT) else recorded_path(full)


def _ratio(num: Sequence[Run], den: Sequence[Run], j: int) -> float:
    """Median of ``num``'s column j over the median of ``den``'s."""
    return round(statistics.median(x[j] for x in num) / statistics.median(x[j] for x in den), 3)


def _scaling(work: Path, source: Path, gb: float) -> dict[str, Any]:
    """Diagnose (ours, once, cold) a trace of ``gb`` GB of JSON built from ``source``."""
    trace = work / f"scale-{gb:g}" / "rank0.json.gz"
    trace.parent.mkdir()
    built = build_big_trace(source, trace, gb * 1e3)
    s = Bench(work, trace, None, f"scale{gb:g}")
    wall, pss, code, rss, cpu = s.ours(memory=True)
    s.trace.unlink()
    return {k: built[k] for k in ("copies", "events", "json_mb")} | {
        "wall_s": round(wall, 2),
        "peak_pss_mib": round(pss, 1),
        "cpu_s": round(cpu, 2),
        "exit_code": code,
    }


if __name__ == "__main__":
    sys.exit(main())
