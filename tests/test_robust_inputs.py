"""Hostile and mistaken inputs: bounded YAML, bounded notices, output paths checked before any
work, exit codes that mean one thing (issue: reliability, items 4 and 5)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stallscope import cli
from stallscope.analyzers.report import MAX_NOTICE_CHARS, MAX_NOTICES, bounded_notices
from stallscope.profiler.common import EXIT_INTERNAL, EXIT_USAGE, MAX_MESSAGE_CHARS, ToolError, read_yaml

LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def _trace(path: Path) -> Path:
    """A small real Kineto-shaped CPU trace: two ProfilerStep ranges with an op each."""
    ev = []
    for i, t in enumerate((0, 1000)):
        ev.append(
            {"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{i}", "pid": 1, "tid": 1, "ts": t, "dur": 900}
        )
        ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": t + 10, "dur": 800})
    path.write_text(json.dumps({"traceEvents": ev}))
    return path


def test_billion_laughs_yaml_is_refused_not_expanded(tmp_path):
    p = tmp_path / "meta.yaml"
    p.write_text(LAUGHS)
    assert len(LAUGHS) < 400
    with pytest.raises(ToolError, match="aliases expand"):
        read_yaml(p)
    # aliases that stay small are fine (yaml.safe_dump writes them for repeated objects)
    shared = {"x": [1, 2]}
    q = tmp_path / "ok.yaml"
    q.write_text(yaml.safe_dump({"a": shared, "b": shared}))
    assert "&id" in q.read_text() and read_yaml(q) == {"a": {"x": [1, 2]}, "b": {"x": [1, 2]}}


def test_diagnose_of_a_run_with_a_hostile_meta_is_one_line_exit_2(tmp_path):
    run = tmp_path / "run"
    (run / "rank0").mkdir(parents=True)
    (run / "meta.yaml").write_text(LAUGHS)
    out = subprocess.run(
        [sys.executable, "-m", "stallscope.cli", "diagnose", str(run)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == EXIT_USAGE, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "meta.yaml" in lines[0] and "Traceback" not in out.stderr


def test_notices_are_capped_in_number_and_length():
    notices = [f"notice {i} " + "x" * 5000 for i in range(300)] + [["not", "a", "string"]] * 3
    out = bounded_notices(notices)
    assert len(out) == MAX_NOTICES and out[-1].endswith("more notices left out")
    assert all(isinstance(n, str) and len(n) <= MAX_NOTICE_CHARS for n in out)


def test_output_paths_are_checked_before_any_work(tmp_path):
    runner = CliRunner()
    trace = _trace(tmp_path / "t.json")
    before = trace.read_bytes()
    res = runner.invoke(cli.app, ["diagnose", str(trace), "-o", str(trace)])
    assert res.exit_code == EXIT_USAGE and "would be overwritten" in res.output
    assert trace.read_bytes() == before
    folder = tmp_path / "out"
    folder.mkdir()
    res = runner.invoke(cli.app, ["compare", str(trace), str(trace), "-o", str(folder)])
    assert res.exit_code == EXIT_USAGE and "is a folder" in res.output
    base, cur = tmp_path / "base.yaml", tmp_path / "cur.yaml"
    base.write_text("baseline: kept\n")
    cur.write_text("current: kept\n")
    res = runner.invoke(cli.app, ["gate", "--baseline", str(base), str(cur), "-o", str(base)])
    assert res.exit_code == EXIT_USAGE and "would be overwritten" in res.output
    assert base.read_text() == "baseline: kept\n"
    res = runner.invoke(cli.app, ["gate", "--baseline", str(base), str(cur), "--junit", str(folder)])
    assert res.exit_code == EXIT_USAGE and "is a folder" in res.output
    res = runner.invoke(cli.app, ["report", str(trace), "--html", str(folder)])
    assert res.exit_code == EXIT_USAGE and "is a folder" in res.output


def test_usage_errors_keep_exit_2_with_debug_and_internal_errors_exit_70(tmp_path, monkeypatch):
    runner = CliRunner()
    missing = tmp_path / "nope.json"
    for args in (["diagnose", str(missing)], ["--debug", "diagnose", str(missing)]):
        res = runner.invoke(cli.app, args)
        assert res.exit_code == EXIT_USAGE, (args, res.output)
    import stallscope.analyzers.command as command

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(command, "diagnose_command", broken)
    trace = _trace(tmp_path / "t.json")
    res = runner.invoke(cli.app, ["diagnose", str(trace)])
    assert res.exit_code == EXIT_INTERNAL
    assert "internal error: RuntimeError: boom" in res.output and "--debug" in res.output
    res = runner.invoke(cli.app, ["--debug", "diagnose", str(trace)])
    assert res.exit_code == EXIT_INTERNAL and "Traceback" in res.output


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: &x [*x]\n", "refers to a node it is part of"),
        ("x: &y {k: *y}\n", "refers to a node it is part of"),
        ("[" * 150 + "]" * 150, "nested more than 100 levels"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ("a: 1\nb: " + "9" * 30 + "\n", "line 2): not valid YAML (an integer past 64 bits)"),
        ("!!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ],
)
def test_hostile_yaml_is_one_error_naming_the_file(tmp_path, text, message):
    p = tmp_path / "x.yaml"
    p.write_text(text)
    with pytest.raises(ToolError, match=re.escape(message)) as err:
        read_yaml(p)  # returns at once: a self-referring alias once looped for ever
    assert str(p) in str(err.value)


def test_yaml_reads_as_json_shaped_text(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text(
        'd: 2020-01-01\nb: !!binary aGVsbG8=\ns: !!set {a, b}\nu: "\\ud800x"\nk: {"\\udfff": 1}\nok: "\\ud83d\\ude00"\n'
    )
    doc = read_yaml(p)
    assert doc == {
        "d": "2020-01-01",
        "b": "aGVsbG8=",
        "s": {"a": None, "b": None},
        "u": "\ufffdx",
        "k": {"\ufffd": 1},
        "ok": "\U0001f600",
    }
    yaml.safe_dump(doc, allow_unicode=True).encode("utf-8")  # every string can be written again


def test_tool_errors_are_one_bounded_line():
    e = ToolError("gate.yaml: alpha must be a number, got '" + "x" * 5000 + "\nsecond line'; fix gate.yaml")
    assert "\n" not in str(e) and len(str(e)) <= MAX_MESSAGE_CHARS
    assert str(e).startswith("gate.yaml: alpha") and str(e).endswith("; fix gate.yaml")


def test_folders_as_outputs_are_refused_before_any_input_is_read(tmp_path, monkeypatch):
    import stallscope.analyzers.inputs as inputs

    def never(*a, **k):
        raise AssertionError("an input was read before the outputs were checked")

    monkeypatch.setattr(inputs, "load_context", never)
    monkeypatch.setattr(inputs, "load_report", never)
    trace, folder = _trace(tmp_path / "t.json"), tmp_path / "out"
    folder.mkdir()
    base = tmp_path / "base.yaml"
    base.write_text("schema_version: 1\nsummary: {}\n")
    for args in (
        ["diagnose", str(trace), "-o", str(folder)],
        ["diagnose", str(trace), "--annotated-trace", str(folder)],
        ["compare", str(base), str(trace), "-o", str(folder)],
        ["report", str(trace), "--html", str(folder)],
        ["gate", "--baseline", str(base), str(trace), "--junit", str(folder)],
        ["gate", "--baseline", str(base), str(trace), "-o", str(folder)],
    ):
        res = CliRunner().invoke(cli.app, args)
        assert res.exit_code == EXIT_USAGE and "is a folder" in res.output, (args, res.output)
        assert list(folder.iterdir()) == []


def test_outputs_that_are_inputs_are_refused_and_left_as_they_were(tmp_path):
    trace = _trace(tmp_path / "t.json")
    report = tmp_path / "r.yaml"
    assert CliRunner().invoke(cli.app, ["diagnose", str(trace), "-o", str(report)]).exit_code == 0
    before = {p: p.read_bytes() for p in (trace, report)}
    for args in (
        ["diagnose", str(trace), "-o", str(trace)],
        ["diagnose", str(report), "-o", str(report)],
        ["diagnose", str(trace), "--annotated-trace", str(trace)],
        ["compare", str(report), str(trace), "-o", str(report)],
        ["gate", "--baseline", str(report), str(report), "-o", str(report)],
        ["gate", "--baseline", str(report), str(report), "--junit", str(report)],
    ):
        res = CliRunner().invoke(cli.app, args)
        assert res.exit_code == EXIT_USAGE and "would be overwritten" in res.output, (args, res.output)
    assert {p: p.read_bytes() for p in before} == before


def test_a_report_with_a_value_of_the_wrong_type_is_one_line_naming_it(tmp_path):
    trace = _trace(tmp_path / "t.json")
    report = tmp_path / "r.yaml"
    assert CliRunner().invoke(cli.app, ["diagnose", str(trace), "-o", str(report)]).exit_code == 0
    doc = yaml.safe_load(report.read_text())
    doc["summary"]["step_time_ms"]["samples"] = [1.0, {"a": 1}]
    doc["source"]["path"] = "\ud800 lone surrogate"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    res = CliRunner().invoke(cli.app, ["compare", str(report), str(bad)])
    assert res.exit_code == EXIT_USAGE
    assert "summary.step_time_ms.samples[1] is dict" in res.output and str(bad) in res.output
    doc["summary"]["step_time_ms"]["samples"] = [1.0, 2.0]
    bad.write_text(yaml.safe_dump(doc))
    out = tmp_path / "c.yaml"
    res = CliRunner().invoke(cli.app, ["compare", str(report), str(bad), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(out.read_text())["b"] == "\ufffd lone surrogate"
