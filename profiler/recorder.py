"""The recorder inside a profiled process: the step state machine and the collaborators it drives.

One :class:`Recorder` per process. The hooks (``profiler.hooks``) call its ``on_*`` methods
(``profiler.events``) and :meth:`Recorder.boundary`; it turns them into steps (one row of steps.csv each) and decides when
the trace window starts and stops. The work is done by collaborators that own their state:

* :class:`~profiler.gputime.GpuTimer`: CUDA events per step, read once the GPU has passed them
  (light mode never synchronizes the GPU);
* :class:`~profiler.window.TraceWindow`: the Kineto window, its export and its cost;
* :class:`~profiler.rankfiles.RankFiles`: the rank folder's files;
* :class:`~profiler.telemetry.Sampler`: host and NVML samples on a background thread, whose
  ticks drive :class:`~profiler.upkeep.Upkeep` (heartbeat, late CUDA events, periodic flush).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from stallscope.profiler import hooks
from stallscope.profiler.events import HookEvents
from stallscope.profiler.gputime import GpuTimer
from stallscope.profiler.options import ProfileOptions
from stallscope.profiler.phases import PhaseMarks
from stallscope.profiler.rankfiles import RankFiles, claim_rank_dir, rank_info
from stallscope.profiler.ranks import (
    LOCAL_RANK_VARS,
    RANK_VARS,
    WORLD_SIZE_VARS,
    env_int,
    is_launcher_process,
    is_multiprocessing_child,
)
from stallscope.profiler.steps import StepLog
from stallscope.profiler.telemetry import Sampler
from stallscope.profiler.upkeep import Upkeep
from stallscope.profiler.window import TraceWindow

__all__ = ["Recorder", "SOURCE_RANK"]

# Higher wins: an explicit call beats the user's prof.step(), which beats optimizer steps, which
# beat outermost module calls.
SOURCE_RANK = {"module": 1, "optimizer": 2, "profiler_step": 3, "api": 4}
# Finished CUDA events are read on the training thread at most this often, in one batch (warm code
# and data; no second thread calling into the CUDA driver while this one launches kernels).
POLL_PERIOD_NS = 40_000_000


class Recorder(HookEvents):
    """Per-process state of a profiled run (see module docstring).

    ``gpu`` replaces the CUDA event timer (tests pass one that scripts the GPU, or
    ``GpuTimer(torch, notice, enabled=False)`` for the path without events).
    """

    def __init__(
        self,
        options: ProfileOptions,
        run_dir: Path,
        rank_dir: Optional[Path] = None,
        origin: str = "bootstrap",
        gpu: Optional[GpuTimer] = None,
    ) -> None:
        import torch

        self.torch = torch
        self.options = options
        self.run_dir = Path(run_dir)
        self.rank_dir = rank_dir
        self.origin = origin
        self.pid = os.getpid()
        self.rank = env_int(RANK_VARS, 0)
        self.local_rank = env_int(LOCAL_RANK_VARS, 0)
        self.world_size = env_int(WORLD_SIZE_VARS, 1)
        self.disabled = False
        self.finished = False
        self.started = False
        self.origin_ns = time.time_ns()
        self.error: Optional[str] = None
        self.notices: list[str] = []
        self._notice_set: set[str] = set()
        self.gpu = gpu if gpu is not None else GpuTimer(torch, self.notice_once, on_device=self._on_device)
        self.window = TraceWindow(
            torch, options.skip, options.steps, stack=options.stack, memory=options.memory, notice=self.notice_once
        )
        self.log = StepLog(self.gpu)
        self.phases = PhaseMarks(torch, self.gpu)
        self.files: Optional[RankFiles] = None
        self.sampler: Optional[Sampler] = None
        self.module_hooks: Any = None  # set by hooks.install
        # the step now open
        self.index = 0
        self.step_open_ns: Optional[int] = None
        self.step_data_ns = 0
        self.source: Optional[str] = None
        self.open_event: Any = None
        # The CUDA event recorded per step (None: steps carry none, e.g. a CPU-only torch build)
        self.record_event: Optional[Callable[[], Any]] = self.gpu.record if self.gpu.enabled else None
        self._marks = self.log.marks  # steady-state steps, made into rows by log.drain
        self._fast_until = 0  # boundary takes the short path while index < this
        self._polled_ns = 0  # when the training thread last read finished events
        self.forward_in_step = False
        HookEvents.__init__(self)  # step detection state
        # Phase ranges are made only while someone reads them (NVTX listener or the window); one
        # flag, so the hooks on the hot path test one attribute.
        self.phases_on = self.phases.nvtx_on
        self.upkeep = Upkeep(self)

    # ------------------------------------------------------------------ basics
    def live(self) -> bool:
        """Whether this recorder still records (not finished, not disabled, not a forked copy)."""
        return not self.disabled and not self.finished

    def after_fork_in_child(self) -> None:
        """A forked child inherits the recorder: it must not record or write."""
        self.disabled = True

    def notice_once(self, message: str) -> None:
        """Record a one-line notice for rank.yaml (once per distinct text)."""
        if message not in self._notice_set:
            self._notice_set.add(message)
            self.notices.append(message)

    def listeners_changed(self) -> None:
        """A step listener was added: the next steps take the path that notifies listeners."""
        self._fast_until = 0

    def _on_device(self, index: int, uuid: Optional[str]) -> None:
        if self.sampler is not None:
            self.sampler.device = (index, uuid)

    def _start(self) -> None:
        """First activity: claim the rank folder, start the sampler, hand over to auto-patch."""
        if self.started:
            return
        self.started = True
        try:
            if self.rank_dir is None:
                self.rank_dir = claim_rank_dir(self.run_dir, self.rank, self.pid)
            self.rank_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.disabled = True
            sys.stderr.write(
                f"stallscope: cannot write to {self.run_dir} ({exc}); profiling disabled in pid {self.pid}\n"
            )
            return
        self.files = RankFiles(self.rank_dir)
        opts = self.options
        self.sampler = Sampler(
            opts.sample_hz,
            self.notice_once,
            nvml_enabled=opts.nvml,
            worker_pids=hooks.worker_pids,
            pcie_period_s=opts.pcie_period_s,
        )
        self.sampler.on_tick(self.upkeep.tick)
        if self.gpu.check() and self.gpu.props is not None:
            self.sampler.device = (self.gpu.props["index"], self.gpu.props.get("uuid"))
        self.sampler.start()
        if opts.auto_patch:
            self._attach_autopatch()

    def _attach_autopatch(self) -> None:
        assert self.rank_dir is not None
        try:
            from stallscope.fixes import autopatch

            autopatch.attach(self.rank_dir, self.options.patch_steps, skip=self.options.skip)
        except (ImportError, AttributeError) as exc:
            self.notice_once(f"auto-patch unavailable ({exc.__class__.__name__}: {exc}); running without it")
        except Exception as exc:
            self.notice_once(f"auto-patch failed to attach ({exc.__class__.__name__}: {exc}); running without it")

    # ------------------------------------------------------------------ steps
    def boundary(self, source: str, t_ns: Optional[int] = None) -> None:
        """End the current step (called by hooks and by the public ``step()``)."""
        if self.disabled or self.finished:
            return
        if self.index < self._fast_until and source == self.source:
            # The steady state (same source, no window near, no capture, no listener): one mark per
            # step, made into a row later. Every bytecode here costs: the step itself leaves our
            # code and data cold.
            t = time.time_ns() if t_ns is None else t_ns
            end_ev = rec() if (rec := self.record_event) is not None else None
            index = self.index
            self._marks.append((index, self.step_open_ns, t, self.step_data_ns, self.open_event, end_ev, source))
            self.open_event = end_ev
            self.index = index + 1
            self.step_open_ns = t
            self.step_data_ns = 0
            self.forward_in_step = False
            if t - self._polled_ns > POLL_PERIOD_NS and end_ev is not None:
                self._polled_ns = t
                self.settle_events()
            return
        self.log.drain()
        if source != self.source:  # rare: every step after the first has the same source
            if self.source is not None:
                if SOURCE_RANK[source] < SOURCE_RANK[self.source]:
                    return
                self._reset_for(source)
            self.source = source
            self._update_module_hooks()
        t = time.time_ns() if t_ns is None else t_ns
        if self.step_open_ns is None:
            self._start()
            if self.disabled:
                return
            self._open_step(self.origin_ns)
        self._close_step(t, source)
        if self.window.ends_after(self.index) and not self.gpu.capturing:
            self._stop_window(keep=True)
        self._open_step(t)
        self._fast_until = self._short_path_until()

    def _short_path_until(self) -> int:
        """The step index up to which boundary may take its short path from here."""
        window = self.window
        if (
            window.active
            or self.gpu.capturing
            or hooks.step_listeners
            or self.step_open_ns is None
            or window.cut_step >= self.index
            or not (self.record_event is None or self.gpu.ready)
        ):
            return 0
        if window.state == "pending":
            return window.pending_until()  # _open_step starts the window at the step after
        return sys.maxsize

    def settle_events(self) -> None:
        """Rows for the marks so far, then the GPU time of every finished step (training thread;
        skipped when the sampler thread holds the lock for a flush: no wait on its file writes)."""
        lock = self.log.lock
        if not lock.acquire(blocking=False):
            return
        try:
            self.log.drain()
        finally:
            lock.release()
        if self.gpu.pending:
            self.gpu.poll()

    def _open_step(self, t_ns: int) -> None:
        self.step_open_ns = t_ns
        self.step_data_ns = 0
        self.forward_in_step = False
        # never start (or stop) Kineto inside a CUDA graph capture: the window moves to the next step
        if self.window.starts_at(self.index) and not self.gpu.capturing:
            self._start_window()
        self.window.open_step(self.index)
        if self.open_event is None:
            self.open_event = self.gpu.record()

    def _close_step(self, t: int, source: str) -> None:
        in_window = self.window.close_step(self.index)
        start = self.step_open_ns or t
        wall_ms = (t - start) / 1e6
        data_ms = self.step_data_ns / 1e6
        end_ev = self.gpu.record()
        self.log.add(self.index, start, t, self.step_data_ns, in_window, source, self.open_event, end_ev)
        self.open_event = end_ev
        index = self.index
        self.index += 1
        self.step_open_ns = None
        if hooks.step_listeners:
            hooks.notify_step(hooks.StepEvent(index, wall_ms, data_ms, in_window))

    def _reset_for(self, source: str) -> None:
        if self.log.count:
            self.notice_once(
                f"step source changed from {self.source} to {source}: the {self.log.count} "
                f"earlier {self.source} steps were dropped"
            )
        if self.window.active:
            self._stop_window(keep=False)
        self.window.reset()
        with self.log.lock:
            self.log.reset()
            if self.files is not None:
                self.files.steps.reset()
        self.index = 0

    def _update_module_hooks(self) -> None:
        """Forward hooks cost every step; keep them only while something needs them."""
        if self.module_hooks is None:
            return
        needed = self.source in (None, "module") or self.window.active or self.phases.nvtx_on
        try:
            self.module_hooks.set_active(needed)
        except Exception as exc:
            self.notice_once(f"module hooks could not be {'added' if needed else 'removed'}: {exc}")

    def _start_window(self) -> None:
        if self.window.start():
            self.phases_on = True
            self._update_module_hooks()

    def _stop_window(self, keep: bool) -> None:
        self.window.stop(self.rank_dir, self.index, keep=keep)
        self.phases_on = self.phases.nvtx_on
        self._update_module_hooks()

    def window_slowdown(self) -> dict:
        """Median wall time of window steps vs the other steps (see ``TraceWindow.slowdown``)."""
        self.log.drain()
        return self.window.slowdown(self.log.walls, self.log.window_flags)

    # ------------------------------------------------------------------ files
    def rank_info(self, final: bool = True) -> dict:
        """The content of rank.yaml (``final``: with the window's slowdown figures)."""
        self.log.drain()
        return rank_info(self, final)

    # ------------------------------------------------------------------ end
    def finish(self, error: Optional[str] = None) -> None:
        """Close the open step, stop the window, write every file. Safe to call more than once."""
        if self.finished or self.disabled or os.getpid() != self.pid:
            return
        self.log.drain()
        if error and not self.error:
            self.error = error
        if self.step_open_ns is None and not self.log.count and not self.started:
            if is_launcher_process() or is_multiprocessing_child():
                self.finished = True
                return
        try:
            self._finish_steps()
        finally:
            self.finished = True
            if self.sampler is not None:
                self.sampler.stop()
            self.gpu.finish()
            self.upkeep.flush(final=True)
            if self.files is not None:
                self.files.remove_status()

    def _finish_steps(self) -> None:
        if self.source is None and not self.log.count:
            # No boundary ever: the whole run (from torch import or first activity) is one step.
            self._start()
            if self.disabled:
                return
            self.step_open_ns = self.step_open_ns or self.origin_ns
            self.notice_once(
                "no step found (no optimizer step, inference module call, prof.step() "
                "or stallscope.step()): the run is one step"
            )
            self._close_step(time.time_ns(), "whole-run")
        elif self.source == "module" and self.forward_in_step and self.step_open_ns is not None:
            self._close_step(self.last_forward_end_ns or time.time_ns(), "module")
        if self.window.active:
            self.notice_once(
                f"the run ended inside the trace window (after step {self.index - 1}); "
                "the trace holds the steps that ran"
            )
            self._stop_window(keep=True)
        elif self.window.state == "pending" and self.log.count:
            self.window.note = (
                f"the run had {self.log.count} steps, fewer than --skip {self.options.skip}: no window trace"
            )
            self.notice_once(self.window.note)
