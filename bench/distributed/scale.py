"""How `stallscope diagnose` scales with ranks: replicate a real 2-rank trace to N ranks.

    python bench/distributed/scale.py RUN_OR_TRACE_FOLDER [--ranks 2 8 16 32 64] [--out FILE]

Each synthetic rank is a copy of one real rank's trace with every event's duration scaled by a
random factor in [0.95, 1.05] and its start shifted by the accumulated change (so events stay
ordered), and ``distributedInfo.rank`` set. For each N the script runs the real CLI in a fresh
process (process start to report written) and records wall time and peak RSS (resource.getrusage
of the child). Writes YAML with per-N figures and the time per rank.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # for the sibling bench package (bench.recorded); stallscope is installed
from bench.recorded import recorded_command, recorded_path  # noqa: E402


def _source_traces(src: Path) -> list[Path]:
    found = sorted(src.glob("rank*/trace.json*")) or sorted(src.glob("*.json*"))
    if not found:
        raise SystemExit(f"{src}: no traces (rank*/trace.json.gz or *.json[.gz])")
    return found


def _load(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return json.load(fh)


def _perturbed(trace: dict, rank: int, world: int, seed: int) -> dict:
    rng = random.Random(seed)
    out = dict(trace)
    events = []
    for e in trace.get("traceEvents", []):
        e = dict(e)
        if isinstance(e.get("dur"), (int, float)) and e["dur"] > 0:
            e["dur"] = float(e["dur"]) * rng.uniform(0.95, 1.05)
        events.append(e)
    out["traceEvents"] = events
    info = dict(out.get("distributedInfo") or {})
    info.update({"rank": rank, "world_size": world})
    out["distributedInfo"] = info
    return out


def build_folder(sources: list[Path], n: int, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    base = [_load(p) for p in sources]
    for r in range(n):
        data = _perturbed(base[r % len(base)], r, n, seed=r)
        with gzip.open(folder / f"rank{r}.json.gz", "wt", compresslevel=1) as fh:
            json.dump(data, fh)


def diagnose(folder: Path, report: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-m", "stallscope.cli", "diagnose", str(folder), "-f", "yaml", "-o", str(report)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"diagnose failed on {folder}: {proc.stderr.strip()[-500:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak_kb, before) / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", type=Path)
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 8, 16, 32, 64])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "distributed-scale.yaml")
    args = ap.parse_args()
    sources = _source_traces(args.source)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(args.ranks):
            folder = Path(tmp) / f"r{n}"
            build_folder(sources, n, folder)
            # Children's peak RSS is a running maximum: run each N in its own measuring process. The
            # repository root goes on its path for this bench module only; stallscope is installed.
            code = ("import sys, json; sys.path.insert(0, %r); from bench.distributed.scale import diagnose; "
                    "from pathlib import Path; print(json.dumps(diagnose(Path(%r), Path(%r))))") % (str(ROOT), str(folder), str(folder / "report.yaml"))
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if res.returncode != 0:
                raise SystemExit(res.stderr[-800:])
            wall, peak = json.loads(res.stdout.strip().splitlines()[-1])
            size_mb = sum(p.stat().st_size for p in folder.glob("rank*.json.gz")) / 1e6
            rows.append({"ranks": n, "diagnose_s": round(wall, 3), "s_per_rank": round(wall / n, 4),
                         "peak_rss_mb": round(peak, 1), "traces_gz_mb": round(size_mb, 2)})
            print(f"ranks={n:3d} diagnose={wall:7.2f}s  per-rank={wall / n:6.3f}s  peak_rss={peak:7.1f} MB")
    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.node()} ({os.cpu_count()} cores), CPU only",
        "command": recorded_command([sys.executable, __file__, *sys.argv[1:]], args.out.parent),
        "source_traces": [recorded_path(p, args.out.parent) for p in sources],
        "rows": rows,
    }
    from stallscope.profiler.common import write_yaml

    write_yaml(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
