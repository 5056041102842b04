"""Start-up of the CLI: ``stallscope diagnose --help`` (the console script, stored help) against a
bare ``python3 -c pass`` and typer's own rendering, interleaved, medians of ``--runs``.

    python3 bench/startup.py --runs 15          # writes bench/results/startup.yaml ($OUT when set)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from stallscope.profiler.common import write_yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for the sibling bench package (bench.recorded); stallscope is installed
from bench.recorded import recorded_command  # noqa: E402


def _wall(cmd: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR", "FORCE_COLOR", "TERMINAL_WIDTH")}
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    a = ap.parse_args()
    script = shutil.which("stallscope", path=str(Path(sys.executable).parent)) or shutil.which("stallscope")
    if script is None:
        raise SystemExit("startup: no `stallscope` console script found; pip install -e . first")
    typer_code = "import sys; from stallscope.cli import app; sys.argv[0] = 'stallscope'; app()"
    cmds = {
        "stallscope_diagnose_help": [script, "diagnose", "--help"],
        "python_bare": [sys.executable, "-c", "pass"],
        "typer_render_diagnose_help": [sys.executable, "-c", typer_code, "diagnose", "--help"],
    }
    for cmd in cmds.values():  # warm the page cache
        _wall(cmd)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(a.runs):
        for k, cmd in cmds.items():
            times[k].append(_wall(cmd))
    med = {k: statistics.median(v) for k, v in times.items()}
    doc = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end",
        "python": platform.python_version(),
        "command": recorded_command([sys.executable, __file__, *sys.argv[1:]]),
        "runs": a.runs,
        "startup_s": round(med["stallscope_diagnose_help"], 4),
        "startup_spread_s": [
            round(min(times["stallscope_diagnose_help"]), 4),
            round(max(times["stallscope_diagnose_help"]), 4),
        ],
        "python_bare_s": round(med["python_bare"], 4),
        "typer_render_s": round(med["typer_render_diagnose_help"], 4),
        "startup_minus_bare_python_s": round(med["stallscope_diagnose_help"] - med["python_bare"], 4),
        "meets_0_15_s": med["stallscope_diagnose_help"] <= 0.15,
    }
    out = Path(os.environ.get("OUT") or ROOT / "bench" / "results") / "startup.yaml"
    write_yaml(out, doc)
    print(
        f"stallscope diagnose --help {doc['startup_s']} s (bare python {doc['python_bare_s']} s, typer rendering "
        f"{doc['typer_render_s']} s); {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
