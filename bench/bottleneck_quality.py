"""Bottleneck Sampling quality without weights: the analytic Gaussian-field benchmark (CPU).

The "model" is the exact velocity of a stationary Gaussian field (fixes/bottleneck_sampling/analytic.py),
valid at every resolution, so all error comes from the sampler: Euler discretisation, resampling and
re-noising. Each schedule is scored two ways against the true distribution:

* ``exact``: per-mode variance computed in closed form (every step is linear per Fourier mode), with
  ideal band-limited resampling; no Monte-Carlo noise.
* ``mc``: Monte-Carlo samples through the real sampler code with the schedule's own kernels
  (area down, bicubic up), Frechet distance per Fourier mode of the empirical distribution.

``quality = 1 - RMS relative amplitude error per mode``; ``quality_ratio`` divides by the 50-step
full-resolution Euler baseline's quality (the issue's goal: >= 0.9). ``cost`` is in full-resolution
steps with half of a full step's time in attention (N^2) and half in linear layers (N).

    python3 bench/bottleneck_quality.py [--size 64] [--samples 256] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from stallscope.fixes.bottleneck_sampling.analytic import GaussianField, exact_quality
from stallscope.fixes.bottleneck_sampling.sampler import bottleneck_sample, euler_sample
from stallscope.fixes.bottleneck_sampling.schedule import (
    PAPER_SCHEDULE,
    TUNED_SCHEDULE,
    BottleneckSchedule,
    Stage,
)
from stallscope.profiler.common import write_yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for the sibling bench package (bench.recorded); stallscope is installed
from bench.recorded import recorded_command  # noqa: E402

QUADRATIC_SHARE = 0.5


def paper_with_shifts(shifts: tuple[float, float, float]) -> BottleneckSchedule:
    """The paper schedule with the port's fixed per-stage shifts (9 / 6 / 9)."""
    return BottleneckSchedule(stages=tuple(Stage(s.scale, s.steps, s.sigma_start, s.sigma_end, sh)
                                           for s, sh in zip(PAPER_SCHEDULE.stages, shifts)))


def schedules() -> dict[str, BottleneckSchedule]:
    """Named schedules on the quality-vs-cost curve."""
    out = {
        "paper_4+13+8": PAPER_SCHEDULE,
        "paper_4+13+8_shift9-6-9": paper_with_shifts((9.0, 6.0, 9.0)),
        "tuned_3+10+12": TUNED_SCHEDULE,
    }
    for steps in ((2, 6, 8), (3, 8, 10), (4, 13, 16), (6, 16, 20)):
        out["tuned_" + "+".join(map(str, steps))] = TUNED_SCHEDULE.with_steps(*steps)
    for steps in ((3, 10, 6), (8, 26, 16)):
        out["paper_" + "+".join(map(str, steps))] = PAPER_SCHEDULE.with_steps(*steps)
    return out


def cost_of(schedule: BottleneckSchedule | None, steps: int = 50) -> float:
    return float(steps) if schedule is None else schedule.relative_cost(QUADRATIC_SHARE)


def run(size: int, samples: int, channels: int, seed: int, mc: bool, log=print) -> dict:
    field = GaussianField()
    shape = (size, size)
    base_exact = exact_quality(field, shape)
    noise = torch.randn((samples, channels, *shape), generator=torch.Generator().manual_seed(seed))
    spectra: dict[str, dict] = {}
    base_mc = None
    if mc:
        score = field.score(euler_sample(field, noise, 50))
        base_mc = score.quality
        spectra["full_50"] = {"k": score.radial_k, "power_ratio": score.radial_power_ratio}
    rows: dict[str, dict] = {}

    def record(name: str, schedule: BottleneckSchedule | None, steps: int) -> None:
        t0 = time.perf_counter()
        q_exact = exact_quality(field, shape, schedule, steps)
        row = {
            "nfe": steps if schedule is None else schedule.total_steps,
            "cost_full_steps": round(cost_of(schedule, steps), 3),
            "speedup_model": round(50.0 / cost_of(schedule, steps), 3),
            "quality_exact": round(q_exact, 4),
            "quality_ratio_exact": round(q_exact / base_exact, 4),
        }
        if mc:
            if schedule is None:
                out = euler_sample(field, noise, steps)
            else:
                out = bottleneck_sample(field, noise, schedule, generator=torch.Generator().manual_seed(seed + 1))
            score = field.score(out)
            row.update({"quality_mc": round(score.quality, 4), "quality_ratio_mc": round(score.quality / base_mc, 4),
                        "fd_rel_mc": round(score.fd_rel, 5)})
            spectra[name] = {"k": score.radial_k, "power_ratio": score.radial_power_ratio}
        if schedule is not None:
            row["schedule"] = schedule.to_dict()
        rows[name] = row
        log(f"  {name:28s} nfe {row['nfe']:3d}  cost {row['cost_full_steps']:6.2f}  "
            f"q_exact {row['quality_ratio_exact']:.3f}" + (f"  q_mc {row['quality_ratio_mc']:.3f}" if mc else "")
            + f"  ({time.perf_counter() - t0:.1f}s)")

    for steps in (50, 25, 15, 10):
        record(f"full_{steps}", None, steps)
    for name, sch in schedules().items():
        record(name, sch, 0)
    return {
        "size": size, "samples": samples if mc else 0, "channels": channels,
        "baseline_quality_exact": round(base_exact, 4),
        "baseline_quality_mc": None if base_mc is None else round(base_mc, 4),
        "mc_floor": round(math.sqrt(1.25 / (samples * channels)), 4) if mc else None,
        "rows": rows, "spectra": spectra,
    }


