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


def test_stored_help_is_what_typer_prints_now() -> None:
    """cli_help.json (the fast path of `stallscope COMMAND --help`) holds typer's current rendering
    of every command in every variant; regenerate with `python3 -m tests.cli_help_store`."""
    import json

    from stallscope.cli import HELP_STORE
    from tests.cli_help_store import build

    stored = json.loads(HELP_STORE.read_text(encoding="utf-8"))
    fresh = build()
    assert stored["key"] == fresh["key"], "cli.py or typer changed: run `python3 -m tests.cli_help_store`"
    stale = [f"{v}: {c!r}" for v in fresh if v != "key" for c in fresh[v] if stored[v].get(c) != fresh[v][c]]
    assert not stale, f"stale stored help for {stale}; run `python3 -m tests.cli_help_store`"


def test_entry_serves_help_from_the_store_only_where_it_matches() -> None:
    import subprocess
    import sys

    from stallscope.cli import help_variant, stored_help

    assert help_variant(False, 200, {}) == "plain"
    assert help_variant(True, 120, {"TERM": "xterm"}) == "ansi100"
    assert help_variant(True, 90, {"TERM": "xterm"}) == "ansi80"
    assert help_variant(True, 60, {"TERM": "xterm"}) is None  # narrow: typer wraps it itself
    assert help_variant(False, 80, {"COLUMNS": "150"}) is None
    assert stored_help(["diagnose", "--help"], "plain") is not None
    assert stored_help(["diagnose", "--bogus", "--help"], "plain") is None
    assert stored_help(["diagnose", "x.json"], "plain") is None
    # the console entry point, piped: the stored text, byte for byte what typer prints
    code = "import sys; from stallscope.cli import entry; sys.argv[0] = 'stallscope'; entry()"
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("COLUMNS", "NO_COLOR", "FORCE_COLOR")}
    fast = subprocess.run(
        [sys.executable, "-c", code, "gate", "check", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert fast.returncode == 0 and fast.stdout == stored_help(["gate", "check", "--help"], "plain")
    assert "--baseline" in fast.stdout
    bad = subprocess.run(
        [sys.executable, "-c", code, "diagnose", "--no-such-flag"], capture_output=True, text=True, env=env, timeout=60
    )
    assert bad.returncode == 2 and "no-such-flag" in bad.stderr
