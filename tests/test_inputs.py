"""`open_report`: one rule set for what a command is pointed at; fix advice looked up at render time."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from stallscope.analyzers.html import render_html
from stallscope.analyzers.inputs import check_types, is_report_file, open_report
from stallscope.analyzers.render import ReportView, to_markdown
from stallscope.profiler import runformat
from stallscope.profiler.common import ToolError
from tests.diagnose_traces import cpu_steps_trace


@pytest.fixture(scope="module")
def diagnosed() -> tuple[Path, dict]:
    trace = Path(cpu_steps_trace())
    report, ctx = open_report(trace)
    assert ctx is not None and ctx.ranks and report["kind"] == "stallscope-report"
    return trace, report


def test_reports_are_read_and_traces_are_diagnosed(tmp_path: Path, diagnosed: tuple[Path, dict]) -> None:
    trace, report = diagnosed
    as_yaml, as_json = tmp_path / "r.yaml", tmp_path / "r.json"
    as_yaml.write_text(yaml.safe_dump(report))
    as_json.write_text(json.dumps(report, indent=1))
    plain_trace = tmp_path / "t.json"
    shutil.copy(trace, plain_trace)
    assert is_report_file(as_yaml) and is_report_file(as_json) and not is_report_file(plain_trace)
    for path in (as_yaml, as_json):
        again, ctx = open_report(path)
        assert ctx is None and again["findings"] == report["findings"]
    assert open_report(plain_trace).context is not None


def test_a_run_directory_can_give_its_saved_report(tmp_path: Path, diagnosed: tuple[Path, dict]) -> None:
    trace, report = diagnosed
    folder = runformat.rank_dir(tmp_path, 0)
    folder.mkdir()
    shutil.copy(trace, folder / runformat.TRACE_PLAIN)
    saved = dict(report, notices=["the saved one"])
    (tmp_path / runformat.REPORT).write_text(yaml.safe_dump(saved))
    assert open_report(tmp_path, use_saved=True) == (saved, None)
    fresh, ctx = open_report(tmp_path)
    assert ctx is not None and fresh["source"]["path"] == str(tmp_path) and fresh["notices"] != ["the saved one"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("nope.yaml", None, "no such file or directory"),
        ("r.yaml", "just text", "not a stallscope report"),
        ("r.json", "{broken", "not a readable JSON report"),
        ("r.yaml", "schema_version: 7\nsummary: {}\n", "schema_version 7"),
        ("r.yaml", "schema_version: 1\n", "no `summary` mapping"),
    ],
)
def test_bad_inputs_are_one_line_errors_naming_the_path(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ToolError, match=message) as err:
        open_report(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_another_schema_version_passes_when_the_caller_compares_versions(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("schema_version: 2\nsummary: {}\n")
    assert open_report(path, check_version=False).report["schema_version"] == 2


def test_fix_advice_shows_under_the_finding_that_names_the_fix() -> None:
    finding = {
        "id": "x",
        "category": "cpu-metric",
        "title": "T",
        "severity": "high",
        "confidence": 0.9,
        "impact": {"step_time_pct": 10.0, "est_saving_ms_per_step": 1.0},
        "evidence": {},
        "where": {},
        "fixes": ["known", "unknown"],
        "analyzer": "a",
    }
    report = {"summary": {}, "findings": [finding]}

    def advice(fix_id: str) -> str | None:
        return "ADVICE FOR KNOWN FIX" if fix_id == "known" else None

    console = Console(record=True, width=160)
    console.print(ReportView(report, fix_advice=advice))
    for text in (to_markdown(report, fix_advice=advice), console.export_text(), render_html(report, fix_advice=advice)):
        assert text.count("ADVICE FOR KNOWN FIX") == 1
    assert "ADVICE" not in to_markdown(report)  # without a lookup: only the fix ids


def test_evidence_flags_read_as_words_on_the_console() -> None:
    finding = {
        "id": "x",
        "category": "input-pipeline",
        "title": "T",
        "severity": "high",
        "confidence": 0.9,
        "impact": {"step_time_pct": 10.0, "est_saving_ms_per_step": 1.0},
        "evidence": {"gpu_timeline": False, "pinned": True},
        "where": {},
        "fixes": [],
        "analyzer": "a",
    }
    console = Console(record=True, width=160)
    console.print(ReportView({"summary": {}, "findings": [finding]}))
    lines = {
        ln.split()[0]: ln.split()[1]
        for ln in console.export_text().splitlines()
        if ln.split()[:1] in (["gpu_timeline"], ["pinned"])
    }
    assert lines == {"gpu_timeline": "no", "pinned": "yes"}


def test_report_types_are_checked_where_the_schema_describes_them(tmp_path: Path, diagnosed: tuple[Path, dict]) -> None:
    _, report = diagnosed
    check_types(report, tmp_path / "r.yaml")  # a report diagnose wrote passes
    check_types({"schema_version": 2, "summary": {}}, tmp_path / "r.yaml")  # missing sections pass
    finding = report["findings"][0] if report["findings"] else {"id": "x", "severity": "high"}
    for where, value, message in (
        ("summary.steps", "3", "summary.steps is str '3'"),
        ("summary.steps", True, "summary.steps is bool True"),
        ("summary.step_time_ms.median", float("nan"), "median is float nan"),
        ("summary.step_time_ms.samples", [1.0, 10**30], "samples[1] is int"),
        ("summary.breakdown_pct.compute_pct", [], "compute_pct is list"),
        ("findings", [dict(finding, severity="urgent")], "findings[0].severity is 'urgent', not one of"),
        ("top_kernels", [{"name": "k", "pct": 250.0}], "top_kernels[0].pct is 250.0, out of range"),
        ("environment.gpu", 7, "environment.gpu is int 7"),
    ):
        doc = json.loads(json.dumps(report))
        *parents, last = where.split(".")
        node = doc
        for key in parents:
            node = node[key]
        node[last] = value
        with pytest.raises(ToolError, match=re.escape(message)) as err:
            check_types(doc, tmp_path / "r.yaml")
        assert str(tmp_path / "r.yaml") in str(err.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"traceEvents": []}', "no trace events in it"),
        ("[]", "no trace events in it"),
        ("[1, 2, 3]", "no trace events in it"),
        ('{"traceEvents": [{"ph": "X", "name": "a"}, {"ph": "s", "ts": 1}]}', "none of its 2 events is usable"),
        ('{"traceEvents": [{"ph": "X", "name": "a", "ts": "soon", "dur": 1}]}', "none of its 1 events is usable"),
    ],
)
def test_a_trace_without_usable_events_is_an_error_saying_so(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(ToolError, match=re.escape(message)) as err:
        open_report(path)
    assert str(path) in str(err.value) and "torch.profiler" in str(err.value)


def test_a_bare_json_list_of_events_is_diagnosed(tmp_path: Path, diagnosed: tuple[Path, dict]) -> None:
    trace, report = diagnosed
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(json.loads(trace.read_text())["traceEvents"]))
    again, ctx = open_report(bare)
    assert ctx is not None and again["source"]["events"] == report["source"]["events"]
    assert again["summary"]["steps"] == report["summary"]["steps"]
