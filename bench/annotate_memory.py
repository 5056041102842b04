"""Memory and time of ``diagnose --annotated-trace`` vs plain ``diagnose``, by trace size.

    python3 bench/annotate_memory.py [--sizes 200000 2000000] [--keep DIR]

Builds synthetic Kineto-like traces (CPU ops, their cudaLaunchKernel, kernels, flow events,
``ProfilerStep#N`` ranges) of each size in a temporary folder (``--keep DIR`` keeps and reuses
them), then runs ``python -m stallscope.cli diagnose T --format json`` with and without
``--annotated-trace OUT.json.gz`` as fresh subprocesses. Peak memory is PSS summed over the
process and its forked workers, sampled every 20 ms (``bench/diagnose_speed.py``'s ``measure``),
and ru_maxrss of the largest process; wall and CPU seconds come from a second run that nothing
samples. Writes ``bench/results/annotate-memory.yaml`` (or
``$OUT/annotate-memory.yaml``). The goal: the annotated run's extra memory over plain diagnose
stays roughly the same whatever the trace size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stallscope.bench.diagnose_speed import measure
from stallscope.profiler.common import read_yaml, write_yaml

ROOT = Path(__file__).resolve().parents[1]
OPS_PER_STEP = 1000  # 5 events per op: cpu_op, cudaLaunchKernel, kernel, flow start and end
KERNELS = [
    "void at::native::vectorized_elementwise_kernel<4, at::native::AbsFunctor<float> >(int, at::native::AbsFunctor<float>, at::detail::Array<char*, 2>)",
    "ampere_sgemm_128x64_tn",
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<float> > >",
]


def _step_events(step: int, t0: float, corr0: int) -> list[dict[str, Any]]:
    """One step: its ProfilerStep range and OPS_PER_STEP launched ops (5 events each)."""
    out: list[dict[str, Any]] = []
    t = t0
    for i in range(OPS_PER_STEP):
        corr, ext = corr0 + i, corr0 + i
        k = KERNELS[i % len(KERNELS)]
        cpu = {"ph": "X", "cat": "cpu_op", "name": "aten::abs", "pid": 4242, "tid": 4242, "ts": round(t, 3)}
        cpu.update(dur=20.0, args={"External id": ext, "Record function id": 0, "Sequence number": ext})
        launch = {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 4242, "tid": 4242}
        launch.update(ts=round(t + 5, 3), dur=4.0, args={"External id": ext, "cbid": 211, "correlation": corr})
        kern = {"ph": "X", "cat": "kernel", "name": k, "pid": 0, "tid": 7, "ts": round(t + 12, 3), "dur": 15.0}
        kern["args"] = {"External id": ext, "device": 0, "stream": 7, "correlation": corr, "grid": [128, 1, 1]}
        flow = {"id": corr, "pid": 4242, "tid": 4242, "ts": round(t + 5, 3), "cat": "ac2g", "name": "ac2g"}
        out += [cpu, launch, kern, {"ph": "s", **flow}, {"ph": "f", "bp": "e", **flow, "pid": 0, "tid": 7}]
        t += 25.0
    out.insert(0, {"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{step}", "pid": 4242, "tid": 4242})
    out[0].update(ts=round(t0, 3), dur=round(t - t0, 3), args={"External id": corr0})
    return out


def make_trace(path: Path, events: int) -> int:
    """Write a gzipped synthetic trace of about ``events`` events, step by step; returns the count."""
    per_step = 5 * OPS_PER_STEP + 1
    steps = max(1, events // per_step)
    written = 0
    with gzip.open(path, "wt", compresslevel=1) as fh:
        fh.write('{\n  "schemaVersion": 1,\n  "deviceProperties": [{"id": 0, "name": "NVIDIA H200"}],\n')
        fh.write('  "traceEvents": [\n')
        meta = [
            {"ph": "M", "name": "process_name", "pid": 4242, "tid": 0, "args": {"name": "python"}},
            {"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": "GPU 0"}},
        ]
        fh.write(",\n".join(json.dumps(e) for e in meta))
        written += len(meta)
        for s in range(steps):
            evs = _step_events(s, 1000.0 + s * 25.0 * (OPS_PER_STEP + 4), 1 + s * OPS_PER_STEP)
            fh.write(",\n" + ",\n".join(json.dumps(e) for e in evs))
            written += len(evs)
        fh.write('\n  ],\n  "traceName": "synthetic",\n  "baseTimeNanoseconds": 1700000000000000000\n}\n')
    return written


def _timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one subprocess run with nothing sampling it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"diagnose failed (exit {proc.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - t0, usage.ru_utime + usage.ru_stime


def _run(trace: Path, annotated: Path | None) -> dict[str, float]:
    """Memory of one run (PSS sampled), then time of another (the sampler's reads of a large
    process's smaps take CPU from it on a small machine)."""
    cmd = [sys.executable, "-m", "stallscope.cli", "diagnose", str(trace), "--format", "json"]
    if annotated is not None:
        cmd += ["--annotated-trace", str(annotated)]
    _, pss, code, rss, _ = measure(cmd)
    if code != 0:
        raise SystemExit(f"diagnose failed (exit {code}): {' '.join(cmd)}")
    wall, cpu = _timed(cmd)
    return {"peak_mb": round(pss, 1), "rss_mb": round(rss, 1), "seconds": round(wall, 2), "cpu_s": round(cpu, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200_000, 2_000_000])
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep (and reuse) the traces in")
    ap.add_argument(
        "--before", type=Path, default=None, help="an earlier result to carry along (e.g. another version's)"
    )
    ap.add_argument("--label", default=None, help="what was measured (e.g. the version or change)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="annotate-memory-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for size in args.sizes:
            trace = folder / f"synthetic-{size}.json.gz"
            count_file = trace.with_suffix(".count")
            if not trace.is_file() or not count_file.is_file():
                count_file.write_text(str(make_trace(trace, size)))
            events = int(count_file.read_text())
            plain = _run(trace, None)
            out = Path(tmp) / f"annotated-{size}.json.gz"
            ann = _run(trace, out)
            rows.append(
                {
                    "events": events,
                    "trace_gz_mb": round(trace.stat().st_size / 2**20, 1),
                    "annotated_gz_mb": round(out.stat().st_size / 2**20, 1),
                    "diagnose_peak_mb": plain["peak_mb"],
                    "annotated_peak_mb": ann["peak_mb"],
                    "extra_mb": round(ann["peak_mb"] - plain["peak_mb"], 1),
                    "ratio": round(ann["peak_mb"] / plain["peak_mb"], 2),
                    "diagnose_rss_mb": plain["rss_mb"],
                    "annotated_rss_mb": ann["rss_mb"],
                    "diagnose_seconds": plain["seconds"],
                    "annotated_seconds": ann["seconds"],
                    "diagnose_cpu_s": plain["cpu_s"],
                    "annotated_cpu_s": ann["cpu_s"],
                }
            )
            out.unlink()
            print(rows[-1], flush=True)
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python3 bench/annotate_memory.py --sizes " + " ".join(map(str, args.sizes)),
        "measured": "python -m stallscope.cli diagnose T --format json [--annotated-trace OUT.json.gz]",
        "peak": "PSS summed over the process and its workers (20 ms samples); rss: ru_maxrss of the largest",
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
        "python": sys.version.split()[0],
        "sizes": rows,
    }
    if args.label:
        result["label"] = args.label
    if args.before is not None:
        before = read_yaml(args.before)
        result["before"] = {k: before.get(k) for k in ("label", "date", "sizes")}
    dest = Path(os.environ.get("OUT") or ROOT / "bench" / "results") / "annotate-memory.yaml"
    write_yaml(dest, result)
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
