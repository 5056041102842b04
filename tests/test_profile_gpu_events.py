"""Per-step GPU time from CUDA events, read off the training thread: scripted events stand in for
the GPU (each says whether it is done and counts the calls made on it)."""
from __future__ import annotations

from collections import deque
from pathlib import Path

from stallscope.profiler.runtime import Config, Recorder


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


def recorder_with(tmp_path: Path, done: list[bool]) -> tuple[Recorder, list, list]:
    rec = Recorder(Config(run_dir=tmp_path, nvml=False), rank_dir=tmp_path / "rank0", origin="api")
    calls: list = []
    events = [ScriptedEvent(10.0 * i, d, calls) for i, d in enumerate(done)]
    rows = [[i, 0, 0, 1.0, None, 0.0, 0, "optimizer", False] for i in range(len(events) - 1)]
    rec.pending_events = deque((rows[i], events[i], events[i + 1]) for i in range(len(rows)))
    return rec, rows, calls


def test_when_the_newest_event_is_done_every_step_costs_one_call(tmp_path: Path) -> None:
    rec, rows, calls = recorder_with(tmp_path, [True] * 6)
    rec._poll_events()
    assert [r[4] for r in rows] == [10.0] * 5 and all(r[8] for r in rows)
    assert calls.count("query") == 1 and calls.count("elapsed_time") == 5
    assert not rec.pending_events


def test_steps_still_running_wait_for_the_next_poll(tmp_path: Path) -> None:
    rec, rows, calls = recorder_with(tmp_path, [True, True, True, False, False])
    rec._poll_events()
    assert [r[4] for r in rows] == [10.0, 10.0, None, None]
    assert [r[8] for r in rows] == [True, True, False, False]
    assert len(rec.pending_events) == 2
    for e in (rec.pending_events[0][2], rec.pending_events[1][2]):
        e.done = True
    rec._poll_events()
    assert [r[4] for r in rows] == [10.0] * 4 and not rec.pending_events


def test_an_older_event_on_a_busy_stream_is_not_settled_empty(tmp_path: Path) -> None:
    # the newest event is done but an earlier one (another stream) is not: its row waits
    rec, rows, calls = recorder_with(tmp_path, [True, True, False, True])
    rec._poll_events()
    assert rows[0][4] == 10.0 and rows[1][4] is None and not rows[1][8]
    assert len(rec.pending_events) == 2
    rec.pending_events[0][2].done = True
    rec._poll_events()
    assert [r[4] for r in rows] == [10.0, 10.0, 10.0]


def test_events_return_to_the_pool_once_read(tmp_path: Path) -> None:
    rec, rows, calls = recorder_with(tmp_path, [True] * 4)
    rec._poll_events()
    pooled = rec._event_pool
    assert len(pooled) == 3 and len({id(e) for e in pooled}) == 3  # every start; the last end opens the next step
