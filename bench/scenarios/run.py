"""Profile and diagnose every planted-bottleneck scenario; check the top finding.

    python3 bench/scenarios/run.py                 # GPU: all scenarios
    python3 bench/scenarios/run.py --device cpu --only kat_naive_grkan,healthy_cnn

Each ``bench/scenarios/<name>.py`` declares ``EXPECTED = "<category>"`` (or ``"healthy"``) and
optionally ``REQUIRES = "cuda"``. For each one this runs

    stallscope profile -o RUN --no-diagnose -q -- python3 <scenario> --steps N --device D
    stallscope diagnose RUN -f yaml -o RUN/report.yaml

with a per-scenario timeout, never stopping at a failure, and writes ``scenarios.yaml`` to
``$OUT`` when set, else ``bench/results/`` (``--results`` overrides). A planted scenario passes
when its top finding (the first, in the report's impact order, of the highest severity present)
has the expected category; a healthy one when no finding is medium or higher. Exit status 1 when any scenario failed, 0 otherwise.
"""
from __future__ import annotations

import argparse
import ast
import datetime as _dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stallscope.profiler.common import read_yaml, write_yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # for the sibling bench package (bench.recorded); stallscope is installed
from bench.recorded import recorded_command, recorded_path, recorded_text  # noqa: E402

BLOCKING = {"high", "medium"}
CATEGORIES_OK = {"healthy", "memory-bound", "input-pipeline", "communication", "host-bound", "synchronization",
                 "memory-copy", "precision", "gpu-health", "memory-capacity", "cpu-metric", "attention", "compile"}


