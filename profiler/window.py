"""The full-trace window: a Kineto session over ``--steps`` steps after ``--skip``, and its cost.

:class:`TraceWindow` owns the torch.profiler session of one process: starting it (one warmup
step early), the ``ProfilerStep#N`` range of each traced step, stopping and exporting it to
``trace.json.gz``, calibrating the trace clock to epoch nanoseconds (docs/run-format.md,
"Clock"), and the figures of what it cost (``overhead``, :meth:`TraceWindow.slowdown`).
The recorder decides *when* (at step boundaries); the window does the rest.
"""

from __future__ import annotations

import gzip
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

from stallscope.profiler import runformat

__all__ = [
    "TraceWindow",
    "WINDOW_WARMUP_STEPS",
    "CLOCK_MARK",
    "CUPTI_TEARDOWN_OURS",
    "background",
    "cupti_teardown",
    "process_cpus",
]

# Kineto starts one step early (a warmup step, as torch.profiler's schedule has): the first traced
# step would otherwise carry the profiler's start-up cost on the host, which shows as GPU gaps.
WINDOW_WARMUP_STEPS = 1
CLOCK_MARK = "stallscope.clock_sync"
# baseTimeNanoseconds and the marker agree within this when the trace clock is the epoch clock
CLOCK_AGREE_NS = 5_000_000
# Set in the target's environment when stallscope (not the user) chose TEARDOWN_CUPTI=1.
CUPTI_TEARDOWN_OURS = "STALLSCOPE_TEARDOWN_CUPTI"
# Before CUDA 12.6, re-initialising CUPTI after a teardown crashed processes that use CUDA graphs
# (torch.compile's cudagraphs path turns teardown off there for the same reason).
CUPTI_TEARDOWN_MIN_CUDA = (12, 6)
# "0" turns off the compaction started after the export (see TraceWindow._start_compaction).
COMPACT_ENV = "STALLSCOPE_COMPACT"
# The compaction runs below the training's priority: it only has to be done before a diagnose.
COMPACT_NICE = 10
# The child loads stallscope from the folder this profiler runs from (the target's Python may
# not have it installed: the bootstrap found it through STALLSCOPE_HOME), then runs the command.
_COMPACT_CHILD = (
    "import importlib.util, os, sys\n"
    "home = sys.argv[1]\n"
    "spec = importlib.util.spec_from_file_location('stallscope', os.path.join(home, '__init__.py'), "
    "submodule_search_locations=[home])\n"
    "pkg = importlib.util.module_from_spec(spec)\n"
    "sys.modules['stallscope'] = pkg\n"
    "spec.loader.exec_module(pkg)\n"
    "from stallscope.analyzers.compaction import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def process_cpus() -> set[int]:
    """The CPUs any thread of this process may run on (Linux; empty where it cannot be read).

    A child inherits the mask of the thread that starts it, and the training thread is often
    pinned to one CPU (by the user, a launcher's ``--cpu-bind``, or a benchmark).
    """
    cpus: set[int] = set()
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        tids = ["0"]
    for tid in tids:
        try:
            cpus |= os.sched_getaffinity(int(tid))
        except (AttributeError, OSError, ValueError):
            continue
    return cpus


def background(pid: int) -> None:
    """Make ``pid`` run only on CPU time the training leaves idle, on any CPU of this process.

    ``SCHED_IDLE`` (Linux) gives it CPU only when no normal task wants one, which ``nice`` alone
    does not: by the scheduler's weights (110 at nice 10 against 1024 at nice 0) a child that
    inherited a training thread's single-CPU mask takes about a tenth of that CPU while it runs,
    which a host-bound step feels in full. Widening its mask to the whole process's CPUs lets it
    use the others instead. Best effort: where either call is missing or refused, the child
    keeps its nice level.
    """
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        pass
    cpus = process_cpus()
    if cpus:
        try:
            os.sched_setaffinity(pid, cpus)
        except (AttributeError, OSError):
            pass


def cupti_teardown(torch: Any, notice: Callable[[str], None]) -> None:
    """Have Kineto release CUPTI when the window stops (``TEARDOWN_CUPTI=1``, read at the stop).

    Left attached, CUPTI adds host time to every later CUDA call: ResNet-50 at batch 128 on an
    H200 ran +33 % slower for the rest of the run, GPU time unchanged
    (bench/results/window-after-effect-investigation.yaml). A value the user or torch set is
    kept; on CUDA older than 12.6 ours is withdrawn (CUDA graphs crashed there after a teardown).
    """
    ours = os.environ.get(CUPTI_TEARDOWN_OURS) == "1"
    if "TEARDOWN_CUPTI" not in os.environ:
        os.environ["TEARDOWN_CUPTI"], ours = "1", True
    if not ours:
        if os.environ.get("TEARDOWN_CUPTI") != "1":
            notice("TEARDOWN_CUPTI is not 1: CUPTI stays attached after the window, which can slow the rest of the run")
        return
    try:
        parts = tuple(int(x) for x in str(torch.version.cuda or "").split(".")[:2])
    except ValueError:
        parts = ()
    if parts and parts < CUPTI_TEARDOWN_MIN_CUDA:
        os.environ["TEARDOWN_CUPTI"] = "0"
        notice(
            f"CUDA {torch.version.cuda} < 12.6: CUPTI is not torn down after the window (CUDA graphs "
            "could crash); the rest of the run may be slower than without the window"
        )


class TraceWindow:
    """The window of one process (see module docstring).

    ``state`` is ``pending`` (not reached), ``active`` (Kineto on), ``done`` or ``skipped`` (with
    ``note`` saying why). ``first``/``last`` are the first and last traced step.
    """

    def __init__(
        self, torch: Any, skip: int, steps: int, *, stack: bool, memory: bool, notice: Callable[[str], None]
    ) -> None:
        self.torch = torch
        self.skip, self.steps = skip, steps
        self.stack, self.memory = stack, memory
        self.notice = notice
        self.state = "pending"
        self.note: Optional[str] = None
        self.first: Optional[int] = None
        self.last: Optional[int] = None
        self.cut_step = -1  # a step whose ProfilerStep range was cut short by the window's end
        self.trace_written = False
        self.overhead: dict[str, Any] = {}
        self.clock: dict[str, Any] = {}
        self._prof: Any = None
        self._step_rf: Any = None
        self._compactor: Optional[subprocess.Popen[bytes]] = None

    # ------------------------------------------------------------------ when
    def starts_at(self, index: int) -> bool:
        """Whether the window should start as step ``index`` opens."""
        return self.state == "pending" and index >= self.skip - WINDOW_WARMUP_STEPS

    def ends_after(self, index: int) -> bool:
        """Whether the window is over once steps before ``index`` are done."""
        return self.state == "active" and self.first is not None and index >= self.first + self.steps

    def pending_until(self) -> int:
        """The last step index that can open while the window stays untouched (pending state)."""
        return self.skip - WINDOW_WARMUP_STEPS - 1

    @property
    def active(self) -> bool:
        """Kineto is recording."""
        return self.state == "active"

    # ------------------------------------------------------------------ start / steps / stop
    def start(self) -> bool:
        """Start Kineto; False (state ``skipped``, with a note) when it cannot."""
        if self._profiler_busy():
            self.skip_with("another profiler was already running at the window's first step; no window trace")
            return False
        tp = self.torch.profiler
        acts = [tp.ProfilerActivity.CPU]
        try:
            if self.torch.cuda.is_available():
                acts.append(tp.ProfilerActivity.CUDA)
        except Exception:
            pass
        cupti_teardown(self.torch, self.notice)
        t0 = time.perf_counter()
        try:
            prof = tp.profile(
                activities=acts, record_shapes=True, with_flops=True, with_stack=self.stack, profile_memory=self.memory
            )
            prof._stallscope_own = True  # the hooks leave our own profiler alone
            prof.start()
        except Exception as exc:
            self.skip_with(f"torch.profiler could not start ({exc.__class__.__name__}: {exc}); no window trace")
            return False
        self._prof = prof
        self.state = "active"
        before = time.time_ns()
        with self.torch.autograd.profiler.record_function(CLOCK_MARK):
            pass
        after = time.time_ns()
        self.clock = {"mark_before_ns": before, "mark_after_ns": after}
        self.overhead["window_start_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        return True

    def open_step(self, index: int) -> None:
        """Step ``index`` opens: give it its ``ProfilerStep#`` range when it is a traced step."""
        if self.state == "active" and index >= self.skip:
            self._step_rf = self.torch.autograd.profiler.record_function(f"ProfilerStep#{index}")
            self._step_rf.__enter__()

    def close_step(self, index: int) -> bool:
        """Step ``index`` closes; returns whether it was traced."""
        traced = self._step_rf is not None or index == self.cut_step
        if traced:
            self._exit_step_range()
            self.last = index
            if self.first is None:
                self.first = index
        return traced

    def stop(self, folder: Optional[Path], index: int, keep: bool = True) -> None:
        """Stop Kineto while step ``index`` is open; write the trace into ``folder`` when ``keep``."""
        prof, self._prof = self._prof, None
        if self._step_rf is not None:
            self.cut_step = index  # its ProfilerStep range is in the trace, cut short
            self._exit_step_range()
        self.state = "done"
        if prof is None:
            return
        t0 = time.perf_counter()
        try:
            prof.stop()
            if keep and folder is not None:
                self._export(prof, folder)
        except Exception as exc:
            self.notice(f"window trace could not be written ({exc.__class__.__name__}: {exc})")
        self.overhead["window_stop_export_ms"] = round((time.perf_counter() - t0) * 1e3, 3)

    def skip_with(self, note: str) -> None:
        """Give the window up (state ``skipped``) and say why once."""
        self.state = "skipped"
        self.note = note
        self.notice(note)

    def reset(self) -> None:
        """Start over (the step source changed): a done window may be taken again."""
        if self.state == "done":
            self.state = "pending"
            self.trace_written = False
        self.first = self.last = None
        self.cut_step = -1

    def _exit_step_range(self) -> None:
        rf, self._step_rf = self._step_rf, None
        if rf is not None:
            try:
                rf.__exit__(None, None, None)
            except Exception:
                pass

    def _profiler_busy(self) -> bool:
        try:
            return bool(self.torch._C._autograd._profiler_enabled())
        except Exception:
            return False

    # ------------------------------------------------------------------ export
    def _export(self, prof: Any, folder: Path) -> None:
        pid = os.getpid()
        raw = folder / f".trace.{pid}.json"
        prof.export_chrome_trace(str(raw))
        try:
            with open(raw, "rb") as src:
                data = src.read()
            self.clock = calibrate_clock(data, self.clock)
            tmp = folder / f".{runformat.TRACE}.{pid}.tmp"
            with gzip.open(tmp, "wb", compresslevel=3) as dst:
                dst.write(data)
            os.replace(tmp, folder / runformat.TRACE)
            self.trace_written = True
        finally:
            try:
                raw.unlink()
            except OSError:
                pass
        self._start_compaction(folder / runformat.TRACE)

    def _start_compaction(self, trace: Path) -> None:
        """Have a detached, low-priority process write the trace's table files next to it
        (``python -m stallscope.analyzers.compaction``), so that ``diagnose`` of a big job reads
        small columnar files instead of parsing every rank's trace. The profiler never imports
        the analyzers (the capture side stays light in the target), hence the subprocess: its
        own session (a Ctrl-C of the job does not cut a table short; a cut one is ignored anyway),
        no stdin/stdout, at idle priority on any of the process's CPUs (:func:`background`), and
        without the profiler's environment, so it is not profiled."""
        if os.environ.get(COMPACT_ENV, "1").strip().lower() in ("0", "off", "no", "false"):
            return
        env = {k: v for k, v in os.environ.items() if k not in ("STALLSCOPE_RUN_DIR", "STALLSCOPE_PATCH_FROM")}
        cmd = [
            sys.executable,
            "-c",
            _COMPACT_CHILD,
            str(_PACKAGE_DIR),
            str(trace),
            "--nice",
            str(COMPACT_NICE),
            "--quiet",
        ]
        try:
            self._compactor = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                env=env,
                cwd=str(trace.parent),
            )
        except OSError as exc:
            self.notice(
                f"trace tables not written at the source ({exc.__class__.__name__}: {exc}); diagnose parses the trace"
            )
            return
        background(self._compactor.pid)

    def compaction_state(self) -> Optional[str]:
        """``running``, ``done``, ``failed (exit N)``, or None when no compaction was started."""
        proc = self._compactor
        if proc is None:
            return None
        code = proc.poll()
        if code is None:
            return "running"
        return "done" if code == 0 else f"failed (exit {code})"

    # ------------------------------------------------------------------ rank.yaml
    def info(self) -> dict[str, Any]:
        """The ``window`` section of rank.yaml."""
        return {
            "skip": self.skip,
            "steps": self.steps,
            "state": self.state,
            "first_step": self.first,
            "last_step": self.last,
            "trace": runformat.TRACE if self.trace_written else None,
            "note": self.note,
            "stack": self.stack,
            "memory": self.memory,
            "compaction": self.compaction_state(),
        }

    def clock_info(self) -> dict[str, Any]:
        """The trace-clock part of rank.yaml's ``clock`` section."""
        if "trace_to_epoch_ns" in self.clock:
            return dict(self.clock)
        return {"trace_to_epoch_ns": None, "method": None}

    def slowdown(self, walls: Sequence[float], flags: Sequence[int]) -> dict[str, Any]:
        """Median wall time of window steps vs the other steps (the first step, the profiler's
        warmup step and the export step excluded from the baseline)."""
        inside = [w for w, f in zip(walls, flags, strict=False) if f]
        after_export = (self.last + 1) if self.last is not None else None
        warmup = range(self.first - WINDOW_WARMUP_STEPS, self.first) if self.first else range(0)
        outside = [
            w
            for i, (w, f) in enumerate(zip(walls, flags, strict=False))
            if not f and i != 0 and i != after_export and i not in warmup
        ]
        out: dict[str, Any] = {"window_steps": len(inside), "baseline_steps": len(outside)}
        if inside and outside:
            med_in, med_out = statistics.median(inside), statistics.median(outside)
            out["window_step_median_ms"] = round(med_in, 4)
            out["light_step_median_ms"] = round(med_out, 4)
            out["window_slowdown_pct"] = round((med_in / med_out - 1) * 100, 2) if med_out > 0 else None
        else:
            out["window_slowdown_pct"] = None
        return out


def calibrate_clock(data: bytes, marks: dict[str, Any]) -> dict[str, Any]:
    """Trace ``ts`` (us) -> epoch ns for an exported trace: Kineto writes ``ts`` relative to
    ``baseTimeNanoseconds``; the clock marker recorded at the window's start checks it.
    ``marks`` holds ``mark_before_ns``/``mark_after_ns`` (empty when no marker was made)."""
    pattern = rb'"baseTimeNanoseconds"\s*:\s*(\d+)'
    m = re.search(pattern, data[-4096:]) or re.search(pattern, data)
    base = int(m.group(1)) if m else None
    measured = None
    mark = re.search(rb'"name"\s*:\s*"' + CLOCK_MARK.encode() + rb'"[^}]*?"ts"\s*:\s*([0-9.]+)', data)
    if mark and marks:
        ts_ns = round(float(mark.group(1)) * 1000)
        measured = (marks["mark_before_ns"] + marks["mark_after_ns"]) // 2 - ts_ns
    if base is not None and (measured is None or abs(measured - base) < CLOCK_AGREE_NS):
        offset, method = base, "baseTimeNanoseconds"
    elif measured is not None:
        offset, method = measured, "marker"
    else:
        offset, method = 0, "assumed-epoch"
    return {
        "trace_to_epoch_ns": int(offset),
        "method": method,
        "base_time_ns": base,
        "marker_residual_ns": None if measured is None else int(measured - offset),
        "marker_window_ns": (marks["mark_after_ns"] - marks["mark_before_ns"]) if marks else None,
    }
