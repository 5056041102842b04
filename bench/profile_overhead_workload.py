"""Workload for bench/profile_overhead_gpu.py: time training steps, write the per-step times as JSON.

    python bench/profile_overhead_workload.py --model transformer|mlp --warmup W --measure M --json OUT

Each step ends with ``torch.cuda.synchronize()`` (the same in every mode), so the host-side
cost of any instrumentation is fully exposed in the step time: a pessimistic measure.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def transformer(device: str, small: bool):
    d, layers, batch, seq = (64, 2, 4, 32) if small else (1024, 8, 16, 1024)
    layer = torch.nn.TransformerEncoderLayer(d_model=d, nhead=16 if not small else 4, dim_feedforward=4 * d,
                                             batch_first=True, norm_first=True, dropout=0.0)
    model = torch.nn.Sequential(torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False), torch.nn.Linear(d, d)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, seq, d, device=device)
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> None:
        with amp:
            loss = model(x).float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def mlp(device: str, small: bool):
    width = 256
    model = torch.nn.Sequential(*[m for _ in range(4) for m in (torch.nn.Linear(width, width), torch.nn.ReLU())]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    batches = [torch.randn(64, width, device=device) for _ in range(8)]
    it = [0]

    def step() -> None:
        x = batches[it[0] % len(batches)]
        it[0] += 1
        loss = model(x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["transformer", "mlp"], required=True)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--measure", type=int, default=70)
    ap.add_argument("--json", required=True)
    ap.add_argument("--small", action="store_true", help="tiny sizes for a CPU smoke run")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    step = (transformer if args.model == "transformer" else mlp)(device, args.small)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times_ms, epochs = [], []
    for i in range(args.warmup + args.measure):
        t0 = time.perf_counter()
        step()
        sync()
        dt = (time.perf_counter() - t0) * 1e3
        if i >= args.warmup:
            times_ms.append(dt)
            epochs.append(time.time_ns())
    with open(args.json, "w") as fh:
        json.dump({"model": args.model, "device": device, "step_ms": times_ms, "first_measured_index": args.warmup,
                   "end_epoch_ns": epochs}, fh)


if __name__ == "__main__":
    main()
