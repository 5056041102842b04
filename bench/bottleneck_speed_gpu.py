"""Bottleneck Sampling speed on the GPU: a small DiT (random weights, SDPA, bf16) at 4096 tokens.

Wall time of 50 full-resolution Euler steps vs the staged schedules (median of several runs, CUDA
synchronised, after warm-up), the per-step cost at both resolutions, and the analytic benchmark's
quality ratio for each schedule at the same latent size (closed form, fixes/bottleneck_sampling/analytic.py).
Optionally saves torch.profiler traces of one unpatched and one patched sampling run for the
``attention`` analyzer (attention_unpatched.json.gz / attention_patched.json.gz, each < 5 MB).

    python3 bench/bottleneck_speed_gpu.py            # GPU: writes $OUT/bottleneck-sampling.yaml
    python3 bench/bottleneck_speed_gpu.py --quick    # CPU smoke run of every code path
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stallscope.fixes.bottleneck_sampling.analytic import GaussianField, exact_quality
from stallscope.fixes.bottleneck_sampling.sampler import bottleneck_sample, euler_sample
from stallscope.fixes.bottleneck_sampling.schedule import PAPER_SCHEDULE, TUNED_SCHEDULE
from stallscope.profiler.common import write_yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for the sibling bench package (bench.recorded); stallscope is installed
from bench.recorded import recorded_command  # noqa: E402

TRACE_LIMIT_BYTES = 5 * 1024 * 1024
ATTENTION_KERNEL = ("flash", "fmha", "attention", "sdpa", "_attn_", "cudnn_mha")


def sincos(n: int, dim: int, device: torch.device) -> torch.Tensor:
    """1-D sin-cos embedding of positions 0..n-1, shape (n, dim)."""
    freq = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=device) / (dim // 2))
    ang = torch.arange(n, device=device, dtype=torch.float32)[:, None] * freq[None]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


class Block(nn.Module):
    """DiT block: adaLN modulation, SDPA self-attention, GELU MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.ada = nn.Linear(dim, 6 * dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        s1, b1, g1, s2, b2, g2 = self.ada(F.silu(c)).unsqueeze(1).chunk(6, dim=-1)
        h = self.norm1(x) * (1 + s1) + b1
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + g1 * self.proj(a)
        return x + g2 * self.mlp(self.norm2(x) * (1 + s2) + b2)


class TinyDiT(nn.Module):
    """A small DiT over latents of any even size: 2x2 patches, sin-cos positions, adaLN blocks."""

    def __init__(self, channels: int = 16, dim: int = 768, depth: int = 12, heads: int = 12, patch: int = 2) -> None:
        super().__init__()
        self.channels, self.dim, self.patch = channels, dim, patch
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.t_mlp = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, channels * patch * patch)
        self._pos: dict[tuple, torch.Tensor] = {}
        self._freq: torch.Tensor | None = None

    def pos(self, h: int, w: int, ref: torch.Tensor) -> torch.Tensor:
        key = (h, w, ref.device, ref.dtype)
        if key not in self._pos:
            half = self.dim // 2
            ph, pw = sincos(h, half, ref.device), sincos(w, half, ref.device)
            grid = torch.cat([ph[:, None].expand(h, w, half), pw[None].expand(h, w, half)], dim=-1)
            self._pos[key] = grid.reshape(1, h * w, self.dim).to(ref.dtype)
        return self._pos[key]

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        b, c, H, W = x.shape
        p, h, w = self.patch, H // self.patch, W // self.patch
        tokens = x.reshape(b, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * p * p)
        if getattr(self, "_freq", None) is None or self._freq.device != x.device:
            self._freq = torch.exp(-math.log(10000.0) * torch.arange(128, device=x.device) / 128)[None]
        ang = sigma[:, None].float() * 1000 * self._freq
        t = torch.cat([ang.sin(), ang.cos()], dim=1).to(x.dtype)
        cond = self.t_mlp(t)
        z = self.embed(tokens) + self.pos(h, w, tokens)
        for blk in self.blocks:
            z = blk(z, cond)
        shift, scale = self.ada(F.silu(cond)).unsqueeze(1).chunk(2, dim=-1)
        z = self.out(self.norm(z) * (1 + scale) + shift)
        return z.reshape(b, h, w, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, H, W)


