"""The recorder's inputs from the hooks: data waits, outermost module calls, optimizer steps,
a user's own profiler, CUDA graph captures, and the phase ranges around them.

:class:`HookEvents` is the part of :class:`~profiler.recorder.Recorder` that ``profiler.hooks``
calls; it decides which of these events end a step and hands them to ``Recorder.boundary``.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from stallscope.profiler import hooks
from stallscope.profiler.gputime import GpuTimer
from stallscope.profiler.phases import PhaseMarks, end_phase
from stallscope.profiler.window import TraceWindow

__all__ = ["HookEvents"]


class HookEvents:
    """Hook entry points of the recorder (a base of ``Recorder``, which provides the state below)."""

    disabled: bool
    source: Optional[str]
    step_open_ns: Optional[int]
    step_data_ns: int
    forward_in_step: bool
    phases_on: bool
    gpu: GpuTimer
    window: TraceWindow
    phases: PhaseMarks
    _fast_until: int

    def __init__(self) -> None:
        self.primary_optimizer: Optional[int] = None
        self.train_forwards = 0
        self.module_steps_in_training = False
        self.last_forward_end_ns: Optional[int] = None
        self.forward_tokens: list[Any] = []
        self.optimizer_tokens: list[Any] = []

    def notice_once(self, message: str) -> None:  # provided by Recorder
        raise NotImplementedError

    def boundary(self, source: str, t_ns: Optional[int] = None) -> None:  # provided by Recorder
        raise NotImplementedError

    def _start(self) -> None:  # provided by Recorder
        raise NotImplementedError

    def _open_step(self, t_ns: int) -> None:  # provided by Recorder
        raise NotImplementedError

    def _stop_window(self, keep: bool) -> None:  # provided by Recorder
        raise NotImplementedError

    def _activity(self, t_ns: int) -> None:
        if self.step_open_ns is None:
            self._start()
            if self.disabled:
                return
            self._open_step(t_ns)

    def on_data_begin(self) -> tuple:
        """The loop asks its DataLoader for a batch."""
        t = time.time_ns()
        self._activity(t)
        return (t, self.phase_begin("data"))

    def on_data_end(self, token: tuple) -> None:
        """The batch arrived: its wait counts as the step's data wait."""
        t0, phase = token
        end_phase(phase)
        if self.step_open_ns is not None:
            self.step_data_ns += time.time_ns() - t0

    def on_forward_begin(self, inference: bool) -> None:
        """An outermost module call begins (may end the step when module calls are the steps)."""
        t = time.time_ns()
        if not inference and self.source is None and not self.module_steps_in_training:
            self.train_forwards += 1
            if self.train_forwards > hooks.TRAIN_FORWARDS_BEFORE_MODULE_STEPS:
                self.module_steps_in_training = True
                self.notice_once(
                    f"no optimizer step after {hooks.TRAIN_FORWARDS_BEFORE_MODULE_STEPS} "
                    "training-mode forwards: steps are outermost module calls"
                )
        if (inference or self.module_steps_in_training) and self.forward_in_step and self.source in (None, "module"):
            self.boundary("module", t)
        self._activity(t)
        self.forward_in_step = True
        self.forward_tokens.append(self.phase_begin("forward"))

    def on_forward_end(self) -> None:
        """An outermost module call returned."""
        self.last_forward_end_ns = time.time_ns()
        if self.forward_tokens:
            end_phase(self.forward_tokens.pop())

    def on_optimizer_begin(self, opt: Any) -> None:
        """An optimizer step begins."""
        if self.step_open_ns is None:
            self._activity(time.time_ns())
        if self.phases_on:
            self.optimizer_tokens.append(self.phase_begin("optimizer"))

    def on_optimizer_end(self, opt: Any) -> None:
        """An optimizer step ended: the first optimizer seen marks the training step."""
        if self.optimizer_tokens:
            end_phase(self.optimizer_tokens.pop())
        if self.primary_optimizer is None:
            self.primary_optimizer = id(opt)
        if id(opt) == self.primary_optimizer:
            self.boundary("optimizer")

    def on_user_profiler_start(self) -> None:
        """The target starts its own torch.profiler: Kineto is one per process, the window yields."""
        if self.window.active:
            self._stop_window(keep=True)  # what was traced so far stays; the window ends here
        note = (
            "the target runs its own torch.profiler (one Kineto session per process): stallscope recorded "
            "no window trace; steps follow its prof.step()"
        )
        if self.window.state != "done":
            self.window.state, self.window.note = "skipped", note
        self.notice_once(note)

    def on_capture_begin(self) -> None:
        """A CUDA graph capture begins: full path (no events) until it ends."""
        self._fast_until = 0
        self.gpu.capture_begin()

    def on_capture_end(self) -> None:
        """A CUDA graph capture ended."""
        self.gpu.capture_end()

    def phase_begin(self, name: str) -> Any:
        """Open phase ``name`` (None when nobody reads phases); close it with :meth:`phase_end`."""
        if not self.phases_on:
            return None
        return self.phases.begin(name, self.window.state == "active")

    @staticmethod
    def phase_end(token: Any) -> None:
        """Close a phase opened by :meth:`phase_begin`."""
        end_phase(token)
