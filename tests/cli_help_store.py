"""Write ``cli_help.json``: typer's own ``--help`` rendering of every command, for the fast path
of ``stallscope.cli.entry``. Run from the repository root after changing cli.py:

    python3 -m tests.cli_help_store

tests/test_cli_help.py renders it again and fails when the stored text is stale.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from stallscope.cli import HELP_STORE, help_store_key

COMMANDS = [
    "",
    "profile",
    "demo",
    "diagnose",
    "report",
    "compare",
    "run",
    "patch",
    "patch plan",
    "gate",
    "gate check",
    "gate ab",
]
# variant -> environment under which typer renders it the way that terminal would show it
VARIANTS = {
    "plain": {},
    "ansi80": {"FORCE_COLOR": "1", "TERMINAL_WIDTH": "80", "TERM": "xterm-256color"},
    "ansi100": {"FORCE_COLOR": "1", "TERMINAL_WIDTH": "100", "TERM": "xterm-256color"},
}
_CLEAN = (
    "COLUMNS",
    "TERMINAL_WIDTH",
    "FORCE_COLOR",
    "PY_COLORS",
    "NO_COLOR",
    "GITHUB_ACTIONS",
    "COLORTERM",
    "_TYPER_FORCE_DISABLE_TERMINAL",
)


def render(command: str, variant: str) -> str:
    """What typer prints for ``stallscope COMMAND --help`` in ``variant`` (a fresh process: typer
    reads its width and colour settings at import)."""
    env = {k: v for k, v in os.environ.items() if k not in _CLEAN}
    env.update(VARIANTS[variant])
    code = "import sys; from stallscope.cli import app; sys.argv[0] = 'stallscope'; app()"
    proc = subprocess.run(
        [sys.executable, "-c", code, *command.split(), "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    if proc.returncode != 0:
        raise RuntimeError(f"stallscope {command} --help exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return proc.stdout


def build() -> dict[str, object]:
    """The whole store: every command in every variant."""
    jobs = [(v, c) for v in VARIANTS for c in COMMANDS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        texts = list(pool.map(lambda job: render(job[1], job[0]), jobs))
    doc: dict[str, object] = {"key": help_store_key()}
    for (variant, command), text in zip(jobs, texts, strict=True):
        doc.setdefault(variant, {})[command] = text  # type: ignore[union-attr]
    return doc


def main() -> None:
    tmp = HELP_STORE.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(build(), indent=0, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, HELP_STORE)
    print(f"wrote {HELP_STORE}")


if __name__ == "__main__":
    main()
