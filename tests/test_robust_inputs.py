"""Hostile and mistaken inputs: bounded YAML, bounded notices, output paths checked before any
work, exit codes that mean one thing (issue: reliability, items 4 and 5)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stallscope import cli
from stallscope.analyzers.report import MAX_NOTICE_CHARS, MAX_NOTICES, bounded_notices
from stallscope.profiler.common import EXIT_INTERNAL, EXIT_USAGE, ToolError, read_yaml

LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def _trace(path: Path) -> Path:
    """A small real Kineto-shaped CPU trace: two ProfilerStep ranges with an op each."""
    ev = []
    for i, t in enumerate((0, 1000)):
        ev.append({"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{i}", "pid": 1, "tid": 1, "ts": t, "dur": 900})
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
    out = subprocess.run([sys.executable, "-m", "stallscope.cli", "diagnose", str(run)], capture_output=True,
                         text=True, timeout=120)
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
