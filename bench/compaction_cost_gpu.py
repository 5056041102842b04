#!/usr/bin/env python3
"""What compaction at the source costs at the end of a rank's trace window, on the GPU machine.

    python3 bench/compaction_cost_gpu.py [--runs 3] [--repeats 5]    # writes $OUT/compaction-cost.yaml

For a transformer training step (``bench/scenarios/healthy_bf16_transformer.py``, bf16, fused
attention) it runs ``stallscope profile --skip 5 --steps 5`` with compaction on and off,
interleaved, and records:

* ``in_run``: whether the detached compaction left its table files next to each run's trace,
  and how long after the run's end they appeared (``tables_after_exit_s``);
* ``standalone``: the same compaction (``python -m stallscope.analyzers.compaction TRACE --nice
  10``, what the profiler starts) timed alone on each run's trace, ``--repeats`` times with the
  tables removed in between: wall and CPU seconds (the child's rusage), trace size, events;
* ``steps_after_window_ms``: the median step (``steps.csv`` wall time) of the steps after the
  window, compaction on vs off, so its cost to the training shows beside its own time.

Goal (issue: compaction at the source): <= 1 s for a 5-step window of a transformer step.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for the sibling bench package (bench.recorded); stallscope is installed
from bench.recorded import recorded_command, recorded_text  # noqa: E402

WORKLOAD = "bench/scenarios/healthy_bf16_transformer.py"
SKIP, STEPS, RUN_STEPS = 5, 5, 40
GOAL_S = 1.0


def _env_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )
        name, driver = [s.strip() for s in q.stdout.strip().splitlines()[0].split(",")]
        facts.update(gpu=name, driver=driver)
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        facts.update(gpu=None, driver=None)
    import torch

    facts.update(torch=str(torch.__version__), cuda=str(torch.version.cuda))
    facts["cpus"] = os.cpu_count()
    return facts


def _tables(folder: Path) -> list[Path]:
    return [p for p in folder.glob(".trace.json.gz.stallscope-*.npz")]


def _profile(run: Path, compact: bool) -> dict[str, Any]:
    env = dict(os.environ, STALLSCOPE_COMPACT="1" if compact else "0")
    cmd = [sys.executable, "-m", "stallscope.cli", "profile", "-o", str(run), "--no-diagnose", "-q",
           "--skip", str(SKIP), "--steps", str(STEPS), "--", sys.executable, WORKLOAD, "--steps", str(RUN_STEPS)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    exit_t = time.perf_counter()
    out: dict[str, Any] = {"rc": proc.returncode, "wall_s": round(exit_t - t0, 2)}
    if proc.returncode != 0:
        out["stderr_tail"] = recorded_text(proc.stderr[-800:], run.parent.parent)  # run: OUT/compaction-runs/NAME
        return out
    rank0 = run / "rank0"
    if compact:
        deadline = exit_t + 60.0
        while len(_tables(rank0)) < 2 and time.perf_counter() < deadline:
            time.sleep(0.05)
        out["tables_written"] = sorted(p.name for p in _tables(rank0))
        out["tables_after_exit_s"] = round(time.perf_counter() - exit_t, 2)
    out["steps_after_window_ms"] = _after_window_median(rank0 / "steps.csv")
    return out


def _after_window_median(path: Path) -> float | None:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    last_window = max((int(r["step"]) for r in rows if r.get("in_window") in ("1", "True", "true")), default=None)
    if last_window is None:
        return None
    after = [float(r["wall_ms"]) for r in rows if int(r["step"]) > last_window and r.get("wall_ms")]
    return round(statistics.median(after), 3) if after else None


def _standalone(trace: Path, repeats: int) -> dict[str, Any]:
    walls, cpus = [], []
    for _ in range(repeats):
        for p in _tables(trace.parent):
            p.unlink()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "stallscope.analyzers.compaction", str(trace), "--nice", "10", "--quiet"],
                       check=True, cwd=ROOT, timeout=120)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    from stallscope.analyzers.loader import load_trace

    table, _meta = load_trace(trace)
    return {
        "trace_mb": round(trace.stat().st_size / 1e6, 2),
        "events": int(len(table)),
        "wall_s": [round(w, 3) for w in walls],
        "wall_s_median": round(statistics.median(walls), 3),
        "cpu_s_median": round(statistics.median(cpus), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="profiled runs per condition (compaction on, off)")
    ap.add_argument("--repeats", type=int, default=5, help="standalone compactions per trace")
    args = ap.parse_args()
    out_dir = Path(os.environ.get("OUT", ROOT / "bench" / "results"))
    work = out_dir / "compaction-runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    facts = _env_facts()
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    standalone = []
    for i in range(args.runs):
        for cond in ("on", "off") if i % 2 == 0 else ("off", "on"):
            run = work / f"{cond}{i}"
            r = _profile(run, compact=(cond == "on"))
            runs[cond].append(r)
            print(f"run {cond}{i}: {r}", flush=True)
            if cond == "on" and r["rc"] == 0:
                standalone.append(_standalone(run / "rank0" / "trace.json.gz", args.repeats))
                print(f"  standalone: {standalone[-1]}", flush=True)
    walls = [s["wall_s_median"] for s in standalone]
    med = {c: [r.get("steps_after_window_ms") for r in rs if r.get("steps_after_window_ms")] for c, rs in runs.items()}
    result = {
        **facts,
        "command": recorded_command([sys.executable, __file__, *sys.argv[1:]], out_dir),
        "workload": f"{WORKLOAD} --steps {RUN_STEPS}, stallscope profile --skip {SKIP} --steps {STEPS}",
        "goal_s": GOAL_S,
        "compaction_wall_s_median": round(statistics.median(walls), 3) if walls else None,
        "compaction_cpu_s_median": round(statistics.median(s["cpu_s_median"] for s in standalone), 3) if walls else None,
        "within_goal": bool(walls) and statistics.median(walls) <= GOAL_S,
        "steps_after_window_ms_median": {c: (round(statistics.median(v), 3) if v else None) for c, v in med.items()},
        "standalone": standalone,
        "in_run": runs,
    }
    path = out_dir / "compaction-cost.yaml"
    path.write_text(yaml.safe_dump(result, sort_keys=False, width=100))
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {path}: compaction {result['compaction_wall_s_median']} s wall (goal <= {GOAL_S} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