def timed(fn, repeats: int, sync) -> list[float]:
    out = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def attention_share(prof) -> tuple[float, float]:
    """(attention kernel ms, attention % of all kernel time) from a finished profiler."""
    attn = total = 0.0
    for e in prof.key_averages():
        dev = getattr(e, "self_device_time_total", None)
        if dev is None:
            dev = getattr(e, "self_cuda_time_total", 0.0)
        if not dev:
            continue
        total += dev
        if any(k in e.key.lower() for k in ATTENTION_KERNEL):
            attn += dev
    return attn / 1000.0, (100.0 * attn / total if total else 0.0)


def save_trace(run, path: Path, activities, repeats_steps: int) -> dict:
    """Profile one sampling run with a ProfilerStep per denoising step; gzip; keep it under 5 MB."""
    from torch.profiler import ProfilerAction, profile

    # a schedule (always RECORD) makes prof.step() emit the ProfilerStep#N ranges the analyzers count
    with profile(activities=activities, record_shapes=True, schedule=lambda step: ProfilerAction.RECORD) as prof:
        run(lambda *_: prof.step())
    raw = path.with_suffix("")  # .json
    prof.export_chrome_trace(str(raw))
    data = raw.read_bytes()
    raw.unlink()
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wb", compresslevel=9) as fh:
        fh.write(data)
    os.replace(tmp, path)
    attn_ms, attn_pct = attention_share(prof)
    return {"path": path.name, "bytes": path.stat().st_size, "attention_ms": round(attn_ms, 3),
            "attention_pct_of_kernel_time": round(attn_pct, 2), "steps": repeats_steps}


