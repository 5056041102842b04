"""``stallscope profile -- CMD``: run the target under the injected bootstrap and finish the run directory.

Stages: validate (nothing is created on bad use) -> prepare the run directory -> spawn the
target in its own session with the bootstrap on PYTHONPATH -> live status and signal
forwarding -> finalize ``meta.yaml`` -> summary. The caller (the CLI) diagnoses the run
afterwards when :class:`ProfileResult` says so. No torch in this process.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from stallscope.profiler import runformat
from stallscope.profiler._bootstrap import inject
from stallscope.profiler.common import ToolError, read_yaml
from stallscope.profiler.live import LiveStatus
from stallscope.profiler.options import ProfileOptions
from stallscope.profiler.patchphases import phase_of, read_phases
from stallscope.profiler.rundir import MetaWriter, default_run_dir, prepare_run_dir, remove_created, shared_out
from stallscope.profiler.window import CUPTI_TEARDOWN_OURS

__all__ = ["ProfileResult", "profile_command", "resolve_command", "child_environment", "RunSummary", "print_summary"]

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Below this the window's own cost is not told apart from step-to-step noise (a few % on a
# busy host; docs/overhead.md), so the summary says "as fast as the others" rather than a figure.
WINDOW_COST_SHOWN_PCT = 3.0


def resolve_command(argv: list[str]) -> list[str]:
    """The argv to execute: bare ``x.py`` runs with this Python; missing or non-executable commands are errors."""
    if not argv:
        raise ToolError("no command given; put it after `--`, e.g. stallscope profile -- python train.py")
    first = argv[0]
    if first.startswith("-"):
        raise ToolError(f"{first}: unknown option; put stallscope options before `--` and the command after it")
    looks_like_path = os.sep in first or first.endswith((".py", ".sh")) or os.path.exists(first)
    if looks_like_path:
        p = Path(first)
        if not p.exists():
            raise ToolError(f"{first}: no such file; check the path of the command after `--`")
        if p.is_dir():
            raise ToolError(f"{first}: is a folder, not a command; give the script or program to run")
        if first.endswith(".py"):
            return [sys.executable, *argv]
        if os.access(p, os.X_OK):
            return [str(p) if os.sep in first else f".{os.sep}{first}", *argv[1:]]
        if first.endswith(".sh"):
            return [shutil.which("bash") or "/bin/sh", *argv]
        raise ToolError(f"{first}: not executable; run `chmod +x {first}` or put its interpreter first")
    found = shutil.which(first)
    if found is None:
        raise ToolError(f"{first}: command not found; check the spelling or your PATH")
    return [first, *argv[1:]]


def child_environment(run_dir: Path, options: ProfileOptions, base: Optional[dict] = None) -> dict:
    """The target's environment: the bootstrap first on PYTHONPATH plus the run directory and ``options``."""
    env = inject(dict(os.environ if base is None else base))
    env["STALLSCOPE_RUN_DIR"] = str(run_dir.absolute())
    env.update(options.to_env())
    if "TEARDOWN_CUPTI" not in env:
        # Kineto leaves CUPTI attached after the window unless this is 1; every later CUDA call then
        # costs the host ~10 us more, which slows a launch-bound loop for the rest of the run
        # (docs/overhead.md, "After the window"). The user's own value wins.
        env["TEARDOWN_CUPTI"] = "1"
        env[CUPTI_TEARDOWN_OURS] = "1"
    return env


