"""GPU acceptance of `stallscope gate ab` on a real workload (bench/gate_workload.py).

Two paired comparisons, each base/head interleaved A B A B A B in this one job:

1. regression: TF32 on (base) vs TF32 off (head): fp32 matmuls off the tensor cores. Must exit 1.
2. same code:  TF32 on vs TF32 on. Must exit 0.

Run from the repo root, with stallscope installed:  OUT=/tmp/out python3 bench/gate_gpu.py
Writes $OUT/gate.yaml (for bench/results/gate.yaml: verdicts, exit codes, p-values, effect
sizes, per-round medians) and each comparison's verdict YAML and JUnit XML; prints a table last.
Without a GPU it runs a small smoke version (host-side pause as the regression) and says so.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from stallscope.profiler.common import write_yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for the sibling bench package (bench.recorded); stallscope is installed
from bench.recorded import gpu_driver, recorded_command, recorded_text  # noqa: E402

GATE_YAML = {
    "alpha": 0.01,
    "min_samples": 20,
    "rules": [
        {"metric": "step_time_median", "max_regression_pct": 3},
        {"metric": "step_time_p90", "max_regression_pct": 10},
    ],
    "findings": {"fail_on_new": "off"},
}


def _environment() -> dict:
    env: dict = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    try:
        import torch

        env["torch"] = str(torch.__version__)
        env["cuda"] = None if torch.version.cuda is None else str(torch.version.cuda)
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    env["driver"] = gpu_driver()
    return env


def _gate_ab(name: str, base: str, head: str, rounds: int, out: Path, work: Path, config: Path) -> dict:
    verdict_path, junit_path = out / f"{name}.yaml", out / f"{name}.xml"
    argv = [sys.executable, "-m", "stallscope.cli", "gate", "ab", "--base-cmd", base, "--head-cmd", head, "--rounds", str(rounds),
            "--config", str(config), "--workdir", str(work / name), "--output", str(verdict_path), "--junit", str(junit_path)]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - start
    print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n", flush=True)
    result: dict = {"command": recorded_command(argv, out), "exit_code": proc.returncode, "wall_s": round(wall, 1)}
    if verdict_path.exists():
        verdict = yaml.safe_load(verdict_path.read_text())
        result["verdict"] = verdict["verdict"]
        paired = verdict.get("paired")
        if isinstance(paired, dict):  # its base/head commands and work folder name this machine's paths
            paired = {k: recorded_text(v, out) if isinstance(v, str) else v for k, v in paired.items()}
        result["paired"] = paired
        result["rules"] = {
            r["name"]: {k: r.get(k) for k in ("status", "base", "current", "change_pct", "p_value", "ci_ratio", "n_base", "n_current", "test", "threshold") if k in r}
            for r in verdict["rules"]
        }
    else:
        result["error"] = recorded_text((proc.stderr.strip().splitlines() or ["no verdict written"])[-1], out)
    return result


def main() -> int:
    out = Path(os.environ.get("OUT") or ROOT / "bench" / "results" / "gate-run")
    out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    gpu = "gpu" in env
    py = sys.executable
    if gpu:
        workload = f"{py} bench/gate_workload.py --steps 200"
        regression = (f"{workload} --tf32 on", f"{workload} --tf32 off", "TF32 on (base) vs TF32 off (head)")
        same = f"{workload} --tf32 on"
        rounds = 3
    else:
        print("stallscope gate bench: no CUDA GPU here; running the CPU smoke version (a 40 ms host pause as the regression)", flush=True)
        workload = f"{py} bench/gate_workload.py --steps 32 --width 64 --batch 32 --depth 2 --slow-ms 40"
        regression = (workload, f"{py} bench/gate_workload.py --steps 32 --width 64 --batch 32 --depth 2 --slow-ms 120", "host pause 40 ms vs 120 ms (CPU smoke)")
        same = workload
        rounds = 1
    work = Path(tempfile.mkdtemp(prefix="gate-gpu-"))  # run directories stay out of $OUT (traces are large)
    config = out / "gate-config.yaml"
    write_yaml(config, GATE_YAML)
    cases = {
        "regression": _gate_ab("regression", regression[0], regression[1], rounds, out, work, config),
        "same_code": _gate_ab("same_code", same, same, rounds, out, work, config),
    }
    cases["regression"]["what"] = regression[2]
    cases["same_code"]["what"] = "TF32 on vs TF32 on (same code)" if gpu else "same command twice (CPU smoke)"
    expected = {"regression": 1, "same_code": 0}
    ok = all(cases[k]["exit_code"] == v for k, v in expected.items())
    median = {k: (c.get("rules") or {}).get("step_time_median", {}) for k, c in cases.items()}
    how = recorded_command([sys.executable, __file__, *sys.argv[1:]], out)
    results = {
        "name": "gate",
        "command": f"OUT=$OUT {how}" if os.environ.get("OUT") else how,
        **env,
        "device": "gpu" if gpu else "cpu (smoke, not the acceptance)",
        "gate_config": GATE_YAML,
        "rounds": rounds,
        "regression_caught": cases["regression"]["exit_code"] == 1,
        "same_code_passed": cases["same_code"]["exit_code"] == 0,
        "regression_median_change_pct": median["regression"].get("change_pct"),
        "regression_p_value": median["regression"].get("p_value"),
        "same_code_median_change_pct": median["same_code"].get("change_pct"),
        "same_code_p_value": median["same_code"].get("p_value"),
        "acceptance_met": ok,
        "cases": cases,
    }
    write_yaml(out / "gate.yaml", results)
    print("\ncase         expected  exit  verdict       median change   p-value   n/side")
    for name, case in cases.items():
        m = median[name]
        change = f"{m['change_pct']:+.2f}%" if m.get("change_pct") is not None else "-"
        print(f"{name:<12} {expected[name]:>8}  {case['exit_code']:>4}  {case.get('verdict', case.get('error', '?'))[:12]:<12}  {change:>13}  {m.get('p_value', '-')!s:>8}  {m.get('n_base', '-')}")
    print(f"acceptance {'met' if ok else 'NOT met'}; results in {out / 'gate.yaml'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
