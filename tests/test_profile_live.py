"""The live status on a terminal: a reserved bottom line; the target's own lines arrive intact."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from test_profile import ROOT, WL, env_for, meta


def test_live_status_on_a_terminal_keeps_target_lines_intact(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = env_for()
    env.update(TERM="xterm", COLUMNS="100", LINES="24")
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stallscope.cli", "profile", "--out", str(out), "--no-diagnose", "--skip", "1", "--steps", "2", "--",
         sys.executable, str(WL / "train_tiny.py"), "--steps", "40", "--sleep-ms", "40", "--print"],
        cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, text[-2000:]
    assert "\x1b[1;23r" in text  # the scroll region leaves the bottom line to the status
    assert "\x1b[r" in text  # and is given back at the end
    assert re.search(r"\x1b\[24;1H\x1b\[2K.*stallscope.*steps \d+", text)  # status drawn on the last row
    for i in range(40):  # each of the target's lines arrives in one piece (after a newline or our cursor restore)
        assert re.search(rf"(^|\n|\x1b8)step {i} loss -?\d+\.\d{{4}}\r?\n", text), f"line of step {i} garbled or missing"
    assert "TRAIN_DONE" in text
    assert meta(out)["exit"]["status"] == "ok"
