#!/usr/bin/env python3
"""GR-KAN kernels on the GPU: effective bandwidth of the fast kernels vs the KAT-like baseline,
against the copy bandwidth measured in the same run, and a KAT-T-like training step fast vs
baseline.

    python3 bench/flashkat_bench.py [--out $OUT/flashkat.yaml] [--budget-s 330]

Effective bandwidth = minimum bytes / median time; minimum bytes per element are 8 (forward:
read x, write y) and 12 (backward: read x and dy, write dx), all float32 as in KAT. Times are
medians (``triton.testing.do_bench``, which flushes L2 between repetitions); the baseline's
backward is timed with a few repetitions only (it takes seconds at the largest shape).
Writes YAML (date, GPU, driver, torch, the command, figures with units in the keys) and prints a
table last.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from stallscope.fixes.flashkat import baseline as B
from stallscope.fixes.flashkat import kernels as K
from stallscope.fixes.flashkat.modules import INIT_COEFFICIENTS
from stallscope.profiler.common import write_yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # for the sibling bench package (bench.models.kat_vit); stallscope is installed
    sys.path.insert(0, str(ROOT))
from bench.recorded import gpu_driver, recorded_command  # noqa: E402

L = 197
GROUPS = 8
HOST_MS: dict = {}
PROFILE_TO: Path | None = None


def _median_ms(fn, warmup_ms=25, rep_ms=200) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def _slow_median_ms(fn, budget_s: float, max_reps: int = 3) -> tuple[float, int]:
    """Median of a few event-timed calls for kernels that take up to seconds."""
    times = []
    for _ in range(max_reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if sum(times) / 1e3 > budget_s and len(times) >= 1:
            break
    return statistics.median(times), len(times)


def copy_tbps() -> float:
    n = 1 << 29  # 2 GiB of float32 each way
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), rep_ms=300)
    del src, dst
    return 2 * n * 4 / (ms * 1e-3) / 1e12


def _coefficients(gen):
    num, den = INIT_COEFFICIENTS["swish"]
    num = torch.tensor([num], device="cuda") + torch.randn(1, 6, device="cuda", generator=gen) * 0.01
    den = torch.tensor([den], device="cuda").repeat(GROUPS, 1) + torch.randn(GROUPS, 4, device="cuda", generator=gen) * 0.05
    return num.contiguous(), den.contiguous()


def kernel_shape(batch: int, width: int, copy: float, baseline_budget_s: float, deadline: float) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(batch * 7 + width)
    x = torch.randn(batch, L, width, device="cuda", generator=gen) * 3
    g = torch.randn(batch, L, width, device="cuda", generator=gen)
    num, den = _coefficients(gen)
    n = x.numel()
    rec: dict = {"shape": [batch, L, width], "groups": GROUPS, "elements": n}
    y_fast = K.flashkat_forward(x, num, den)
    dx_fast, dn_fast, dd_fast = K.flashkat_backward(x, num, den, g)
    again = K.flashkat_backward(x, num, den, g)
    rec["two_stage_bitwise_repeatable"] = bool(
        torch.equal(again[0], dx_fast) and torch.equal(again[1], dn_fast) and torch.equal(again[2], dd_fast)
    )
    del again
    fwd_ms = _median_ms(lambda: K.flashkat_forward(x, num, den))
    bwd_ms = _median_ms(lambda: K.flashkat_backward(x, num, den, g))
    bwd_atomic_ms = _median_ms(lambda: K.flashkat_backward(x, num, den, g, reduction="atomic"))
    rec["fwd_ms"] = round(fwd_ms, 4)
    rec["bwd_ms"] = round(bwd_ms, 4)
    rec["bwd_atomic_ms"] = round(bwd_atomic_ms, 4)
    rec["fwd_tbps"] = round(8 * n / (fwd_ms * 1e-3) / 1e12, 3)
    rec["bwd_tbps"] = round(12 * n / (bwd_ms * 1e-3) / 1e12, 3)
    rec["bwd_atomic_tbps"] = round(12 * n / (bwd_atomic_ms * 1e-3) / 1e12, 3)
    rec["copy_tbps"] = round(copy, 3)
    rec["fwd_pct_of_copy"] = round(100 * rec["fwd_tbps"] / copy, 1)
    rec["bwd_pct_of_copy"] = round(100 * rec["bwd_tbps"] / copy, 1)
    # baseline (KAT-like): forward cheap, backward limited to a few repetitions
    y_base = B.baseline_forward(x, num, den)
    rec["fwd_max_abs_diff_vs_baseline"] = float((y_fast - y_base).abs().max())
    base_fwd_ms = _median_ms(lambda: B.baseline_forward(x, num, den), rep_ms=100)
    rec["baseline_fwd_ms"] = round(base_fwd_ms, 4)
    rec["baseline_fwd_tbps"] = round(8 * n / (base_fwd_ms * 1e-3) / 1e12, 4)
    if time.monotonic() < deadline:
        dx_base, dn_base, dd_base = B.baseline_backward(x, num, den, g)  # warm-up and parity
        rec["dx_max_rel_diff_vs_baseline"] = float(((dx_fast - dx_base).abs() / (dx_base.abs() + 1)).max())
        base_bwd_ms, reps = _slow_median_ms(lambda: B.baseline_backward(x, num, den, g), baseline_budget_s)
        rec["baseline_bwd_ms"] = round(base_bwd_ms, 3)
        rec["baseline_bwd_reps"] = reps
        rec["baseline_bwd_tbps"] = round(12 * n / (base_bwd_ms * 1e-3) / 1e12, 5)
        rec["baseline_bwd_pct_of_copy"] = round(100 * rec["baseline_bwd_tbps"] / copy, 3)
        rec["bwd_speedup_vs_baseline"] = round(base_bwd_ms / bwd_ms, 1)
        rec["baseline_bwd_over_fwd"] = round(base_bwd_ms / base_fwd_ms, 1)
        if n <= 40_000_000:  # coefficient-gradient error against float64 (section 5c)
            from stallscope.fixes.flashkat import reference as R

            _, dn64, dd64 = R.reference_grads_fp64(x, num, den, g)
            mn, md = R.coefficient_mass_fp64(x, num, den, g)
            rec["coef_grad_err_over_mass_fast"] = float(max(((dn_fast - dn64).abs() / mn).max(), ((dd_fast - dd64).abs() / md).max()))
            rec["coef_grad_err_over_mass_baseline"] = float(max(((dn_base - dn64).abs() / mn).max(), ((dd_base - dd64).abs() / md).max()))
            del dn64, dd64
        del dx_base
    else:
        rec["baseline_bwd_skipped"] = "time budget"
    del x, g, y_fast, y_base, dx_fast
    torch.cuda.empty_cache()
    return rec


def train_step_ms(batch: int, act: str, steps: int, warmup: int, graph: bool = False, back_to_back: int = 1) -> float:
    """Median ms of one KAT-T-like training step (bf16 autocast, fused AdamW). With ``graph``
    the whole step (forward, backward, optimizer) is captured once in a CUDA graph and replayed,
    which removes the host's per-op cost from the measurement. ``back_to_back`` steps run between
    two events with no synchronization, as a training loop runs them (the host issues step k+1
    while the GPU finishes step k); the figure is their mean, the median over ``steps`` blocks.
    With 1, every step starts on an idle GPU and its host issue time is fully exposed."""
    from bench.models.kat_vit import kat_tiny

    torch.manual_seed(0)
    model = kat_tiny(act).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, fused=True, capturable=graph)
    images = torch.randn(batch, 3, 224, 224, device="cuda")
    labels = torch.randint(0, 1000, (batch,), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not graph):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()

    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step()
        torch.cuda.current_stream().wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(cuda_graph):
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            opt.step()
        run = cuda_graph.replay
        run()
    else:
        run = step
        for _ in range(warmup):
            step()
    torch.cuda.synchronize()
    host = []
    for _ in range(3 if act == "fast" and not graph else 0):  # host time to issue one step
        t = time.perf_counter()
        step()
        host.append((time.perf_counter() - t) * 1e3)
        torch.cuda.synchronize()
    if host:
        HOST_MS[(batch, act)] = statistics.median(host)
    if act == "fast" and not graph and PROFILE_TO is not None and batch == 128:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        PROFILE_TO.write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(back_to_back):
            run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / back_to_back)
    del model, opt, images
    torch.cuda.empty_cache()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(os.environ["OUT"]) / "flashkat.yaml" if os.environ.get("OUT") else ROOT / "bench/results/flashkat.yaml"
    ap.add_argument("--out", type=Path, default=default_out)
    ap.add_argument("--budget-s", type=float, default=330.0, help="stop starting baseline work after this many seconds")
    ap.add_argument("--batches", default="128,1024", help="kernel-shape batches ('' for none: end to end only)")
    ap.add_argument("--widths", default="192,768,3072")
    ap.add_argument("--e2e-batches", default="128,256,512")
    ap.add_argument("--profile", type=Path, default=None, help="write a torch.profiler table of one fast B=128 step here")
    args = ap.parse_args(argv)
    global PROFILE_TO
    PROFILE_TO = args.profile
    if not torch.cuda.is_available():
        print("flashkat_bench: no CUDA GPU here; nothing measured (run it on the GPU machine)")
        return 2
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    import triton

    copy = copy_tbps()
    doc: dict = {
        "schema_version": 1,
        "name": "flashkat",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(),
        "driver": gpu_driver(),
        "torch": str(torch.__version__),
        "triton": str(triton.__version__),
        "command": recorded_command([sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)], args.out.parent),
        "copy_tbps": round(copy, 3),
        "units": {"tbps": "TB/s (1e12 B/s), minimum bytes / median time", "ms": "milliseconds", "pct": "percent of copy_tbps"},
        "shapes": {},
        "e2e": {},
    }
    for batch in (int(b) for b in args.batches.split(",") if b):
        for width in (int(w) for w in args.widths.split(",")):
            key = f"B{batch}_L{L}_D{width}"
            try:
                doc["shapes"][key] = kernel_shape(batch, width, copy, 1.0 if batch <= 128 else 2.0, deadline)
            except torch.cuda.OutOfMemoryError:
                doc["shapes"][key] = {"skipped": "out of memory"}
                torch.cuda.empty_cache()
            print(key, doc["shapes"][key], flush=True)
    for batch in (int(b) for b in args.e2e_batches.split(",") if b):
        rec: dict = {"batch": batch}
        # steady state of a training loop: blocks of 5 back-to-back steps (the figure the speedup uses)
        rec["fast_step_ms"] = round(train_step_ms(batch, "fast", steps=7, warmup=3, back_to_back=5), 3)
        rec["fast_step_host_issue_ms"] = round(HOST_MS[(batch, "fast")], 3)
        rec["fast_step_synced_ms"] = round(train_step_ms(batch, "fast", steps=10, warmup=3), 3)
        try:
            rec["fast_graph_step_ms"] = round(train_step_ms(batch, "fast", steps=10, warmup=3, graph=True), 3)
        except Exception as exc:  # a capture failure is recorded, not fatal
            rec["fast_graph_error"] = repr(exc)[:300]
            torch.cuda.empty_cache()
        if time.monotonic() < deadline + 60:
            rec["baseline_step_ms"] = round(train_step_ms(batch, "baseline", steps=1 if batch >= 512 else 2, warmup=1), 2)
            rec["speedup"] = round(rec["baseline_step_ms"] / rec["fast_step_ms"], 1)
            rec["fast_img_per_s"] = round(batch / rec["fast_step_ms"] * 1e3, 1)
            rec["baseline_img_per_s"] = round(batch / rec["baseline_step_ms"] * 1e3, 2)
            if batch == 128 and "fast_graph_step_ms" in rec:
                try:
                    rec["baseline_graph_step_ms"] = round(train_step_ms(batch, "baseline", steps=1, warmup=1, graph=True), 2)
                    rec["speedup_cuda_graph"] = round(rec["baseline_graph_step_ms"] / rec["fast_graph_step_ms"], 1)
                except Exception as exc:
                    rec["baseline_graph_error"] = repr(exc)[:300]
            elif "fast_graph_step_ms" in rec:
                # baseline is GPU-bound (host time < 5 % of its step), so its eager time stands in
                rec["speedup_fast_graph_vs_baseline_eager"] = round(rec["baseline_step_ms"] / rec["fast_graph_step_ms"], 1)
        else:
            rec["baseline_skipped"] = "time budget"
        doc["e2e"][f"B{batch}"] = rec
        print("e2e", rec, flush=True)
    doc["tuned_tiles"] = K.tuned_configs()
    doc["elapsed_s"] = round(time.monotonic() - t0, 1)
    write_yaml(args.out, doc)
    print(f"\nwrote {args.out}  (copy {copy:.3f} TB/s)")
    print(f"{'shape':<22}{'fwd TB/s':>9}{'%copy':>7}{'bwd TB/s':>9}{'%copy':>7}{'base bwd ms':>12}{'bwd x':>8}")
    for key, r in doc["shapes"].items():
        if "fwd_tbps" in r:
            print(f"{key:<22}{r['fwd_tbps']:>9.3f}{r['fwd_pct_of_copy']:>7.1f}{r['bwd_tbps']:>9.3f}{r['bwd_pct_of_copy']:>7.1f}"
                  f"{r.get('baseline_bwd_ms', float('nan')):>12.2f}{r.get('bwd_speedup_vs_baseline', float('nan')):>8.1f}")
    for key, r in doc["e2e"].items():
        print(f"e2e {key}: fast {r['fast_step_ms']:.2f} ms (graph {r.get('fast_graph_step_ms', float('nan')):.2f})  "
              f"baseline {r.get('baseline_step_ms', float('nan')):.1f} ms  speedup {r.get('speedup', float('nan'))}x  "
              f"graph speedup {r.get('speedup_cuda_graph', r.get('speedup_fast_graph_vs_baseline_eager', float('nan')))}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
