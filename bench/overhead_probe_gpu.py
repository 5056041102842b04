"""Where the light telemetry's cost on a launch-bound step comes from (GPU machine).

    python3 bench/overhead_probe_gpu.py [--rounds 3] [--measure 200]

Runs the small-MLP workload of bench/profile_overhead_gpu.py unprofiled and in light mode with
one telemetry part turned off at a time (NVML sampling, PCIe reads, the sampler thread
altogether), interleaved in rounds with the order rotated; median step time per variant over
all rounds. Writes $OUT/overhead-probe.yaml.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
from pathlib import Path

from stallscope.profiler.common import write_yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for the sibling bench package (bench.profile_overhead_gpu); stallscope is installed

from bench.profile_overhead_gpu import run_once  # noqa: E402
from bench.recorded import recorded_command  # noqa: E402

VARIANTS = {
    "unprofiled": ("unprofiled", 25.0, {}),
    "light": ("light", 25.0, {}),
    "light_no_pcie": ("light", 25.0, {"STALLSCOPE_PCIE_PERIOD_S": "0"}),
    "light_pcie_5s": ("light", 25.0, {"STALLSCOPE_PCIE_PERIOD_S": "5"}),
    "light_no_nvml": ("light", 25.0, {"STALLSCOPE_NVML": "0"}),
    "light_sampler_0.1hz": ("light", 0.1, {}),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--measure", type=int, default=200)
    ap.add_argument("--model", default="mlp")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ovh-probe-"))
    steps: dict[str, list[float]] = {k: [] for k in VARIANTS}
    names = list(VARIANTS)
    for r in range(args.rounds):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            mode, hz, extra = VARIANTS[name]
            data = run_once(args.model, mode, work, f"{name}-{r}", args.warmup, args.measure, False, hz, extra)
            steps[name] += data["step_ms"]
            print(f"round {r} {name:<22} median {statistics.median(data['step_ms']):.4f} ms", flush=True)
    base = statistics.median(steps["unprofiled"])
    doc = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "command": recorded_command([sys.executable, __file__, *sys.argv[1:]]),
           "model": args.model, "rounds": args.rounds, "steps_per_variant": {k: len(v) for k, v in steps.items()},
           "median_step_ms": {k: round(statistics.median(v), 4) for k, v in steps.items()},
           "overhead_pct": {k: round((statistics.median(v) / base - 1) * 100, 2) for k, v in steps.items()}}
    try:
        import torch

        doc["torch"] = str(torch.__version__)
        doc["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        pass
    out = Path(os.environ.get("OUT") or ROOT / "bench" / "results") / "overhead-probe.yaml"
    write_yaml(out, doc)
    for k in VARIANTS:
        print(f"{k:<22} {doc['median_step_ms'][k]:>9.4f} ms  {doc['overhead_pct'][k]:>+7.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
