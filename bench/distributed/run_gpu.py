"""Distributed scenarios on 2 GPUs (device kind nvidia-h200-x2), results in $OUT/distributed.yaml.

    python3 bench/distributed/run_gpu.py [--quick]

1. The link's all-reduce bus bandwidth (nccl-tests formula, 2(n-1)/n) over message sizes, the
   peak that the communication analyzer compares against.
2. Four DDP runs through `stallscope profile -- torchrun --nproc-per-node 2 ...`, each diagnosed:
   healthy; rank 1 slowed by extra compute; rank 1 slowed by its data loading; tiny buckets with
   overlap prevented. Expected: no straggler / straggler 1 (compute) / straggler 1 (data) /
   exposed communication.
The healthy run's rank folders are packed into $OUT/ddp_healthy_traces.tar.gz for the scaling
benchmark (bench/distributed/scale.py) and the tests' fixtures.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # for the sibling bench package (bench.recorded); stallscope is installed
from bench.recorded import recorded_command, recorded_path, recorded_text  # noqa: E402

BUSBW_SCRIPT = r"""
import os, time, torch, torch.distributed as dist
dist.init_process_group("nccl"); r = dist.get_rank(); n = dist.get_world_size()
torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
rows = []
for mb in (1, 16, 64, 256, 1024):
    x = torch.ones(mb * 2**20 // 4, device="cuda")
    for _ in range(3): dist.all_reduce(x)
    torch.cuda.synchronize(); times = []
    for _ in range(10):
        s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
        s.record(); dist.all_reduce(x); e.record(); torch.cuda.synchronize(); times.append(s.elapsed_time(e))
    times.sort(); t = times[len(times) // 2] / 1e3
    algbw = x.numel() * 4 / t / 1e9
    rows.append((mb, t * 1e3, algbw, algbw * 2 * (n - 1) / n))
if r == 0:
    for mb, ms, a, b in rows: print(f"BUSBW {mb} {ms:.4f} {a:.2f} {b:.2f}")
dist.destroy_process_group()
"""

SCENARIOS = {
    "healthy": (["--plant", "none"], None),
    "straggler_compute": (["--plant", "compute", "--slow-factor", "0.25"], ("comm-straggler", 1, "compute")),
    "straggler_data": (["--plant", "data", "--slow-factor", "0.1"], ("comm-straggler", 1, "data")),
    "exposed_buckets": (["--plant", "buckets"], ("comm-exposed", None, None)),
}


def measure_busbw(out: Path) -> list[dict]:
    script = out / "busbw.py"
    script.write_text(BUSBW_SCRIPT)
    proc = subprocess.run(["torchrun", "--nproc-per-node", "2", str(script)], capture_output=True, text=True, timeout=180)
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("BUSBW"):
            _, mb, ms, a, b = line.split()
            rows.append({"msg_mb": int(mb), "time_ms": float(ms), "algbw_gbps": float(a), "busbw_gbps": float(b)})
    if not rows:
        print(proc.stderr[-2000:])
    return rows


def run_scenario(name: str, extra: list[str], out: Path, quick: bool) -> dict:
    run = out / "runs" / name
    steps = "12" if quick else "40"
    cmd = [sys.executable, "-m", "stallscope.cli", "profile", "-q", "--no-diagnose", "-o", str(run), "--skip", "5",
           "--steps", "5", "--", "torchrun", "--nproc-per-node", "2", str(ROOT / "bench/distributed/ddp_train.py"),
           "--steps", steps, "--dim", "4096", "--layers", "8", "--batch", "512", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    runtime = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": recorded_text(proc.stderr[-1500:], out), "runtime_s": runtime}
    from stallscope.analyzers.report import build_report

    report = build_report(run)
    findings = report.get("findings", [])
    comm = [f for f in findings if f["category"] == "communication"]
    return {
        "runtime_s": round(runtime, 1),
        "step_time_ms_median": report["summary"]["step_time_ms"]["median"],
        "top_finding": findings[0]["id"] if findings else None,
        "communication_findings": [
            {"id": f["id"], "severity": f["severity"], "step_time_pct": f["impact"]["step_time_pct"],
             **{k: f["evidence"][k] for k in ("straggler_rank", "cause", "peer_wait_pct_of_step", "comm_exposed_pct",
                                                "late_by_chance_p") if k in f["evidence"]}}
            for f in comm],
        "per_rank": [_shown_rank(r, out) for r in report["per_rank"]] if report.get("per_rank") else None,
    }


def _shown_rank(rank: dict, out: Path) -> dict:
    """A rank's entry of the report with its trace path written without machine paths."""
    if isinstance(rank, dict) and rank.get("trace"):
        rank = dict(rank, trace=recorded_path(rank["trace"], out))
    return rank


def verdict(name: str, res: dict) -> bool:
    want = SCENARIOS[name][1]
    found = {f["id"]: f for f in res.get("communication_findings", [])}
    if want is None:
        return "comm-straggler" not in found
    fid, rank, cause = want
    if fid not in found or found[fid]["severity"] not in ("medium", "high"):
        return False
    return rank is None or (found[fid].get("straggler_rank") == rank and found[fid].get("cause") == cause)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    out = Path(os.environ.get("OUT", "/tmp/stallscope-distributed"))
    out.mkdir(parents=True, exist_ok=True)
    import torch

    result = {"date": dt.date.today().isoformat(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "gpus": torch.cuda.device_count(), "torch": str(torch.__version__), "cuda": str(torch.version.cuda),
              "command": recorded_command([sys.executable, __file__, *sys.argv[1:]], out), "busbw": measure_busbw(out),
              "scenarios": {}}
    try:
        result["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                          capture_output=True, text=True).stdout.split()[0]
    except Exception:
        result["driver"] = None
    if result["busbw"]:
        result["link_peak_busbw_gbps"] = max(r["busbw_gbps"] for r in result["busbw"])
    ok_all = True
    for name, (extra, _) in SCENARIOS.items():
        res = run_scenario(name, extra, out, args.quick)
        res["pass"] = verdict(name, res)
        ok_all &= res["pass"]
        result["scenarios"][name] = res
        print(f"{name:20s} pass={res['pass']} top={res.get('top_finding')} comm={res.get('communication_findings')}")
    result["all_pass"] = ok_all
    healthy = out / "runs" / "healthy"
    if healthy.is_dir():
        with tarfile.open(out / "ddp_healthy_traces.tar.gz", "w:gz") as tar:
            for p in sorted(healthy.glob("rank*/*")):
                tar.add(p, arcname=str(p.relative_to(healthy)))
            tar.add(healthy / "meta.yaml", arcname="meta.yaml")
    from stallscope.profiler.common import write_yaml

    write_yaml(out / "distributed.yaml", result)
    print("busbw:", result["busbw"])


if __name__ == "__main__":
    main()