def plot(result: dict, out_dir: Path) -> list[str]:
    """Spectra and quality-vs-cost plots as SVG (matplotlib optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (pip install -e .[html])")
        return []
    written = []
    spectra = result["spectra"]
    if spectra:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in ("full_50", "full_25", "paper_4+13+8", "tuned_3+10+12"):
            if name in spectra:
                ax.plot(spectra[name]["k"], spectra[name]["power_ratio"], label=name)
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_xlabel("|k| (cycles per image)")
        ax.set_ylabel("sampled power / true power")
        ax.set_title(f"Analytic field, {result['size']}x{result['size']} latent")
        ax.legend()
        path = out_dir / "bottleneck-spectra.svg"
        fig.savefig(path)
        plt.close(fig)
        written.append(str(path))
    fig, ax = plt.subplots(figsize=(6, 4))
    key = "quality_ratio_mc" if spectra else "quality_ratio_exact"
    for prefix, marker in (("full_", "o"), ("paper_", "s"), ("tuned_", "^")):
        pts = sorted((r["cost_full_steps"], r[key]) for n, r in result["rows"].items()
                     if n.startswith(prefix) and "shift" not in n)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=prefix.rstrip("_"))
    ax.axhline(0.9, color="r", lw=0.5, ls="--")
    ax.set_xlabel("cost (full-resolution steps)")
    ax.set_ylabel("quality / quality of 50 full steps")
    ax.legend()
    path = out_dir / "bottleneck-quality-cost.svg"
    fig.savefig(path)
    plt.close(fig)
    written.append(str(path))
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="full-resolution latent side (Monte Carlo)")
    ap.add_argument("--exact-size", type=int, default=128, help="latent side for the closed-form scores too")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small sizes, for tests")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.exact_size, args.samples, args.channels = 16, 32, 32, 2
        torch.set_num_threads(1)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.quick:
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    print(f"Monte Carlo + exact at {args.size}x{args.size}:")
    mc = run(args.size, args.samples, args.channels, args.seed, mc=True)
    print(f"exact only at {args.exact_size}x{args.exact_size}:")
    ex = run(args.exact_size, 0, 1, args.seed, mc=False)
    plots = plot(mc, out_dir)
    doc = {
        "schema": "stallscope-bench/1",
        "name": "bottleneck-quality",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "torch": str(torch.__version__),
        "command": recorded_command([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])], out_dir),
        "field": {"spectrum": "(1 + (|k|/k0)^2)^(-alpha/2)", "alpha": GaussianField().alpha, "k0": GaussianField().k0},
        "metric": "quality = 1 - RMS over Fourier modes of the per-mode Frechet distance relative to the mode's "
                  "variance; quality_ratio = quality / quality of 50 full-resolution Euler steps",
        "quadratic_share": QUADRATIC_SHARE,
        "monte_carlo": {k: v for k, v in mc.items() if k != "spectra"},
        "spectra": {n: {"k": [round(x, 3) for x in s["k"]], "power_ratio": [round(x, 4) for x in s["power_ratio"]]}
                    for n, s in mc["spectra"].items()},
        "exact": ex,
        "plots": [os.path.relpath(p, ROOT) for p in plots],
    }
    doc["exact"].pop("spectra", None)
    path = out_dir / "bottleneck-quality.yaml"
    write_yaml(path, doc)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
