"""Run a file of Triton-interpreter cases in a subprocess (helper, not a test).

``TRITON_INTERPRET=1`` must be set before triton is first imported (``triton.jit`` reads it when
a kernel is defined), which a test module inside a shared pytest process cannot promise; the case
files skip themselves without it, so a run that skipped anything is a failure here.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

NEEDS_TRITON = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def run_under_interpreter(case_file: str, timeout: float = 600) -> str:
    """Run ``tests/<case_file>`` under TRITON_INTERPRET=1; assert every case ran and passed."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / case_file)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    last = proc.stdout.strip().splitlines()[-1]
    assert " passed" in last and "skipped" not in last and "deselected" not in last, tail
    return proc.stdout
