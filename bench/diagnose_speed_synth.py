"""Stand-in trace for bench/diagnose_speed.py until the real H200 trace is recorded.

    python bench/diagnose_speed_synth.py SRC.json DEST.json COPIES

Takes a real CPU torch.profiler trace (e.g. the one tests/diagnose_traces.py records with
with_stack and shapes), repeats its steps COPIES times, and gives every CPU op shorter than
300 us one cudaLaunchKernel and one kernel (correlated, on stream 7), written with Kineto's
indentation. The event mix (~35 % Python frames, 1 kernel per short op) is a CPU-side stand-in,
not a GPU measurement: the figures it yields are labelled ``trace_kind: synthetic``.
"""
from __future__ import annotations

import gzip
import json
import sys

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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
