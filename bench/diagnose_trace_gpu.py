"""Record the large real trace the diagnose speed benchmark uses (run on the H200).

    OUT=/tmp/out python3 bench/diagnose_trace_gpu.py

30 profiled steps of a 6-layer transformer encoder (d_model 512, 8 heads, batch 16 x 256
tokens, AdamW with foreach=False so every parameter gets its own kernels) with
record_shapes, with_flops and with_stack, exported with torch.profiler and gzipped to
``$OUT/diagnose_big/rank0.pt.trace.json.gz``. Goal: >= 150k events and >= 50 MB of JSON. Writes
``$OUT/diagnose-trace.yaml`` with the figures and prints a short table last. Keep the trace out
of git (it is tens of MB); the CPU benchmark (bench/diagnose_speed.py) reads it.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile, schedule

STEPS = 30


def main() -> int:
    out = Path(os.environ.get("OUT", "bench/results"))
    dest_dir = out / "diagnose_big"
    dest_dir.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("diagnose_trace_gpu: no CUDA device", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    dev = "cuda"
    layer = nn.TransformerEncoderLayer(d_model=512, nhead=8, dim_feedforward=2048, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, num_layers=6, enable_nested_tensor=False), nn.Linear(512, 1000)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
    x = torch.randn(16, 256, 512, device=dev)
    y = torch.randint(0, 1000, (16, 256), device=dev)

    def step() -> None:
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, 1000), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], schedule=schedule(wait=1, warmup=2, active=STEPS, repeat=1),
                 record_shapes=True, with_flops=True, with_stack=True) as prof:
        for _ in range(STEPS + 3):
            step()
            prof.step()
    torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        json_bytes = raw.stat().st_size
        with raw.open("rb") as fh:
            events = len(json.load(fh)["traceEvents"])
        dest = dest_dir / "rank0.pt.trace.json.gz"
        with raw.open("rb") as src, gzip.open(dest, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
    figures = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "command": "OUT=$OUT python3 bench/diagnose_trace_gpu.py",
        "steps": STEPS,
        "events": events,
        "json_mb": round(json_bytes / 1e6, 1),
        "gz_mb": round(dest.stat().st_size / 1e6, 1),
        "record_s": round(time.perf_counter() - t0, 1),
        "meets_150k_events": events >= 150_000,
        "meets_50mb_json": json_bytes >= 50e6,
    }
    lines = [f"{k}: {json.dumps(v)}" for k, v in figures.items()]
    (out / "diagnose-trace.yaml").write_text("\n".join(lines) + "\n")
    print(f"{'events':>10} {'json MB':>9} {'gz MB':>7}")
    print(f"{events:>10} {figures['json_mb']:>9} {figures['gz_mb']:>7}")
    return 0 if figures["meets_150k_events"] and figures["meets_50mb_json"] else 1


if __name__ == "__main__":
    sys.exit(main())