class _Forwarder:
    """Forwards SIGINT/SIGTERM/SIGHUP to the target's process group; repeated Ctrl-C escalates."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.previous: dict = {}
        self.interrupts = 0

    def __enter__(self) -> _Forwarder:
        for sig in FORWARDED:
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except (ValueError, OSError):
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        sig = signum
        if signum == signal.SIGINT:
            self.interrupts += 1
            sig = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)[min(self.interrupts, 3) - 1]
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError):
                pass


@dataclass(frozen=True)
class ProfileResult:
    """What ``stallscope profile`` leaves for its caller.

    ``exit_code`` is the target's (128+N for signal N); ``diagnose`` says whether the caller
    should diagnose ``run_dir`` now (asked for, and at least one rank captured).
    """

    exit_code: int
    run_dir: Path
    diagnose: bool


def profile_command(
    cmd_argv: list[str],
    options: ProfileOptions,
    *,
    out: Optional[Path] = None,
    diagnose: bool = True,
    deep: bool = False,
    quiet: bool = False,
    after_run: Optional[Callable[[Path], None]] = None,
) -> ProfileResult:
    """Run ``cmd_argv`` under the profiler and write the run directory; prints the summary.

    ``options`` must be validated (``ProfileOptions.validate``). ``deep`` is recorded with the
    options (the caller's diagnosis uses it). The diagnosis itself is the caller's: the capture
    package does not depend on the analysis package. ``after_run(run_dir)`` runs once the target
    has ended and ``meta.yaml`` is final, before the summary (which then shows what it added).
    """
    argv = list(cmd_argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    options.validate()
    exec_argv = resolve_command(argv)
    run_dir = Path(out) if out is not None else default_run_dir(argv)
    created = prepare_run_dir(run_dir, shared=shared_out())
    meta = MetaWriter(run_dir, argv, options.skip, options.steps, {**options.meta(), "deep": deep})
    if exec_argv != argv:
        meta.meta["resolved_command"] = exec_argv
    env = child_environment(run_dir, options)
    try:
        meta.write()
        proc = subprocess.Popen(exec_argv, env=env, start_new_session=True)
    except OSError as exc:
        remove_created(created) if created else _clear(run_dir)
        raise ToolError(f"{argv[0]}: cannot start it ({exc.strerror or exc}); check the command after `--`") from None

    live = LiveStatus(run_dir, quiet=quiet)
    if not live.enabled and not quiet:
        sys.stderr.write(f"stallscope: profiling {' '.join(argv)} -> {run_dir}\n")
        sys.stderr.flush()
    live.start()
    with _Forwarder(proc.pid):
        try:
            while True:
                try:
                    rc = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    live.update()
        finally:
            live.stop()
    code, sig_name = _exit_code(rc)
    final = meta.finalize(code, sig_name, [])
    if after_run is not None and run_dir.is_dir():
        after_run(run_dir)
        try:
            final = runformat.read_meta(run_dir) or final
        except ToolError:
            pass
    will_diagnose = bool(diagnose and final["ranks"])
    if not quiet:
        # the diagnosis that follows shows the notices and the step time (one median on the screen)
        print_summary(run_dir, final, notices=not will_diagnose, step_time=not will_diagnose)
    return ProfileResult(code, run_dir, will_diagnose)


def _clear(run_dir: Path) -> None:
    for p in run_dir.iterdir():
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _exit_code(rc: int) -> tuple:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return 128 - rc, name
    return rc, None


class RunSummary:
    """End-of-run summary: exit, steps per rank, step time, data wait share, window, notices."""

    def __init__(self, run_dir: Path, meta: dict, notices: bool = True, step_time: bool = True) -> None:
        self.run_dir = run_dir
        self.meta = meta
        self.notices = notices
        self.step_time = step_time

    def __rich__(self) -> object:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        m = self.meta
        ex: dict[str, Any] = m.get("exit") or {}
        styles: dict[str | None, str] = {"ok": "green", "signal": "yellow"}
        style = styles.get(ex.get("status"), "red")
        head = Text.assemble(
            ("stallscope ", "bold"),
            ("run ", ""),
            (str(ex.get("status")), f"bold {style}"),
            (f"  exit {ex.get('code')}", ""),
            (f"  {ex.get('error')}" if ex.get("error") else "", "red"),
        )
        table = Table(box=None, pad_edge=False, header_style="bold")
        patches, unreadable = _read_patches(self.run_dir)
        phases = _phase_table(self.run_dir, m, patches)
        median_col = "median step ms" if phases is None else "median step ms (all phases)"
        cols = ["rank", "steps", "source", median_col, "GPU ms", "data wait %", "traced"]
        if not self.step_time:
            cols = [c for c in cols if c not in (median_col, "GPU ms")]
        for col in cols:
            table.add_column(col, justify="right" if col not in ("source", "traced") else "left")
        for r in m.get("ranks") or []:
            rows = runformat.read_csv_rows(runformat.rank_dir(self.run_dir, r) / runformat.STEPS_CSV)
            walls = [float(x["wall_ms"]) for x in rows if x.get("wall_ms")]
            gpus = [float(x["gpu_ms"]) for x in rows if x.get("gpu_ms")]
            waits = [float(x["data_wait_ms"]) for x in rows if x.get("data_wait_ms")]
            info = (m.get("per_rank") or {}).get(r) or {}
            win = info.get("window") or {}
            win_txt = (
                f"steps {win.get('first_step')}–{win.get('last_step')}"
                if win.get("first_step") is not None
                else str(win.get("state") or "-")
            )
            share = 100 * sum(waits) / sum(walls) if walls and sum(walls) > 0 else None
            cells = [str(r), str(len(rows)), str(info.get("step_source") or "-")]
            if self.step_time:
                cells += [
                    f"{statistics.median(walls):.2f}" if walls else "-",
                    f"{statistics.median(gpus):.2f}" if gpus else "-",
                ]
            table.add_row(*cells, f"{share:.1f}" if share is not None else "-", win_txt)
        parts: list = [head, table]
        if phases is not None:
            parts.append(phases)
        parts += [Text(line) for line in ([unreadable] if unreadable else _patch_lines(self.run_dir, patches))]
        over = m.get("overhead") or {}
        slow = over.get("window_slowdown_pct")
        if slow is not None:
            within = f"; {over['phase']}" if isinstance(over.get("phase"), str) else ""
            cost = (
                f"the traced steps ran {slow:+.1f} % slower than the others (median"
                if slow >= WINDOW_COST_SHOWN_PCT
                else f"the traced steps ran as fast as the others ({slow:+.1f} %, median"
            )
            parts.append(Text(f"trace window: {cost}{within})", style="dim"))
        for n in (m.get("notices") or []) if self.notices else []:
            parts.append(Text(f"note: {n}", style="yellow"))
        parts.append(Text.assemble(("run directory: ", "bold"), (str(self.run_dir), "cyan")))
        return Group(*parts)


def _read_patches(run_dir: Path) -> tuple[Any, str | None]:
    """``patches.yaml`` of the run (None when absent), and a line when it cannot be read."""
    path = run_dir / runformat.PATCHES
    try:
        return (read_yaml(path) if path.is_file() else None), None
    except ToolError:
        return None, f"auto-patch: {path} unreadable"


def _patch_lines(run_dir: Path, doc: Any) -> list[str]:
    """What auto-patch decided (``doc``: patches.yaml), one line per fix it tried and one for those it skipped."""
    fixes = doc.get("fixes") if isinstance(doc, dict) else None
    if not isinstance(fixes, list):
        return []
    lines, skipped = [], []
    for f in fixes[:50]:
        if not isinstance(f, dict):
            continue
        decision, why = str(f.get("decision")), str(f.get("why") or "")[:160]
        if decision == "skipped":
            skipped.append(str(f.get("id")))
        else:
            lines.append(f"auto-patch: {f.get('id')} {decision.replace('_', ' ')}: {why}")
    if skipped:
        lines.append(f"auto-patch: not tried: {', '.join(skipped)} (why in {run_dir / runformat.PATCHES})")
    return lines


def _phase_table(run_dir: Path, meta: dict, doc: Any) -> object | None:
    """Rank 0's step time per auto-patch phase (``doc``: patches.yaml; None when no phases)."""
    from rich.table import Table

    phases = read_phases(doc)
    ranks = meta.get("ranks") or []
    if not phases or not ranks:
        return None
    rows = runformat.read_csv_rows(runformat.rank_dir(run_dir, ranks[0]) / runformat.STEPS_CSV)
    walls: dict[int, list[float]] = {id(ph): [] for ph in phases}
    for x in rows:
        if x.get("wall_ms") and str(x.get("step", "")).isdigit():
            ph = phase_of(phases, int(x["step"]))
            if ph is not None:
                walls[id(ph)].append(float(x["wall_ms"]))
    table = Table(box=None, pad_edge=False, header_style="bold", title=f"rank {ranks[0]} by auto-patch phase")
    for col in ("phase", "steps", "median step ms"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for ph in phases:
        w = walls[id(ph)]
        table.add_row(ph.label(), str(len(w)), f"{statistics.median(w):.2f}" if w else "-")
    return table


def print_summary(run_dir: Path, meta: dict, notices: bool = True, step_time: bool = True) -> None:
    """Print the end-of-run summary on stderr (notices and the step time too unless the diagnosis
    that follows will show them)."""
    from rich.console import Console

    Console(stderr=True, highlight=False).print(RunSummary(run_dir, meta, notices=notices, step_time=step_time))
