"""Record the H200 part of the accuracy corpus: public models (timm, torchvision, transformers),
healthy and planted, on one GPU and on two (DDP, FSDP, and a straggler under ``stallscope profile``).

    python3 bench/corpus/h200/record.py --out "$OUT"          # on a 2-GPU machine

Each recording runs ``bench/corpus/h200/workload.py`` in its own process (a failure costs that
recording only) and writes ``OUT/corpus-h200/<name>/`` (one ``rank-N.json.gz`` per rank, or a
stallscope run directory). ``OUT/corpus-h200.yaml`` gets the date, GPU, driver, torch, each command,
its exit code, wall seconds, the loop's own median step time per rank (CUDA events, ms) and the
trace sizes. Labels are written afterwards from reading the traces (``bench/corpus/h200/labels``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "workload.py"
sys.path.insert(0, str(HERE.parents[2]))  # for the sibling bench package (bench.recorded); stallscope is installed
from bench.recorded import recorded_command, recorded_text  # noqa: E402

# name -> (model, plant, ranks, how): how is "trace" (torch.profiler inside the script) or
# "stallscope" (the plain loop under `stallscope profile` with its default window).
RECORDINGS = {
    "timm_resnet50_healthy": ("resnet50", "none", 1, "trace"),
    "timm_resnet50_fp32": ("resnet50", "fp32", 1, "trace"),
    "tv_resnet18_pil_workers0": ("resnet18_tv", "pil", 1, "trace"),
    "hf_gpt2_healthy": ("gpt2", "none", 1, "trace"),
    "hf_gpt2_item_metric": ("gpt2", "item", 1, "trace"),
    "hf_gpt2_ema_clone": ("gpt2", "ema_clone", 1, "trace"),
    "hf_bert_eager_attention": ("bert", "eager_attn", 1, "trace"),
    "timm_vit_tiny_b2": ("vit_tiny", "none", 1, "trace"),
    "timm_convnext_pageable": ("convnext_tiny", "pageable", 1, "trace"),
    "ddp2_timm_resnet50_healthy": ("resnet50", "none", 2, "trace:ddp"),
    "fsdp2_hf_gpt2": ("gpt2", "none", 2, "trace:fsdp"),
    "ddp2_hf_gpt2_straggler_run": ("gpt2", "slow_rank", 2, "stallscope:ddp"),
}


def _sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as exc:  # noqa: BLE001 - the header only
        return f"unavailable ({exc.__class__.__name__})"


def _command(name: str, out: Path) -> list[str]:
    model, plant, ranks, how = RECORDINGS[name]
    dest = out / name
    args = ["--model", model, "--plant", plant]
    kind, _, par = how.partition(":")
    if par:
        args += ["--ddp", par]
    if kind == "trace":
        args += ["--trace", str(dest / "rank-{rank}.json.gz")]
        launch = (
            [sys.executable, str(WORKLOAD)]
            if ranks == 1
            else [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), str(WORKLOAD)]
        )
        return launch + args
    args += ["--steps", "40"]
    return [
        sys.executable,
        "-m",
        "stallscope.cli",
        "profile",
        "-q",
        "--no-diagnose",
        "-o",
        str(dest),
        "--",
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(ranks),
        str(WORKLOAD),
    ] + args


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/corpus-h200"))
    ap.add_argument("--only", default="", help="comma-separated recording names")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per recording")
    ap.add_argument("--budget-s", type=float, default=540.0, help="start no recording after this many seconds")
    a = ap.parse_args()
    out = Path(a.out) / "corpus-h200"
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in a.only.split(",") if n] or list(RECORDINGS)
    import torch

    rows = []
    start = time.time()
    for name in names:
        if time.time() - start > a.budget_s:
            rows.append({"name": name, "exit_code": None, "skipped": f"over the {a.budget_s:.0f} s budget"})
            continue
        cmd = _command(name, out)
        print(f"[corpus] {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, cwd=HERE.parents[2])
            rc, text = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, text = 124, f"timed out after {a.timeout} s: {exc.stdout or ''}"
        medians = {
            int(m.group(1)): float(m.group(2)) for m in re.finditer(r"RESULT .*?rank=(\d+) .*?median_ms=([\d.]+)", text)
        }
        files = sorted(p for p in (out / name).rglob("*") if p.is_file()) if (out / name).exists() else []
        row = {
            "name": name,
            "model": RECORDINGS[name][0],
            "plant": RECORDINGS[name][1],
            "ranks": RECORDINGS[name][2],
            "how": RECORDINGS[name][3],
            "command": recorded_command(cmd, a.out),
            "exit_code": rc,
            "wall_s": round(time.time() - t0, 1),
            "median_step_ms_by_rank": medians,
            "trace_bytes": {
                str(p.relative_to(out / name)): p.stat().st_size for p in files if p.name.endswith(".json.gz")
            },
        }
        if rc != 0:
            row["tail"] = recorded_text(text[-1500:], a.out)
        rows.append(row)
        print(f"[corpus] {name}: rc={rc} medians={medians} {row['wall_s']} s", file=sys.stderr, flush=True)
    import yaml

    doc = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": _sh(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]).splitlines(),
        "driver": _sh(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).splitlines()[:1],
        "torch": str(torch.__version__),
        "cuda": str(torch.version.cuda),
        "command": recorded_command([sys.executable, __file__, *sys.argv[1:]], a.out),
        "recordings": rows,
        "recorded_ok": sum(r["exit_code"] == 0 for r in rows),
        "skipped": [r["name"] for r in rows if r.get("skipped")],
    }
    (Path(a.out) / "corpus-h200.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
