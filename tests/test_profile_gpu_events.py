"""Per-step GPU time from CUDA events, read off the training thread: scripted events stand in for
the GPU (each says whether it is done and counts the calls made on it)."""
from __future__ import annotations

import torch

from stallscope.profiler.gputime import GpuTimer


class ScriptedEvent:
    def __init__(self, t_ms: float, done: bool, calls: list) -> None:
        self.t_ms, self.done, self.calls = t_ms, done, calls

    def query(self) -> bool:
        self.calls.append("query")
        return self.done

    def elapsed_time(self, end: "ScriptedEvent") -> float:
        self.calls.append("elapsed_time")
        if not (self.done and end.done):
            raise RuntimeError("CUDA error: device not ready")
        return end.t_ms - self.t_ms

    def synchronize(self) -> None:
        self.done = True


def timer_with(done: list[bool]) -> tuple[GpuTimer, list, list]:
    """A timer watching one step per pair of consecutive events (each step's end opens the next)."""
    timer = GpuTimer(torch, lambda message: None)
    calls: list = []
    events = [ScriptedEvent(10.0 * i, d, calls) for i, d in enumerate(done)]
    rows = [[i, 0, 0, 1.0, None, 0.0, 0, "optimizer", True] for i in range(len(events) - 1)]
    for i, row in enumerate(rows):
        timer.watch(row, events[i], events[i + 1])
    return timer, rows, calls


def test_when_the_newest_event_is_done_every_step_costs_one_call() -> None:
    timer, rows, calls = timer_with([True] * 6)
    timer.poll()
    assert [r[4] for r in rows] == [10.0] * 5 and all(r[8] for r in rows)
    assert calls.count("query") == 1 and calls.count("elapsed_time") == 5
    assert not timer.pending


def test_steps_still_running_wait_for_the_next_poll() -> None:
    timer, rows, calls = timer_with([True, True, True, False, False])
    timer.poll()
    assert [r[4] for r in rows] == [10.0, 10.0, None, None]
    assert [r[8] for r in rows] == [True, True, False, False]
    assert len(timer.pending) == 2
    for e in (timer.pending[0][2], timer.pending[1][2]):
        e.done = True
    timer.poll()
    assert [r[4] for r in rows] == [10.0] * 4 and not timer.pending


def test_an_older_event_on_a_busy_stream_is_not_settled_empty() -> None:
    # the newest event is done but an earlier one (another stream) is not: its row waits
    timer, rows, calls = timer_with([True, True, False, True])
    timer.poll()
    assert rows[0][4] == 10.0 and rows[1][4] is None and not rows[1][8]
    assert len(timer.pending) == 2
    timer.pending[0][2].done = True
    timer.poll()
    assert [r[4] for r in rows] == [10.0, 10.0, 10.0]


def test_events_return_to_the_pool_once_read() -> None:
    timer, rows, calls = timer_with([True] * 4)
    timer.poll()
    pooled = timer.pool
    assert len(pooled) == 3 and len({id(e) for e in pooled}) == 3  # every start; the last end opens the next step
