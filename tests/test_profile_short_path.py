"""The recorder's short path for steady-state steps: each step is one mark on the training thread,
made into its row later. Driven by a scripted clock (every boundary gets its end time), so the
rows can be checked exactly against the steps that were run."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import torch

from stallscope.profiler import hooks
from stallscope.profiler.gputime import GpuTimer
from stallscope.profiler.options import ProfileOptions
from stallscope.profiler.recorder import Recorder

MS = 1_000_000


def recorder(tmp_path: Path, skip: int, steps: int = 3, gpu: GpuTimer | None = None) -> Recorder:
    # the sampler thread ticks every 10 s: the marks wait for a reader the test controls;
    # the CPU path on every build (no CUDA event per step) unless a scripted GPU is given
    gpu = gpu or GpuTimer(torch, lambda message: None, enabled=False)
    rec = Recorder(
        ProfileOptions(skip=skip, steps=steps, nvml=False, sample_hz=0.1),
        tmp_path,
        rank_dir=tmp_path / "rank0",
        origin="api",
        gpu=gpu,
    )
    rec.origin_ns = 1  # the scripted clock starts here
    return rec


def run_steps(rec: Recorder, n: int, first_end_ms: int = 10) -> list[int]:
    """Steps of 10, 11, 12, ... ms after the open one began; returns their end times (ns)."""
    ends, t = [], rec.step_open_ns or rec.origin_ns
    for i in range(n):
        t += (first_end_ms + i) * MS
        rec.boundary("api", t_ns=t)
        ends.append(t)
    return ends


def steps_csv(rec: Recorder) -> list[dict]:
    rec.finish()
    with open(rec.rank_dir / "steps.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_steady_state_steps_take_the_short_path_and_keep_every_field(tmp_path: Path) -> None:
    rec = recorder(tmp_path, skip=10**6)
    ends = run_steps(rec, 50)
    assert rec._fast_until > rec.index and len(rec.log.marks) == 49  # all but the first went the short way
    rows = steps_csv(rec)
    assert [int(r["step"]) for r in rows] == list(range(50))
    assert [int(r["end_ns"]) for r in rows] == ends
    assert [int(r["start_ns"]) for r in rows[1:]] == ends[:-1]  # each step starts where the last ended
    assert [float(r["wall_ms"]) for r in rows] == [10.0 + i for i in range(50)]
    assert {r["source"] for r in rows} == {"api"} and {r["in_window"] for r in rows} == {"0"}
    assert list(rec.log.walls) == [10.0 + i for i in range(50)] and rec.log.count == 50 and rec.log.last_wall_ms == 59.0


def test_the_window_still_holds_exactly_its_steps(tmp_path: Path) -> None:
    rec = recorder(tmp_path, skip=8, steps=3)
    run_steps(rec, 30)
    rows = steps_csv(rec)
    assert [int(r["step"]) for r in rows if r["in_window"] == "1"] == [8, 9, 10]
    assert (rec.rank_dir / "trace.json.gz").is_file()
    assert rec._fast_until > rec.index  # back on the short path after the window


def test_a_listener_added_mid_run_hears_every_later_step(tmp_path: Path) -> None:
    rec = recorder(tmp_path, skip=10**6)
    hooks.install(rec)
    heard: list = []
    try:
        run_steps(rec, 20)
        hooks.add_step_listener(heard.append)
        run_steps(rec, 15, first_end_ms=1000)
    finally:
        hooks.remove_step_listener(heard.append)
        hooks.detach(rec)
    assert [e.index for e in heard] == list(range(20, 35))
    assert [e.wall_ms for e in heard] == [1000.0 + i for i in range(15)]


def test_rows_stay_in_order_while_another_thread_drains(tmp_path: Path) -> None:
    rec = recorder(tmp_path, skip=10**6)
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            rec.log.drain()

    t = threading.Thread(target=drain)
    t.start()
    try:
        for _ in range(50):
            run_steps(rec, 100, first_end_ms=1)
            rec.listeners_changed()  # the next step takes the full path and appends its own row
            run_steps(rec, 1, first_end_ms=1)
    finally:
        stop.set()
        t.join()
    rows = steps_csv(rec)
    assert [int(r["step"]) for r in rows] == list(range(5050))


class DoneEvent:
    """A CUDA event stand-in that is finished at once: elapsed_time is the scripted time between two."""

    def __init__(self, t_ms: float, reads: list) -> None:
        self.t_ms, self.reads = t_ms, reads

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: "DoneEvent") -> float:
        self.reads.append(threading.current_thread().name)
        return end.t_ms - self.t_ms


class ScriptedTimer(GpuTimer):
    """A GPU timer whose events are DoneEvents 2 ms apart; counts the batched reads."""

    def __init__(self, reads: list) -> None:
        super().__init__(torch, lambda message: None, enabled=True)
        self.ready = True
        self.reads = reads
        self.polls = 0
        self.made = iter(range(10**6))

    def record(self) -> DoneEvent:
        return DoneEvent(2.0 * next(self.made), self.reads)

    def poll(self, wait: bool = False) -> None:
        self.polls += 1
        super().poll(wait)


def test_finished_events_are_read_in_batches_on_the_training_thread(tmp_path: Path) -> None:
    reads: list = []
    gpu = ScriptedTimer(reads)
    rec = recorder(tmp_path, skip=10**6, gpu=gpu)
    run_steps(rec, 40, first_end_ms=1)  # 1-40 ms steps: a read every 40 ms of wall time
    assert set(reads) == {threading.current_thread().name}
    assert 5 <= gpu.polls < 30  # in batches, not per step
    settled = [row for row in rec.log.rows if row[8]]
    assert len(settled) == len(reads) < 40 and all(row[4] == 2.0 for row in settled)  # each step its own pair
    rec._polled_ns = time.time_ns()  # (the scripted clock is not the wall clock the sampler reads)
    rec.upkeep.tick()  # the sampler thread leaves fresh events to the training thread
    assert len(reads) < 40
    rec._polled_ns -= 2 * 10**9  # ... unless the training thread has not read them for a while
    rec.upkeep.tick()
    assert len(reads) == 40 and all(row[4] == 2.0 for row in rec.log.rows)


def run_source(rec: Recorder, source: str, n: int, start_ns: int) -> int:
    t = start_ns
    for _ in range(n):
        t += 10 * MS
        rec.boundary(source, t_ns=t)
    return t


def test_a_drain_labels_each_step_with_the_source_it_was_made_under(tmp_path: Path) -> None:
    """The sampler thread's flush can run with a step source it read before the source changed
    (it was descheduled in between): the short-path marks made since must keep their own source."""
    rec = recorder(tmp_path, skip=10**6)
    t = run_source(rec, "optimizer", 1, rec.origin_ns)  # the target's first optimizer step
    t = run_source(rec, "profiler_step", 6, t)  # then its prof.step(): the better source takes over
    assert len(rec.log.marks) == 5  # all but the switching step went the short way
    rec.source = "optimizer"  # what a flush that read the source before the change still holds
    try:
        rec.upkeep.flush(info=False)
    finally:
        rec.source = "profiler_step"
    rows = steps_csv(rec)
    assert [int(r["step"]) for r in rows] == list(range(6))
    assert {r["source"] for r in rows} == {"profiler_step"}
