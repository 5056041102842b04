"""`--help` of every command: flags without a value placeholder, choices shown, `-- CMD` in the
usage of the commands that run one, and every option it lists documented in docs/cli.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stallscope.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    ["profile"],
    ["demo"],
    ["diagnose"],
    ["report"],
    ["compare"],
    ["run"],
    ["patch", "plan"],
    ["gate", "check"],
    ["gate", "ab"],
]


def _help(cmd: list[str]) -> str:
    res = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help_reads_as_documented(cmd: list[str]) -> None:
    text = _help(cmd)
    assert "<bool>" not in text
    if "--format" in text:
        assert re.search(r"\[console\|[a-z|]+\]", text), text
    if cmd[0] in ("profile", "run"):
        assert "-- CMD" in text.split("\n\n")[0] + text[:400]
    docs = (ROOT / "docs" / "cli.md").read_text()
    listed = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", text)) - {"--help"}
    missing = sorted(o for o in listed if o not in docs)
    assert not missing, f"`stallscope {' '.join(cmd)}` has {missing}; docs/cli.md does not mention them"
