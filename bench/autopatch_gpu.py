"""Auto-patch acceptance on the GPU: profile scenarios with --auto-patch, collect the decisions.

Run from the repo root on the GPU machine:

    OUT=/tmp/out python3 bench/autopatch_gpu.py

For each scenario it runs ``stallscope profile --auto-patch -o RUN -- python3 SCENARIO``,
reads ``RUN/rank0/patches.yaml`` and records, per fix: decision (kept / rolled_back /
skipped / applied), why, parity figures with the tolerance, before/after medians, speedup and
p-value. Then ``stallscope run --patch-from RUN`` replays the kept fixes on a short run (parity
checked on the first batch), and the GPU contract tests run (``pytest -m gpu
tests/test_fix_gpu.py``). Results: ``$OUT/autopatch.yaml`` (goal: flashkat kept with a step
speedup >= 40x on the KAT-like scenarios, tf32 kept on the fp32 transformer); a table last.
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from stallscope.profiler.common import read_yaml, write_yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for the sibling bench package (bench.recorded); stallscope is installed
from bench.recorded import gpu_driver, recorded_command, recorded_text  # noqa: E402

PY = sys.executable
PATCH_STEPS = int(os.environ.get("AUTOPATCH_STEPS", "10"))
SCENARIOS: dict[str, dict[str, Any]] = {
    # KAT-T at batch 256 (bf16 autocast, fused AdamW): baseline step ~3 s, fast step ~60 ms
    # (bench/results/flashkat.yaml e2e.B256); 70 steps = ~14 baseline steps, then the patch
    "kat_scenario": {"cmd": [PY, "bench/scenarios/kat_naive_grkan.py", "--steps", "70"], "goal": ("flashkat", 40.0),
                     "timeout": 420},
    "fp32_transformer": {"cmd": [PY, "bench/workloads/fp32_transformer.py", "--steps", "70"], "goal": ("tf32", 1.02)},
    "fp32_gemm_scenario": {"cmd": [PY, "bench/scenarios/fp32_gemm_no_tf32.py", "--steps", "70"], "goal": ("tf32", 1.02)},
}
TIMEOUT_S = int(os.environ.get("AUTOPATCH_TIMEOUT_S", "240"))


def env_info() -> dict[str, Any]:
    info: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        import torch

        info["torch"] = str(torch.__version__)
        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as exc:  # pragma: no cover
        info["torch"] = f"unavailable: {exc}"
    info["driver"] = gpu_driver()
    return info


def summarize(entry: dict[str, Any]) -> dict[str, Any]:
    parity = entry.get("parity") or {}
    return {
        "decision": entry.get("decision"),
        "why": entry.get("why"),
        "targets_count": entry.get("targets_count"),
        "parity": {k: parity.get(k) for k in ("passed", "max_abs_err_out", "max_rel_err_out", "max_abs_err_grad",
                                              "max_rel_err_grad", "min_grad_cosine", "worst", "reason") if k in parity} or None,
        "tolerance": entry.get("tolerance"),
        "before_median_ms": (entry.get("before") or {}).get("median_ms"),
        "after_median_ms": (entry.get("after") or {}).get("median_ms"),
        "speedup": entry.get("speedup"),
        "p_value": entry.get("p_value"),
    }


def run_scenario(name: str, spec: dict[str, Any], out: Path) -> dict[str, Any]:
    run_dir = out / "runs" / name
    cmd = [PY, "-m", "stallscope.cli", "profile", "--auto-patch", "--patch-steps", str(PATCH_STEPS), "--skip", "3", "--steps", "2",
           "-o", str(run_dir), "--", *spec["cmd"]]
    env = dict(os.environ)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=spec.get("timeout", TIMEOUT_S))
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as exc:
        rc, tail = 124, f"timed out after {spec.get('timeout', TIMEOUT_S)} s: {(exc.stderr or b'')[-2000:]!r}"
    result: dict[str, Any] = {"command": recorded_command(cmd, out), "rc": rc, "wall_s": round(time.perf_counter() - t0, 1)}
    patches = run_dir / "rank0" / "patches.yaml"
    if not patches.is_file():
        result["error"] = "no patches.yaml; output tail: " + recorded_text(tail, out)
        return result
    doc = read_yaml(patches)
    result["phase"] = doc.get("phase")
    result["note"] = doc.get("note")
    result["baseline_median_ms"] = (doc.get("baseline") or {}).get("median_ms")
    result["fixes"] = {e["id"]: summarize(e) for e in doc.get("fixes", [])}
    fix_id, minimum = spec["goal"]
    got = result["fixes"].get(fix_id, {})
    result["goal"] = {"fix": fix_id, "min_speedup": minimum, "decision": got.get("decision"), "speedup": got.get("speedup"),
                      "met": got.get("decision") == "kept" and (got.get("speedup") or 0) >= minimum}
    if rc != 0:
        result["output_tail"] = recorded_text(tail, out)
    result["phases"] = phase_evidence(run_dir, tail, out)
    result["patch_from"] = replay(run_dir, spec["cmd"], env, out)
    return result


def phase_evidence(run_dir: Path, tail: str, out: Path) -> dict[str, Any]:
    """What the run says per auto-patch phase: the summary it printed, meta.yaml's window overhead
    (with the phase it was measured in) and the report's step statistics (overall and per phase)."""
    meta = read_yaml(run_dir / "meta.yaml") if (run_dir / "meta.yaml").is_file() else {}
    ev: dict[str, Any] = {"overhead": (meta or {}).get("overhead"),
                          "summary_lines": [recorded_text(ln.rstrip(), out) for ln in tail.splitlines()[-40:] if ln.strip()]}
    cmd = [PY, "-m", "stallscope.cli", "diagnose", str(run_dir), "-f", "yaml"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    ev["diagnose_command"] = recorded_command(cmd, out)
    if proc.returncode not in (0, 1):
        ev["diagnose_error"] = recorded_text(proc.stderr[-1500:], out)
        return ev
    summ = (yaml.safe_load(proc.stdout) or {}).get("summary") or {}
    st = summ.get("step_time_ms") or {}
    ev["report_step_time"] = {k: st.get(k) for k in ("median", "p90", "source", "after_window_pct") if k in st}
    ev["report_phases"] = summ.get("phases")
    return ev


def replay(run_dir: Path, target: list[str], env: dict[str, str], out: Path) -> dict[str, Any]:
    """``stallscope run --patch-from RUN`` on a short run: what it applied, and parity lines."""
    short = [*target[:-1], "6"] if target[-2] == "--steps" else target
    cmd = [PY, "-m", "stallscope.cli", "run", "--patch-from", str(run_dir / "rank0" / "patches.yaml"), "--", *short]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"rc": 124}
    lines = [recorded_text(ln, out) for ln in proc.stderr.splitlines() if ln.startswith("stallscope:")]
    return {"command": recorded_command(cmd, out), "rc": proc.returncode, "messages": lines[-10:]}


