"""Per-step GPU time without synchronizing: CUDA events recorded at step boundaries, read later.

:class:`GpuTimer` owns the CUDA side of the light telemetry: which device the process uses, a
pool of timing events, the events of steps whose GPU work has not finished yet, and the lock
that keeps event queries out of CUDA graph captures. The recorder records one event per step
boundary (:meth:`GpuTimer.record`) and hands each step's pair over with :meth:`GpuTimer.watch`;
:meth:`GpuTimer.poll` fills in ``gpu_ms`` of the rows whose events the GPU has passed.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Optional

__all__ = ["GpuTimer", "GPU_MS", "SETTLED"]

# Row fields the timer writes (a steps.csv row as the recorder keeps it; see recorder.py).
GPU_MS = 4
SETTLED = 8


def _event_done(event: Any) -> bool:
    try:
        return bool(event.query())
    except Exception:
        return True  # a broken event never completes: settle its row without gpu_ms


class GpuTimer:
    """CUDA events for per-step GPU time (see module docstring).

    ``enabled`` is False on a CPU-only torch build (or when a caller turns events off): then
    :meth:`record` always returns None and no CUDA call is made. ``on_device(index, uuid)`` is
    called once the process's CUDA device is known.
    """

    def __init__(
        self,
        torch: Any,
        notice: Callable[[str], None],
        *,
        enabled: Optional[bool] = None,
        on_device: Optional[Callable[[int, Optional[str]], None]] = None,
    ) -> None:
        self.torch = torch
        self.notice = notice
        if enabled is None:  # a CPU-only build has neither
            enabled = torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None
        self.enabled = enabled
        self.on_device = on_device
        self.ready = False  # CUDA initialized in this process (checked until it is)
        self.device: Optional[int] = None
        self.props: Optional[dict] = None  # {index, name, uuid} of the device
        self.pool: list[Any] = []  # read events, reused (creating one costs more than recording it)
        # (row, start event, end event) of steps not read yet, oldest first
        self.pending: deque = deque()
        # CUDA graph capture (global mode) forbids event queries from any thread: events are read
        # only while holding this lock, and a capture holds it from begin to end.
        self.capturing = 0
        self._query_lock = threading.Lock()
        self._stream_key: Any = None
        self._stream: Any = None
        self._C: Any = getattr(torch, "_C", None)  # None: record() takes the AttributeError path

    # ------------------------------------------------------------------ device
    def check(self) -> bool:
        """Whether CUDA is initialized in this process; identifies the device the first time."""
        if self.ready or not self.enabled:
            return self.ready
        try:
            self.ready = bool(self.torch.cuda.is_initialized())
        except Exception:
            self.ready = False
        if self.ready:
            try:
                self.device = int(self.torch.cuda.current_device())
                props = self.torch.cuda.get_device_properties(self.device)
                uuid = str(getattr(props, "uuid", "") or "") or None
                self.props = {"index": self.device, "name": props.name, "uuid": uuid}
                if self.on_device is not None:
                    self.on_device(self.device, uuid)
            except Exception as exc:
                self.notice(f"could not identify the CUDA device: {exc}")
        return self.ready

    # ------------------------------------------------------------------ recording
    def record(self) -> Any:
        """Record a timing event on the current stream; None when none can be (no CUDA, a capture)."""
        if self.capturing or not (self.ready or self.check()):
            return None
        try:
            ev = self.pool.pop() if self.pool else self.torch.cuda.Event(enable_timing=True)
            # The current stream by its key, not torch.cuda.current_stream(): that builds a new
            # Stream object per call (two thirds of an event record's cost).
            C = self._C
            try:
                key = C._cuda_getCurrentStream(C._cuda_getDevice())
            except AttributeError:  # a torch without these: Event.record asks for the stream itself
                ev.record()
                return ev
            if key != self._stream_key:
                self._stream = self.torch.cuda.Stream(stream_id=key[0], device_index=key[1], device_type=key[2])
                self._stream_key = key
            ev.record(self._stream)
            return ev
        except Exception as exc:
            self.notice(f"CUDA events unavailable ({exc.__class__.__name__}); gpu_ms left empty")
            return None

    def watch(self, row: list, start: Any, end: Any) -> None:
        """Fill ``row[GPU_MS]`` from ``start`` to ``end`` once the GPU has passed ``end``; the row is
        marked unsettled until then."""
        row[SETTLED] = False
        self.pending.append((row, start, end))

    def reset(self) -> None:
        """Forget the steps not read yet (their rows were dropped)."""
        self.pending = deque()  # a new deque: a poll in progress on the sampler thread keeps the old one

    # ------------------------------------------------------------------ CUDA graph capture
    def capture_begin(self) -> None:
        """A CUDA graph capture begins: no event record or query until it ends."""
        if self.capturing == 0:
            self._query_lock.acquire()
        self.capturing += 1

    def capture_end(self) -> None:
        """A CUDA graph capture ended (or failed)."""
        if self.capturing > 0:
            self.capturing -= 1
            if self.capturing == 0:
                self._query_lock.release()

    # ------------------------------------------------------------------ reading
    def poll(self, wait: bool = False) -> None:
        """Fill in the GPU time of every finished step (``wait``: wait for all of them); any thread."""
        if not self._query_lock.acquire(blocking=False):
            return  # a CUDA graph is being captured
        try:
            self._poll_locked(wait)
        finally:
            self._query_lock.release()

    def finish(self) -> None:
        """Wait for the GPU and read every remaining step (end of the run)."""
        try:
            if self.torch.cuda.is_initialized():
                self.poll(wait=True)
        except Exception:
            pass

    def _poll_locked(self, wait: bool) -> None:
        # One query for the newest event: when it is done, so is everything recorded before it on
        # its stream, and each step costs one CUDA call (elapsed_time) here instead of two.
        pending = self.pending
        newest_done = False
        if not wait and pending:
            try:
                newest_done = bool(pending[-1][2].query())
            except Exception:
                newest_done = False
        while pending:
            row, start, end = pending[0]
            try:
                if wait:
                    end.synchronize()
                elif not newest_done and not end.query():
                    return
                row[GPU_MS] = start.elapsed_time(end)
            except Exception:
                if newest_done and not _event_done(end):
                    return  # recorded on another stream that is still busy: next poll
            row[SETTLED] = True
            pending.popleft()
            if not pending or pending[0][1] is not start:
                self.pool.append(start)