def gpu_info() -> dict:
    info = {"gpu": None, "driver": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        try:
            import pynvml

            pynvml.nvmlInit()
            drv = pynvml.nvmlSystemGetDriverVersion()
            info["driver"] = drv.decode() if isinstance(drv, bytes) else drv
        except Exception:  # NVML missing or unreadable: say so once in the YAML
            info["driver"] = "unknown (NVML unavailable)"
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model on the CPU: exercises every code path")
    ap.add_argument("--size", type=int, default=128, help="latent side (128 -> 4096 tokens with 2x2 patches)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=8,
                    help="images per sampling call: keeps the small DiT GPU-bound like a full-size model at batch 1 "
                         "(batch 1 is measured too and reported under batch1)")
    ap.add_argument("--no-trace", action="store_true", help="skip the two profiler traces")
    ap.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "bench" / "results")))
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.quick
    if not cuda and not args.quick:
        print("no CUDA GPU: running the --quick CPU variant instead (timings are not the benchmark)")
        args.quick = True
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    if args.quick:
        args.size, args.repeats = 32, 2
        torch.set_num_threads(1)  # a shared CPU: OpenMP barriers across busy cores cost more than they give
        model = TinyDiT(channels=4, dim=64, depth=2, heads=4)
        channels = 4
    else:
        model = TinyDiT()
        channels = 16
    model = model.to(device=device, dtype=dtype).eval()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if args.quick:
        args.batch = 1
    noise = torch.randn(args.batch, channels, args.size, args.size, device=device, dtype=dtype,
                        generator=torch.Generator(device).manual_seed(0))
    gen = lambda: torch.Generator(device).manual_seed(1)  # noqa: E731
    schedules = {"tuned": TUNED_SCHEDULE, "paper": PAPER_SCHEDULE}

    def full(hook=None):
        return euler_sample(model, noise, 50, hook=hook)

    def staged(name, hook=None):
        return bottleneck_sample(model, noise, schedules[name], generator=gen(), hook=hook)

    with torch.inference_mode():
        for _ in range(2):  # warm-up: kernels selected, caches filled at both sizes
            full()
            staged("tuned")
        full_ms = timed(full, args.repeats, sync)
        staged_ms = {n: timed(lambda n=n: staged(n), args.repeats, sync) for n in schedules}
        one = noise[:1].contiguous()
        for _ in range(2):
            euler_sample(model, one, 50)
            bottleneck_sample(model, one, TUNED_SCHEDULE, generator=gen())
        batch1_full = statistics.median(timed(lambda: euler_sample(model, one, 50), args.repeats, sync))
        batch1_staged = statistics.median(timed(lambda: bottleneck_sample(model, one, TUNED_SCHEDULE, generator=gen()),
                                                args.repeats, sync))
        low = noise[..., : args.size // 2, : args.size // 2].contiguous()
        sig = torch.full((1,), 0.5, device=device)
        step_full = statistics.median(timed(lambda: model(noise, sig), args.repeats * 3, sync))
        step_low = statistics.median(timed(lambda: model(low, sig), args.repeats * 3, sync))
        traces = {}
        if not args.no_trace:
            acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
            out_dir = Path(args.out)
            out_dir.mkdir(parents=True, exist_ok=True)
            for steps in (50, 25, 20):
                traces["unpatched"] = save_trace(lambda hook, s=steps: euler_sample(model, noise, s, hook=hook),
                                                 out_dir / "attention_unpatched.json.gz", acts, steps)
                if traces["unpatched"]["bytes"] < TRACE_LIMIT_BYTES:
                    break
            for sch in (TUNED_SCHEDULE, TUNED_SCHEDULE.with_steps(2, 8, 10)):  # 25, then 20 steps if too big
                traces["patched"] = save_trace(
                    lambda hook, sch=sch: bottleneck_sample(model, noise, sch, generator=gen(), hook=hook),
                    out_dir / "attention_patched.json.gz", acts, sch.total_steps)
                if traces["patched"]["bytes"] < TRACE_LIMIT_BYTES:
                    break
            for name, t in traces.items():
                if t["bytes"] >= TRACE_LIMIT_BYTES:
                    print(f"warning: {t['path']} is {t['bytes']} bytes (> 5 MB)")

    field = GaussianField()
    base_q = exact_quality(field, (args.size, args.size))
    full_med = statistics.median(full_ms)
    results = {}
    for name, sch in schedules.items():
        med = statistics.median(staged_ms[name])
        q = exact_quality(field, (args.size, args.size), sch)
        predicted = 50 * step_full / (sum(s.steps * (step_full if s.scale == 1 else step_low) for s in sch.stages))
        results[name] = {
            "staged_ms": round(med, 3), "staged_runs_ms": [round(x, 3) for x in staged_ms[name]],
            "speedup": round(full_med / med, 3), "predicted_speedup_from_step_costs": round(predicted, 3),
            "nfe": sch.total_steps, "quality_ratio": round(q / base_q, 4), "quality_staged": round(q, 4),
            "schedule": sch.to_dict(),
        }
    head = results["tuned"]
    doc = {
        "schema": "stallscope-bench/1",
        "name": "bottleneck-sampling",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **gpu_info(),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "command": recorded_command([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])], args.out),
        "quick": bool(args.quick),
        "model": {"kind": "TinyDiT (random weights, SDPA)", "dim": model.dim, "depth": len(model.blocks),
                  "patch": model.patch, "batch": args.batch, "latent": [channels, args.size, args.size],
                  "tokens_full": (args.size // 2) ** 2, "tokens_low": (args.size // 4) ** 2, "dtype": str(dtype)},
        "full_steps": 50,
        "full_ms": round(full_med, 3),
        "full_runs_ms": [round(x, 3) for x in full_ms],
        "staged_ms": head["staged_ms"],
        "speedup": head["speedup"],
        "quality_ratio": head["quality_ratio"],
        "quality_full": round(base_q, 4),
        "goal": {"speedup_min": 2.5, "quality_ratio_min": 0.9,
                 "met": head["speedup"] >= 2.5 and head["quality_ratio"] >= 0.9},
        "step_ms_full_res": round(step_full, 4),
        "step_ms_low_res": round(step_low, 4),
        "low_over_full_step_cost": round(step_low / step_full, 4),
        "schedules": results,
        "quality_metric": "analytic Gaussian field at the same latent size, closed form (bench/bottleneck_quality.py)",
        "traces": traces,
        "batch1": {"full_ms": round(batch1_full, 3), "staged_ms": round(batch1_staged, 3),
                   "speedup": round(batch1_full / batch1_staged, 3),
                   "note": "tuned schedule, one image per call: host-side launch overhead weighs more"},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(out / "bottleneck-sampling.yaml", doc)
    print(f"wrote {out / 'bottleneck-sampling.yaml'}")
    print(f"{'schedule':10s} {'ms':>10s} {'speedup':>8s} {'quality_ratio':>14s}")
    print(f"{'full 50':10s} {full_med:10.2f} {1.0:8.2f} {1.0:14.3f}")
    for name, r in results.items():
        print(f"{name:10s} {r['staged_ms']:10.2f} {r['speedup']:8.2f} {r['quality_ratio']:14.3f}")
    print(f"{'batch 1':10s} {batch1_full:10.2f} -> {batch1_staged:.2f} ms tuned: speedup {batch1_full / batch1_staged:.2f}")
    for name, t in traces.items():
        print(f"trace {name}: {t['bytes'] / 1e6:.2f} MB, attention {t['attention_pct_of_kernel_time']:.1f}% of kernel time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