def scenario_header(path: Path) -> dict[str, Any]:
    """EXPECTED / REQUIRES constants and the docstring's first line, read without importing."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: dict[str, Any] = {"name": path.stem, "path": path, "requires": None, "expected": None,
                           "summary": (ast.get_docstring(tree) or "").split("\n")[0]}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            key = node.targets[0].id
            if key in ("EXPECTED", "REQUIRES") and isinstance(node.value, ast.Constant):
                out[key.lower()] = node.value.value
    return out


def discover(only: list[str] | None = None) -> list[dict[str, Any]]:
    found = [scenario_header(p) for p in sorted(HERE.glob("*.py")) if p.name != "run.py" and not p.name.startswith("_")]
    found = [s for s in found if s["expected"]]
    if only:
        names = {s["name"] for s in found}
        missing = [n for n in only if n not in names]
        if missing:
            raise SystemExit(f"unknown scenario(s) {', '.join(missing)}; known: {', '.join(sorted(names))}")
        found = [s for s in found if s["name"] in only]
    return found


def top_finding(findings: list[dict[str, Any]]) -> dict[str, Any]:
    """The first finding (in the report's impact order) among those of the highest severity:
    a high out-of-memory risk with no time cost outranks a low finding that saves a millisecond."""
    order = {"high": 3, "medium": 2, "low": 1, "info": 0}
    best = max(order.get(str(f.get("severity")), 0) for f in findings)
    return next(f for f in findings if order.get(str(f.get("severity")), 0) == best)


def judge(expected: str, findings: list[dict[str, Any]]) -> tuple[bool, str]:
    """Whether a report's findings match the scenario's expectation, and why not."""
    if expected == "healthy":
        loud = [f for f in findings if f.get("severity") in BLOCKING]
        if loud:
            return False, f"healthy but {loud[0]['id']} ({loud[0]['severity']})"
        return True, ""
    if not findings:
        return False, "no finding"
    top = top_finding(findings)
    if top.get("category") != expected:
        return False, f"top finding is {top.get('category')} ({top.get('id')}), expected {expected}"
    return True, ""


def _tail(text: str, n: int = 600) -> str:
    text = " ".join(text.split())
    return text[-n:]


def run_one(s: dict[str, Any], device: str, steps: int | None, timeout: float, workdir: Path, stack: bool,
            window: tuple[int, int] | None = None, profile: bool = True) -> dict[str, Any]:
    run_dir = workdir / s["name"]
    if profile and run_dir.exists():
        shutil.rmtree(run_dir)
    env = dict(os.environ)
    target = [sys.executable, str(s["path"]), "--device", device]
    if steps:
        target += ["--steps", str(steps)]
    prof = [sys.executable, "-m", "stallscope.cli", "profile", "-o", str(run_dir), "--no-diagnose", "-q"]
    if stack:
        prof.append("--stack")
    if window:
        prof += ["--skip", str(window[0]), "--steps", str(window[1])]
    row: dict[str, Any] = {"expected": s["expected"], "summary": s["summary"]}
    t0 = time.perf_counter()
    try:
        if profile:
            p = subprocess.run(prof + ["--"] + target, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            row["profile_rc"] = p.returncode
            if p.returncode != 0:
                row["error"] = "profile failed: " + _tail(p.stderr or p.stdout)
        elif not run_dir.is_dir():
            row["error"] = f"no run directory {run_dir} to diagnose"
    except subprocess.TimeoutExpired:
        row["profile_rc"] = None
        row["error"] = f"profile timed out after {timeout:.0f} s"
    row["profile_s"] = round(time.perf_counter() - t0, 2)
    report_path = run_dir / ("report.yaml" if profile else "report-rediagnosed.yaml")
    if run_dir.is_dir():
        t1 = time.perf_counter()
        try:
            d = subprocess.run([sys.executable, "-m", "stallscope.cli", "diagnose", str(run_dir), "-f", "yaml", "-o", str(report_path)],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(30.0, timeout / 2))
            if d.returncode != 0:
                row.setdefault("error", "diagnose failed: " + _tail(d.stderr or d.stdout))
        except subprocess.TimeoutExpired:
            row.setdefault("error", "diagnose timed out")
        row["diagnose_s"] = round(time.perf_counter() - t1, 2)
    findings: list[dict[str, Any]] = []
    if report_path.is_file():
        report = read_yaml(report_path) or {}
        findings = list(report.get("findings") or [])
        summary = report.get("summary") if isinstance(report.get("summary"), dict) else {}
        row["step_ms_median"] = (summary.get("step_time_ms") or {}).get("median")
        row["notices"] = list(report.get("notices") or [])[:5]
    if findings:
        top = top_finding(findings)
        row["top_finding"] = {
            "id": top.get("id"),
            "category": top.get("category"),
            "severity": top.get("severity"),
            "step_time_pct": (top.get("impact") or {}).get("step_time_pct"),
            "est_saving_ms_per_step": (top.get("impact") or {}).get("est_saving_ms_per_step"),
        }
        row["findings"] = [f"{f.get('category')}/{f.get('id')} {f.get('severity')} "
                           f"{(f.get('impact') or {}).get('step_time_pct')}%" for f in findings[:6]]
    else:
        row["top_finding"] = None
    ok, why = judge(s["expected"], findings) if report_path.is_file() else (False, row.get("error", "no report"))
    row["pass"] = ok
    if why:
        row["why"] = why
    row["runtime_s"] = round(time.perf_counter() - t0, 2)
    return row


def _recorded_on(runs: Path, out: Path) -> dict[str, Any]:
    """Where the kept runs were recorded (GPU, torch, date) as their meta.yaml says; ``out`` is the results folder."""
    for meta in sorted(runs.glob("*/meta.yaml")):
        doc = read_yaml(meta) or {}
        env = doc.get("environment") if isinstance(doc.get("environment"), dict) else {}
        return {"path": recorded_path(runs, out), "example": meta.parent.name, "created": doc.get("created"),
                **{k: env.get(k) for k in ("gpu", "torch", "cuda", "driver") if k in env}}
    return {"path": recorded_path(runs, out)}


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "host": platform.node()}
    try:
        import torch

        env["torch"] = str(torch.__version__)
        env["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except Exception as exc:  # noqa: BLE001
        env["torch"] = f"unavailable ({exc.__class__.__name__})"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        env["driver"] = None
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--steps", type=int, default=None, help="override each scenario's --steps")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds per scenario (profile)")
    ap.add_argument("--budget", type=float, default=450.0, help="total seconds; later scenarios are skipped")
    ap.add_argument("--stack", action="store_true", help="profile with Python stacks")
    ap.add_argument("--window", default=None, help="SKIP,STEPS of the profiler's trace window (default: profile's)")
    ap.add_argument("--results", default=None, help="folder for scenarios.yaml (default $OUT or bench/results)")
    ap.add_argument("--keep-runs", default=None, help="keep run directories here")
    ap.add_argument("--rediagnose", default=None, metavar="RUNS",
                    help="diagnose the run directories kept in RUNS by an earlier --keep-runs (no profiling, any "
                         "machine); writes scenarios-rediagnosed.yaml")
    args = ap.parse_args(argv)
    env = environment()
    results_dir = Path(args.results or os.environ.get("OUT") or ROOT / "bench" / "results")
    if args.rediagnose:  # the runs were recorded elsewhere: say where and on what, from their meta.yaml
        env["runs_from"] = _recorded_on(Path(args.rediagnose), results_dir)
    device = args.device or ("cuda" if env.get("gpu") or args.rediagnose else "cpu")
    scenarios = discover([n for n in args.only.split(",") if n] or None)
    results_dir.mkdir(parents=True, exist_ok=True)
    if args.rediagnose:
        workdir = Path(args.rediagnose)
    else:
        workdir = Path(args.keep_runs) if args.keep_runs else Path(tempfile.mkdtemp(prefix="stallscope-scenarios-"))
        workdir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, Any] = {}
    start = time.perf_counter()
    out = results_dir / ("scenarios-rediagnosed.yaml" if args.rediagnose else "scenarios.yaml")
    interrupted = False
    try:
        for s in scenarios:
            if s["requires"] == "cuda" and device != "cuda":
                rows[s["name"]] = {"expected": s["expected"], "skipped": "needs CUDA"}
                continue
            left = args.budget - (time.perf_counter() - start)
            if left < 20:
                rows[s["name"]] = {"expected": s["expected"], "skipped": f"total budget of {args.budget:.0f} s spent",
                                   "pass": False}
                continue
            window = tuple(int(v) for v in args.window.split(",")) if args.window else None
            row = run_one(s, device, args.steps, min(args.timeout, left), workdir, args.stack, window,  # type: ignore[arg-type]
                          profile=not args.rediagnose)
            rows[s["name"]] = row
            top = row.get("top_finding") or {}
            print(f"{s['name']:<30} expected {s['expected']:<16} top {str(top.get('category')):<16} "
                  f"{top.get('step_time_pct', '')!s:>8}%  {'PASS' if row['pass'] else 'FAIL ' + row.get('why', '')}  "
                  f"({row['runtime_s']} s)", flush=True)
            write_yaml(out, _document(rows, argv, device, env, start, results_dir))  # partial results survive a kill
    except KeyboardInterrupt:
        interrupted = True
        for s in scenarios:
            rows.setdefault(s["name"], {"expected": s["expected"], "skipped": "interrupted", "pass": False})
    doc = _document(rows, argv, device, env, start, results_dir)
    write_yaml(out, doc)
    ran = [r for r in rows.values() if "skipped" not in r]
    print(f"\n{doc['planted_correct']}/{doc['planted_total']} planted scenarios diagnosed right, "
          f"{doc['healthy_clean']}/{doc['healthy_total']} healthy ones clean; {len(ran)} run in {doc['total_runtime_s']} s; "
          f"results in {out}")
    if not args.keep_runs and not args.rediagnose:
        shutil.rmtree(workdir, ignore_errors=True)
    if interrupted:
        return 130
    return 1 if doc["failed"] else 0


def _shown(row: dict[str, Any], out: Path) -> dict[str, Any]:
    """A scenario's row with the paths in its messages (errors, notices) written as results record them."""
    row = dict(row)
    for key in ("error", "why"):
        if isinstance(row.get(key), str):
            row[key] = recorded_text(row[key], out)
    if row.get("notices"):
        row["notices"] = [recorded_text(str(n), out) for n in row["notices"]]
    return row


def _document(rows: dict[str, Any], argv: list[str] | None, device: str, env: dict[str, Any], start: float,
              out: Path) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": "scenarios",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": recorded_command([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])], out),
        "device": device,
        "runs_from": env.get("runs_from"),
        **{k: env.get(k) for k in ("gpu", "driver", "torch", "cuda", "python")},
        "planted_correct": sum(1 for r in rows.values() if r.get("pass") and r.get("expected") != "healthy"),
        "planted_total": sum(1 for r in rows.values() if r.get("expected") != "healthy" and "skipped" not in r),
        "healthy_clean": sum(1 for r in rows.values() if r.get("pass") and r.get("expected") == "healthy"),
        "healthy_total": sum(1 for r in rows.values() if r.get("expected") == "healthy" and "skipped" not in r),
        "failed": [n for n, r in rows.items() if r.get("pass") is False],
        "total_runtime_s": round(time.perf_counter() - start, 1),
        "scenarios": {name: _shown(row, out) for name, row in rows.items()},
    }


if __name__ == "__main__":
    raise SystemExit(main())