def compare_kat(out: Path, env_doc: dict[str, Any]) -> dict[str, Any]:
    """Before/after of the KAT scenario's kept fixes: an unpatched profiled run against one replaying
    ``patches.yaml`` (``stallscope run --patch-from``), compared by ``stallscope compare``."""
    patches = out / "runs" / "kat_scenario" / "rank0" / "patches.yaml"
    target = [PY, "bench/scenarios/kat_naive_grkan.py", "--steps", "14"]
    before, after = out / "runs" / "kat_before", out / "runs" / "kat_after"
    runs = {
        "before": [PY, "-m", "stallscope.cli", "profile", "--no-diagnose", "-q", "-o", str(before), "--", *target],
        "after": [PY, "-m", "stallscope.cli", "profile", "--no-diagnose", "-q", "-o", str(after), "--",
                  PY, "-m", "stallscope.cli", "run", "--patch-from", str(patches), "--", *target],
    }
    doc: dict[str, Any] = {"name": "compare-kat-autopatch", **env_doc, "script": "python3 bench/autopatch_gpu.py"}
    for side, cmd in runs.items():
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
        doc[side] = recorded_command(cmd, out)
        if proc.returncode != 0:
            doc["error"] = f"{side} run exited {proc.returncode}: " + recorded_text((proc.stdout + proc.stderr)[-1500:], out)
            return doc
    cmd = [PY, "-m", "stallscope.cli", "compare", str(before), str(after), "-f", "yaml"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    doc["command"] = recorded_command(cmd, out)
    if proc.returncode != 0:
        doc["error"] = f"compare exited {proc.returncode}: " + recorded_text(proc.stderr[-1500:], out)
        return doc
    comp = yaml.safe_load(recorded_text(proc.stdout, out))
    a, b = comp["step_time"]["a"]["median"], comp["step_time"]["b"]["median"]
    doc.update(before_median_ms=a, after_median_ms=b, speedup=round(a / b, 2) if b else None, comparison=comp)
    return doc


def gpu_tests(out: Path) -> dict[str, Any]:
    cmd = [PY, "-m", "pytest", "-q", "-m", "gpu", "tests/test_fix_gpu.py", f"--junitxml={out / 'fix_gpu_junit.xml'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    return {"command": recorded_command(cmd, out), "rc": proc.returncode, "summary": proc.stdout.strip().splitlines()[-1:] or recorded_text(proc.stderr[-500:], out)}


def main() -> int:
    out = Path(os.environ.get("OUT", "bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    only = [s for s in os.environ.get("AUTOPATCH_SCENARIOS", "").split(",") if s]
    doc: dict[str, Any] = {**env_info(), "script": "python3 bench/autopatch_gpu.py", "patch_steps": PATCH_STEPS,
                           "scenarios": {}}
    for name, spec in SCENARIOS.items():
        if only and name not in only:
            continue
        doc["scenarios"][name] = run_scenario(name, spec, out)
        write_yaml(out / "autopatch.yaml", doc)
    if "kat_scenario" in doc["scenarios"]:
        write_yaml(out / "compare-kat-autopatch.yaml", compare_kat(out, env_info()))
    doc["gpu_tests"] = gpu_tests(out)
    write_yaml(out / "autopatch.yaml", doc)

    print(f"{'scenario':<20} {'fix':<20} {'decision':<12} {'speedup':>9} {'rel err out':>12} {'rel err grad':>13}")
    for name, res in doc["scenarios"].items():
        for fix_id, f in (res.get("fixes") or {}).items():
            if f["decision"] == "skipped":
                continue
            p = f.get("parity") or {}
            sp = f"{f['speedup']:.2f}x" if f.get("speedup") else "-"
            print(f"{name:<20} {fix_id:<20} {f['decision']:<12} {sp:>9} {p.get('max_rel_err_out', '-')!s:>12} "
                  f"{p.get('max_rel_err_grad', '-')!s:>13}")
        goal = res.get("goal") or {}
        print(f"{name:<20} goal {goal.get('fix')} >= {goal.get('min_speedup')}x: {'MET' if goal.get('met') else 'NOT MET'}"
              f" (rc {res.get('rc')}, {res.get('wall_s')} s)")
    print(f"gpu tests: {doc['gpu_tests'].get('summary')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
