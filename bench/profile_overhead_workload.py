"""Workload for bench/profile_overhead_gpu.py: time training steps, write the per-step times as JSON.

    python bench/profile_overhead_workload.py --model transformer|mlp --warmup W --measure M --json OUT
    python bench/profile_overhead_workload.py --model mlp --paired 12 --block 600 --json OUT

Each step ends with ``torch.cuda.synchronize()`` (the same in every mode), so the host-side
cost of any instrumentation is fully exposed in the step time: a pessimistic measure. With
``--no-sync`` the host runs ahead as a real loop does (a launch-bound step is then the host's
issue time alone, without the GPU's idle clock changes between synchronised steps).

``--paired N``: one process runs N rounds of blocks, each round one block without and one with
the light telemetry (a ``profiler.Session`` whose window never starts; the same recorder,
hooks and sampler thread that ``stallscope profile`` injects), the order alternating. Fresh
processes of the same launch-bound workload differ by more than the effect measured (their
medians spread over +-25 % on the H200 host), so the comparison is made inside one process.
A first block runs before any Session ("pristine"): after a Session the hooks stay installed
and return at once, and the pristine block measures what that residue costs. ``--variants``
adds Session variants to each round (VARIANTS: without the CUDA event, with the sampler idle,
hooks only) to attribute the cost; the order of a round's blocks rotates.
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


def timed_steps(step, sync, n: int, drain=None) -> list:
    """Per-step wall times (ms); ``drain`` (a final synchronize) is charged to the last step."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        step()
        sync()
        if drain is not None and i == n - 1:
            drain()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def hook_cost_us(work: str, reps: int = 5) -> list:
    """Host microseconds the light telemetry adds to one optimizer step, per repetition: a tiny
    optimizer stepped without and inside a Session (the step hooks, the step bookkeeping and,
    once CUDA is initialised, one CUDA event per step)."""
    from overhead_components_gpu import per_call_us, tiny_optimizer
    from stallscope.profiler import Session

    opt = tiny_optimizer()
    added = []
    for r in range(reps):
        off = per_call_us(opt.step, reps=1)
        with Session(out=f"{work}/hooks-{r}", skip=10**9, steps=1, command=["hook-cost"]):
            added.append(per_call_us(opt.step, reps=1) - off)
    return added


VARIANTS = {
    # name: (sample_hz override or None, what to switch off in the Session's recorder)
    "light": (None, None),
    "light_no_events": (None, "events"),      # no CUDA event per step (and so no polling of them)
    "light_sampler_idle": (0.1, None),        # the sampler thread (NVML, psutil, event polling) nearly never runs
    "light_hooks_only": (None, "boundary"),   # the hooks fire, the recorder's step bookkeeping does not
}


def _light_block(step, sync, block: int, settle: int, sample_hz: float, out: str, variant: str, drain=None) -> list:
    from stallscope.profiler import Session

    hz, off = VARIANTS[variant]
    with Session(out=out, skip=10**9, steps=1, sample_hz=hz or sample_hz, command=["paired", variant]) as s:
        rec = s.recorder
        if off == "events" and rec is not None:
            rec.record_event = None
        if off == "boundary" and rec is not None:
            rec.boundary = lambda *a, **k: None
        try:
            return timed_steps(step, sync, block, drain)[settle:]
        finally:
            if rec is not None:
                rec.__dict__.pop("boundary", None)


def paired(step, sync, pairs: int, block: int, settle: int, sample_hz: float, work: str, drain=None,
           variants: tuple = ("light",)) -> dict:
    """Per-block step times: a pristine block, then ``pairs`` rounds of one block per mode ("off" and
    each variant), the order rotating from round to round."""
    modes = ("off",) + tuple(variants)
    out: dict = {"pristine": timed_steps(step, sync, block, drain)[settle:], "pairs": []}
    for p in range(pairs):
        pair = {}
        k = p % len(modes)
        order = modes[k:] + modes[:k]
        for mode in order:
            if mode == "off":
                pair[mode] = timed_steps(step, sync, block, drain)[settle:]
            else:
                pair[mode] = _light_block(step, sync, block, settle, sample_hz, f"{work}/session-{p}-{mode}", mode, drain)
        out["pairs"].append(pair)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["transformer", "mlp"], required=True)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--measure", type=int, default=70)
    ap.add_argument("--json", required=True)
    ap.add_argument("--small", action="store_true", help="tiny sizes for a CPU smoke run")
    ap.add_argument("--paired", type=int, default=0, help="pairs of (off, light) blocks in this one process")
    ap.add_argument("--block", type=int, default=600, help="steps per block with --paired")
    ap.add_argument("--settle", type=int, default=50, help="first steps of each block not counted (--paired)")
    ap.add_argument("--sample-hz", type=float, default=25.0)
    ap.add_argument("--variants", default="light",
                    help=f"comma-separated Session variants measured against off with --paired: {', '.join(VARIANTS)}")
    ap.add_argument("--work", default=None, help="folder for the Sessions' run directories (--paired)")
    ap.add_argument("--no-sync", action="store_true",
                    help="no synchronize per step (the host runs ahead, as a real loop does; one at the end of each "
                         "block or run, charged to its last step)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    step = (transformer if args.model == "transformer" else mlp)(device, args.small)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    drain = None
    if args.no_sync:
        sync, drain = (lambda: None), sync
    if args.paired:
        import tempfile

        timed_steps(step, sync, args.warmup)
        work = args.work or tempfile.mkdtemp(prefix="paired-")
        variants = tuple(v for v in args.variants.split(",") if v)
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown --variants {unknown}; choose from {list(VARIANTS)}")
        result = paired(step, sync, args.paired, args.block, args.settle, args.sample_hz, work, drain, variants)
        result["hook_cost_us"] = hook_cost_us(work)
        with open(args.json, "w") as fh:
            json.dump({"model": args.model, "device": device, **result}, fh)
        return
    times_ms, epochs = [], []
    for i in range(args.warmup + args.measure):
        t0 = time.perf_counter()
        step()
        sync()
        if drain is not None and i == args.warmup + args.measure - 1:
            drain()
        dt = (time.perf_counter() - t0) * 1e3
        if i >= args.warmup:
            times_ms.append(dt)
            epochs.append(time.time_ns())
    with open(args.json, "w") as fh:
        json.dump({"model": args.model, "device": device, "step_ms": times_ms, "first_measured_index": args.warmup,
                   "end_epoch_ns": epochs}, fh)


if __name__ == "__main__":
    main()
