"""docs/ci.md stays true: its YAML parses, its gate.yaml validates, its commands use real options."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer.main
import yaml

from stallscope.analyzers.gate.rules import parse_config
from stallscope.cli import app

DOC = Path(__file__).resolve().parents[1] / "docs" / "ci.md"


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)


def _commands(block: str) -> list[list[str]]:
    """Every `stallscope gate ...` command in a CI block, continuation lines joined."""
    text = block.replace("\\\n", " ")
    found = []
    for match in re.finditer(r"stallscope gate[^\n]*(?:\n\s+--[^\n]*)*", text):
        words = shlex.split(" ".join(match.group(0).split()), posix=True)
        found.append(words[2:])
    return found


def _options(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


def test_every_yaml_block_parses_and_the_gate_config_validates() -> None:
    blocks = _yaml_blocks()
    assert len(blocks) >= 4
    docs = [yaml.safe_load(b) for b in blocks]
    config = next(d for d in docs if isinstance(d, dict) and "rules" in d)
    parsed = parse_config(config, "docs/ci.md")
    assert {r.path for r in parsed.rules} >= {"summary.step_time_ms.median", "summary.breakdown_pct.gpu_idle_pct", "top_kernels.0.total_ms"}
    github = next(d for d in docs if isinstance(d, dict) and "jobs" in d)
    job = github["jobs"]["perf-gate"]
    assert job["runs-on"] == ["self-hosted", "linux", "gpu"] and any("stallscope gate ab" in s.get("run", "") for s in job["steps"])
    gitlab = next(d for d in docs if isinstance(d, dict) and "perf-gate" in d)["perf-gate"]
    assert gitlab["artifacts"]["reports"]["junit"] == "gate-junit.xml" and gitlab["allow_failure"]["exit_codes"] == [3]


def test_commands_in_the_workflows_use_existing_options() -> None:
    group = typer.main.get_command(app).commands["gate"]  # type: ignore[attr-defined]
    seen = 0
    for block in _yaml_blocks():
        for args in _commands(block):
            sub = "ab" if args[0] == "ab" else "check"
            command = group.commands[sub]
            used = {a.split("=")[0] for a in args if a.startswith("--")}
            assert used <= _options(command), (args, used - _options(command))
            seen += 1
    assert seen >= 3


@pytest.mark.parametrize("block", [b for b in _yaml_blocks() if "gitlab" in b or "CI_" in b])
def test_gitlab_folded_command_is_one_line(block: str) -> None:
    script = yaml.safe_load(block)["perf-gate"]["script"]
    gate = next(s for s in script if s.startswith("stallscope gate ab"))
    assert "\n" not in gate.strip()
