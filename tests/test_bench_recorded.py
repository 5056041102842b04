"""bench/recorded.py: the commands and paths that bench scripts write into bench/results name no
machine folders; and the scripts with a quick CPU mode write results without absolute paths."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from bench.recorded import (
    ROOT,
    machine_paths,
    recorded_argv,
    recorded_command,
    recorded_path,
    recorded_text,
)

# ------------------------------------------------------------------------------------ the rules


def test_interpreters_are_python3_and_scripts_are_relative() -> None:
    script = ROOT / "bench" / "gate_gpu.py"
    assert recorded_command([sys.executable, str(script), "--quick"]) == "python3 bench/gate_gpu.py --quick"
    assert recorded_path("/opt/torch/.venv/bin/python3") == "python3"
    assert recorded_path("/usr/local/bin/python3.11") == "python3"
    assert recorded_path(ROOT) == "."
    # a folder named like an interpreter is not one
    assert recorded_path("/usr/lib/python3.11") == "/usr/lib/python3.11"


def test_output_folder_becomes_dollar_out() -> None:
    out = Path("/srv/bench-results/run7")
    argv = ["--keep-runs", out / "runs", "--results", out, f"--junitxml={out / 'x.xml'}"]
    assert recorded_argv(argv, out) == ["--keep-runs", "$OUT/runs", "--results", "$OUT", "--junitxml=$OUT/x.xml"]
    # the same folder without ``out`` is not rewritten: nothing says what it is
    assert recorded_path(out / "runs") == "/srv/bench-results/run7/runs"


def test_relative_output_folder_as_given() -> None:
    argv = ["-o", "bench-out/runs/kat", "--out=bench-out", "bench-outside/x"]
    assert recorded_argv(argv, "bench-out") == ["-o", "$OUT/runs/kat", "--out=$OUT", "bench-outside/x"]


def test_repository_before_output_folder() -> None:
    """Results written into the checkout keep their real place."""
    out = ROOT / "bench" / "results"
    assert recorded_path(out / "gate.yaml", out) == "bench/results/gate.yaml"


def test_temporary_home_and_site_packages() -> None:
    tmp = Path(tempfile.gettempdir())
    assert recorded_path(tmp / "gate-gpu-ab12" / "regression") == "$TMP/gate-gpu-ab12/regression"
    assert recorded_path("/tmp/waae_work/r0.json") == "$TMP/waae_work/r0.json"
    lib = "/opt/torch/.venv/lib/python3.11/site-packages/nvidia/cu13/lib/libcupti.so.13"
    assert recorded_path(lib) == "$SITE_PACKAGES/nvidia/cu13/lib/libcupti.so.13"
    home = Path.home()
    if home != Path("/") and recorded_path(home) == "~":  # a home inside the repository or /tmp has its own rule
        assert recorded_path(home / "out" / "scen") == "~/out/scen"


def test_paths_inside_text_and_commands_inside_arguments() -> None:
    out = Path("/srv/results")
    base = f"/opt/torch/.venv/bin/python3 {ROOT / 'bench' / 'gate_workload.py'} --steps 200"
    assert recorded_argv(["--base-cmd", base], out) == ["--base-cmd", "python3 bench/gate_workload.py --steps 200"]
    text = 'File "/tmp/x/y.py", line 3; wrote /srv/results/a.yaml. See https://example.org/a/b, 3 ms/step'
    assert (
        recorded_text(text, out)
        == 'File "$TMP/x/y.py", line 3; wrote $OUT/a.yaml. See https://example.org/a/b, 3 ms/step'
    )


def test_command_line_splits_back_into_its_arguments() -> None:
    out = Path("/srv/results")
    argv = [sys.executable, "-c", "print('a b')", out / "with space", "plain", "semi;colon"]
    line = recorded_command(argv, out)
    assert shlex.split(line) == recorded_argv(argv, out)
    assert '"$OUT/with space"' in line  # double quotes: $OUT still expands in a shell


def test_machine_paths_finds_what_is_left() -> None:
    found = machine_paths("a: /srv/data/x.json\nb: $OUT/y\nc: bench/z.py\nd: https://h.org/p\ne: 3/4\n")
    assert found == ["/srv/data/x.json"]


def test_distributed_rank_trace_is_recorded_under_out() -> None:
    from bench.distributed.run_gpu import _shown_rank

    out = Path("/root/out/distributed")
    rank = {"rank": 1, "trace": str(out / "runs" / "healthy" / "rank1" / "trace.json.gz")}
    assert _shown_rank(rank, out) == {"rank": 1, "trace": "$OUT/runs/healthy/rank1/trace.json.gz"}


# ------------------------------------------------------------------- scripts' results (CPU runs)


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """The script as a user runs it, with no ``$OUT`` of the caller's (each test names its folders)."""
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_scenarios_rediagnose_records_no_machine_path(tmp_path: Path) -> None:
    """An empty runs folder: the command, ``runs_from`` and the error all name folders."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    runs.mkdir()
    cmd = [sys.executable, str(ROOT / "bench/scenarios/run.py"), "--only", "healthy_cnn", "--rediagnose", str(runs),
           "--results", str(out)]  # fmt: skip
    p = _run(cmd, 120)
    text = (out / "scenarios-rediagnosed.yaml").read_text()
    assert machine_paths(text) == [], text
    doc = yaml.safe_load(text)
    assert doc["command"].endswith("--results $OUT"), doc["command"]
    assert "no run directory $TMP/" in doc["scenarios"]["healthy_cnn"]["error"], p.stderr


def test_accuracy_records_no_machine_path(tmp_path: Path) -> None:
    out = tmp_path / "acc.yaml"
    p = _run([sys.executable, str(ROOT / "bench/accuracy.py"), "--only", "hta_cpu_only", "--out", str(out)], 120)
    text = out.read_text()
    assert machine_paths(text) == [], p.stderr[-2000:]
    assert yaml.safe_load(text)["command"] == ["accuracy.py", "--only", "hta_cpu_only", "--out", "$OUT/acc.yaml"]


def test_distributed_scale_records_no_machine_path(tmp_path: Path) -> None:
    source = ROOT / "tests/fixtures/gpu/ddp_h200/healthy"
    out = tmp_path / "scale.yaml"
    p = _run(
        [sys.executable, str(ROOT / "bench/distributed/scale.py"), str(source), "--ranks", "2", "--out", str(out)], 120
    )
    text = out.read_text()
    assert machine_paths(text) == [], p.stderr[-2000:]
    doc = yaml.safe_load(text)
    assert doc["command"].startswith("python3 bench/distributed/scale.py tests/fixtures/gpu/ddp_h200/healthy ")
    assert all(s.startswith("tests/fixtures/gpu/ddp_h200/healthy/") for s in doc["source_traces"])


@pytest.mark.slow
def test_window_after_effect_smoke_records_no_machine_path(tmp_path: Path) -> None:
    """One tiny CPU run under ``stallscope profile``: the summary's command and every run's argv."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "bench/window_after_effect_gpu.py"), "drive", "--smoke", "--conditions",
           "stallscope", "--runs", "1", "--probe-steps", "2", "--out", str(out), "--workdir", str(out / "work"),
           "--name", "smoke"]  # fmt: skip
    p = _run(cmd, 300)
    summary, runs = (out / "smoke.yaml").read_text(), (out / "smoke.runs.jsonl").read_text()
    assert machine_paths(summary) == [] and machine_paths(runs) == [], p.stdout[-2000:] + p.stderr[-2000:]
    assert "--out $OUT --workdir $OUT/work" in yaml.safe_load(summary)["command"]
    (run,) = [json.loads(line) for line in runs.splitlines()]
    assert run["ok"], run.get("error")
    assert run["argv"][run["argv"].index("--json") + 1] == "$OUT/work/r0.json"
    for probe in ("launch_us", "host_step_ms"):  # measured before the first step and after the last
        assert set(run["probes"][probe]) == {"before", "after"}
        assert all(0 < v["min"] <= v["median"] for v in run["probes"][probe].values())
