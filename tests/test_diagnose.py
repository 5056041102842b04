"""`stallscope diagnose`: reports validate against the schema, formats, CLI behaviour, no torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stallscope.analyzers.command import diagnose_command
from stallscope.analyzers.render import ReportView, to_markdown
from stallscope.analyzers.report import build_report, load_report, validate_report
from stallscope.profiler.common import ToolError
from tests.diagnose_traces import ROOT, cpu_nosteps_trace, cpu_steps_trace, ddp_folder, empty_trace, gpu_fixture


@pytest.mark.parametrize("make", [cpu_steps_trace, cpu_nosteps_trace, ddp_folder])
def test_report_follows_schema(make) -> None:
    report = build_report(make())
    validate_report(report)
    s = report["summary"]
    assert report["schema_version"] == 1 and report["tool"]["name"] == "stallscope"
    assert s["steps"] >= 1 and len(s["step_time_ms"]["samples"]) >= 1
    assert s["timeline"] == "cpu" and s["gpu_events"] is False
    parts = sum(v for k, v in s["breakdown_pct"].items() if k != "comm_overlapped_pct")
    assert parts == pytest.approx(100.0, abs=1.0)
    impacts = [f["impact"]["est_saving_ms_per_step"] for f in report["findings"]]
    assert impacts == sorted(impacts, reverse=True)


def test_multi_rank_report_has_per_rank_section() -> None:
    report = build_report(ddp_folder())
    validate_report(report)
    assert [r["rank"] for r in report["per_rank"]] == [0, 1]
    assert report["environment"]["world_size"] == 2
    # per-step samples: the slowest rank of each step
    per_rank = [r["step_time_ms"]["samples"] for r in report["per_rank"]]
    assert report["summary"]["step_time_ms"]["samples"] == [max(a, b) for a, b in zip(*per_rank)]


def test_slow_dataloader_is_the_top_finding() -> None:
    report = build_report(cpu_steps_trace())
    top = report["findings"][0]
    assert top["id"] == "input-pipeline-data-wait" and top["category"] == "input-pipeline"
    assert top["severity"] in ("medium", "high")
    assert top["evidence"]["data_wait_pct"] == pytest.approx(report["summary"]["breakdown_pct"]["data_wait_pct"], abs=0.01)


def test_telemetry_samples_preferred(tmp_path: Path) -> None:
    import gzip
    import shutil

    run = tmp_path / "run"
    (run / "rank0").mkdir(parents=True)
    with open(cpu_steps_trace(), "rb") as a, gzip.open(run / "rank0" / "trace.json.gz", "wb") as b:
        shutil.copyfileobj(a, b)
    walls = [10.0, 11.0, 12.0, 30.0, 31.0, 13.0, 14.0]
    rows = ["step,start_ns,end_ns,wall_ms,gpu_ms,data_wait_ms,in_window,source"]
    for i, w in enumerate(walls):
        rows.append(f"{i},0,0,{w},,0.5,{1 if w >= 30 else 0},optimizer")
    (run / "rank0" / "steps.csv").write_text("\n".join(rows) + "\n")
    (run / "meta.yaml").write_text("schema_version: 1\nkind: stallscope-run\nranks: [0]\n")
    (run / "patches.yaml").write_text("schema_version: 1\nkept: [tf32]\n")
    report = build_report(run)
    validate_report(report)
    st = report["summary"]["step_time_ms"]
    assert st["samples"] == [11.0, 12.0, 13.0, 14.0]  # step 0 (cold start) and the window's steps left out
    assert st["source"].startswith("telemetry") and st["median"] == 12.5
    assert report["patches"] == {"schema_version": 1, "kept": ["tf32"]}
    assert report["source"]["kind"] == "run-dir"


def test_formats_and_atomic_output(tmp_path: Path, capsys) -> None:
    trace = cpu_steps_trace()
    for fmt, name in (("yaml", "r.yaml"), ("json", "r.json"), ("md", "r.md")):
        out = tmp_path / name
        assert diagnose_command(trace, output=out, fmt=fmt) == 0
        printed = capsys.readouterr().out
        text = out.read_text()
        assert text == printed
        if fmt == "yaml":
            validate_report(yaml.safe_load(text))
        elif fmt == "json":
            validate_report(json.loads(text))
        else:
            assert text.startswith("# stallscope diagnosis") and "Findings" in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp files left behind"
    # a report written earlier is re-rendered without analysis
    assert diagnose_command(tmp_path / "r.yaml", fmt="md") == 0
    assert "# stallscope diagnosis" in capsys.readouterr().out


def test_console_rendering(tmp_path: Path) -> None:
    from rich.console import Console

    report = build_report(ddp_folder())
    console = Console(record=True, width=120)
    console.print(ReportView(report))
    text = console.export_text()
    for needle in ("stallscope diagnose", "step time breakdown", "per rank", "findings"):
        assert needle in text
    assert to_markdown(report).count("| 0 |") >= 1


def test_unknown_report_schema_is_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "old.yaml"
    p.write_text("schema_version: 99\ntool: {name: stallscope}\n")
    with pytest.raises(ToolError, match="schema_version 99"):
        load_report(p)
    res = _cli("diagnose", str(p))
    assert res.returncode == 2
    assert "schema_version 99" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("kind", ["missing", "empty-folder", "invalid-json"])
def test_cli_bad_input_one_line_exit_2(tmp_path: Path, kind: str) -> None:
    target = {"missing": tmp_path / "nope", "empty-folder": tmp_path}.get(kind)
    if kind == "invalid-json":
        target = tmp_path / "x.json"
        target.write_text('{"traceEvents": [')
    res = _cli("diagnose", str(target))
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("stallscope: error:"), res.stderr


def test_empty_trace_reports_without_findings(tmp_path: Path) -> None:
    report = build_report(empty_trace(tmp_path))
    validate_report(report)
    assert report["summary"]["steps"] == 0 and report["findings"] == []
    assert report["analyzers"]["skipped"]


def test_diagnose_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys, runpy; sys.argv=['stallscope','diagnose',%r,'-f','json','-o',%r]\n"
        "from cli import app\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    ) % (str(cpu_steps_trace()), str(tmp_path / "r.json"))
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    validate_report(json.loads((tmp_path / "r.json").read_text()))


def test_gpu_fixture_report() -> None:
    path = gpu_fixture("train.pt.trace.json.gz")
    if path is None:
        pytest.skip("GPU fixture train.pt.trace.json.gz not recorded yet (tests/fixtures/make_gpu_traces.py)")
    report = build_report(path)
    validate_report(report)
    assert report["summary"]["timeline"] == "gpu" and report["top_kernels"]
    assert report["environment"]["gpu"]["name"]
    assert sum(k["pct"] for k in report["top_kernels"]) <= 100.01


def test_gpu_fixture_ddp_folder_and_stepless_trace() -> None:
    """Real H200 traces: two DDP ranks read as a folder; a trace without steps becomes one step."""
    ddp, nosteps = gpu_fixture("ddp"), gpu_fixture("nosteps.pt.trace.json.gz")
    if ddp is None or nosteps is None:
        pytest.skip("GPU fixtures ddp/ and nosteps.pt.trace.json.gz not recorded yet (tests/fixtures/make_gpu_traces.py)")
    report = build_report(ddp)
    validate_report(report)
    assert report["source"]["ranks"] == [0, 1] and report["summary"]["steps"] >= 2
    for rank in report["per_rank"]:
        assert rank["steps"] == report["summary"]["steps"]
        assert sum(rank["breakdown_pct"].values()) == pytest.approx(100.0, abs=1.0)
    report = build_report(nosteps)
    validate_report(report)
    assert report["source"]["steps_from"] == "whole-trace" and report["summary"]["steps"] == 1
    assert any("whole trace" in n for n in report["notices"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "stallscope.cli", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)


# `python -m stallscope.cli diagnose ...` in a fresh process that registered an atexit handler:
# the fast path ends the process without the interpreter's teardown, and must still flush its
# whole output, keep the command's exit code and run the handlers.
EXIT_PROBE = """
import atexit, runpy, sys
atexit.register(lambda: print("handler ran", file=sys.stderr))
sys.argv = ["stallscope", *sys.argv[1:]]
runpy.run_module("stallscope.cli", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("missing", [False, True])
def test_fast_path_exit_keeps_output_code_and_atexit_handlers(tmp_path: Path, missing: bool) -> None:
    trace = tmp_path / "t.json.gz"
    if not missing:
        trace.write_bytes(gpu_fixture("sync_item_per_layer.json.gz").read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALLSCOPE_")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"))
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_PROBE, "diagnose", str(trace), "-f", "yaml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert "handler ran" in proc.stderr
    if missing:
        assert proc.returncode == 2 and "stallscope: error:" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        report = yaml.safe_load(proc.stdout)  # the whole report reached the pipe
        assert report["kind"] == "stallscope-report" and report["source"]["events"] > 0
