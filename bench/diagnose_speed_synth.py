"""Synthetic GPU-like trace from a real CPU one, and the diagnose-vs-HTA figures measured on it.

    python3 bench/diagnose_speed_synth.py SRC.json DEST.json COPIES
    python3 bench/diagnose_speed_synth.py bench [--copies 60] [--runs 3] [--hta-python PY] [--out FILE] [...]

The first form takes a real CPU torch.profiler trace (e.g. the one tests/diagnose_traces.py records
with with_stack and shapes), repeats its steps COPIES times, and gives every CPU op shorter than
300 us one cudaLaunchKernel and one kernel (correlated, on stream 7), written with Kineto's
indentation. The event mix (~35 % Python frames, 1 kernel per short op) is a CPU-side stand-in,
not a GPU measurement.

``bench`` makes ``bench/results/diagnose-speed-synthetic.yaml`` in one command: it records the CPU
steps trace (``tests/diagnose_traces.py`` ``cpu_steps_trace``), builds the stand-in from it
(``--copies``), runs ``bench/diagnose_speed.py --trace STAND-IN`` on it (``--runs`` rounds, no
small traces, HTA through ``--hta-python`` when given, other options passed on to it), and
writes that script's figures under ``trace_kind: synthetic`` with this command; every path in
them is written as bench/recorded.py records paths.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

KERNEL = ("void at::native::vectorized_elementwise_kernel<4, at::native::AbsFunctor<float> >"
          "(int, at::native::AbsFunctor<float>, at::detail::Array<char*, 2>)")


def main(src: str, dest: str, copies: int) -> int:
    with open(src) as fh:
        doc = json.load(fh)
    events = doc["traceEvents"]
    steps = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")]
    lo = min(e["ts"] for e in steps)
    hi = max(e["ts"] + e["dur"] for e in steps)
    body = [e for e in events if e.get("ph") == "X" and e.get("cat") != "Trace" and lo <= e["ts"] < hi]
    out = [e for e in events if e.get("ph") == "M"]
    span = hi - lo
    corr = 1
    doc["deviceProperties"] = [{"id": 0, "name": "NVIDIA H200", "totalGlobalMem": 150_000_000_000, "computeMajor": 9, "computeMinor": 0}]
    for c in range(copies):
        for e in body:
            e2 = dict(e, ts=round(e["ts"] + c * span, 3))
            if e2["name"].startswith("ProfilerStep#"):
                e2["name"] = f"ProfilerStep#{c * 10 + int(e['name'].split('#')[1])}"
            out.append(e2)
            if e.get("cat") == "cpu_op" and e["dur"] < 300:
                t = e2["ts"] + e["dur"] / 2
                ext = e.get("args", {}).get("External id", 0)
                out.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": e["pid"], "tid": e["tid"],
                            "ts": round(t, 3), "dur": 3.5, "args": {"External id": ext, "cbid": 211, "correlation": corr}})
                out.append({"ph": "X", "cat": "kernel", "name": KERNEL, "pid": 0, "tid": 7, "ts": round(t + 9, 3), "dur": 6.25,
                            "args": {"External id": ext, "queued": 0, "device": 0, "context": 1, "stream": 7, "correlation": corr,
                                     "registers per thread": 16, "shared memory": 0, "blocks per SM": 1.5, "warps per SM": 6.0,
                                     "grid": [128, 1, 1], "block": [128, 1, 1], "est. achieved occupancy %": 10}})
                out.append({"ph": "f", "id": corr, "pid": 0, "tid": 7, "ts": round(t + 9, 3), "cat": "ac2g", "name": "ac2g", "bp": "e"})
                corr += 1
    doc["traceEvents"] = out
    opener = gzip.open if dest.endswith(".gz") else open
    with opener(dest, "wt") as fh:
        json.dump(doc, fh, indent=2)
    print(f"{len(out)} events -> {dest}")
    return 0


def _scrubbed(value: Any) -> Any:
    """``value`` with every string's paths rewritten as results record them (bench/recorded.py): the
    stand-in and its folder lie in a temporary folder (``$TMP``), the interpreters are ``python3``."""
    from bench.recorded import recorded_text

    if isinstance(value, str):
        return recorded_text(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return value


def bench(argv: list[str]) -> int:
    """Record, build, measure (``bench/diagnose_speed.py``), label and write; see the module docstring."""
    ap = argparse.ArgumentParser(prog="diagnose_speed_synth.py bench", description="diagnose vs HTA on the stand-in")
    ap.add_argument("--copies", type=int, default=60, help="times the CPU trace's steps are repeated")
    ap.add_argument("--runs", type=int, default=3, help="rounds of bench/diagnose_speed.py")
    ap.add_argument("--hta-python", help="interpreter with HolisticTraceAnalysis installed (omit: ours only)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "diagnose-speed-synthetic.yaml")
    args, extra = ap.parse_known_args(argv)  # the rest goes to bench/diagnose_speed.py (e.g. --wait-load 1.5)
    sys.path.insert(0, str(ROOT))  # tests.diagnose_traces and bench.recorded; stallscope is installed
    import yaml

    from bench.recorded import recorded_command
    from tests import diagnose_traces

    work = Path(tempfile.mkdtemp(prefix="diagnose-speed-synth-"))
    try:
        diagnose_traces.use_cache(work / "cpu")
        stand_in = work / "rank0.json.gz"
        main(str(diagnose_traces.cpu_steps_trace()), str(stand_in), args.copies)
        cmd = [sys.executable, str(ROOT / "bench" / "diagnose_speed.py"), "--trace", str(stand_in),
               "--runs", str(args.runs), "--small", "--startup-runs", "1"]  # fmt: skip
        if args.hta_python:
            cmd += ["--hta-python", args.hta_python]
        cmd += extra
        measured = work / "measured"
        proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OUT=str(measured)))
        if proc.returncode != 0:
            print(f"diagnose_speed_synth: bench/diagnose_speed.py exited {proc.returncode}; nothing written",
                  file=sys.stderr)  # fmt: skip
            return proc.returncode
        figures = yaml.safe_load((measured / "diagnose-speed.yaml").read_text())
        figures["measured_by"] = figures.pop("command", None)
        # HTA's interpreter is a virtual environment's, not "python3": named as the install line names it
        shown = list(argv)
        for i, a in enumerate(argv):
            if a == "--hta-python" and i + 1 < len(argv):
                shown[i + 1] = "VENV/bin/python"
            elif a.startswith("--hta-python="):
                shown[i] = "--hta-python=VENV/bin/python"
        doc = {
            "name": "diagnose-speed-synthetic",
            "command": recorded_command([sys.executable, __file__, "bench", *shown], args.out.parent),
            "trace_kind": f"synthetic: the CPU steps trace of tests/diagnose_traces.py (cpu_steps_trace) repeated "
            f"{args.copies} times, one cudaLaunchKernel and one kernel per CPU op under 300 us; a CPU-side stand-in, "
            "not a GPU measurement (the real traces: bench/diagnose_speed.py on bench/corpus/h200)",
            **_scrubbed(figures),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(yaml.safe_dump(doc, sort_keys=False, width=110))
        print(f"wrote {args.out}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["bench"]:
        sys.exit(bench(sys.argv[2:]))
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
