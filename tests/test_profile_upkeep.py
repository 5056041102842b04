"""Upkeep on a fake clock: per-step rows reach steps.csv within a second (a SIGKILL of the target
loses at most that), rank.yaml is rewritten every few seconds and at the end."""
from __future__ import annotations

import threading
from types import SimpleNamespace

from stallscope.profiler import upkeep as up


class FakeLog:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[list] = []
        self.last_wall_ms = 1.0

    @property
    def dirty(self) -> bool:
        return bool(self.rows)

    def drain(self) -> None:
        pass

    def take_settled(self) -> list[list]:
        rows, self.rows = self.rows, []
        return rows


class FakeFiles:
    folder = "rank0"

    def __init__(self) -> None:
        self.steps = SimpleNamespace(written=[], append=lambda rows: self.steps.written.extend(rows))
        self.infos: list[bool] = []

    def write_info(self, info: dict) -> None:
        self.infos.append(info["final"])

    def write_status(self, status: dict) -> None:
        pass


def _recorder() -> SimpleNamespace:
    rec = SimpleNamespace(log=FakeLog(), files=FakeFiles(), sampler=None, source="optimizer",
                          gpu=SimpleNamespace(pending=False), _polled_ns=0, rank=0, pid=1, index=0,
                          window=SimpleNamespace(state="done"))
    rec.live = lambda: True
    rec.rank_info = lambda final=False: {"final": final}
    return rec


def test_rows_flush_every_second_rank_yaml_every_five(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(up.time, "monotonic", lambda: now[0])
    rec = _recorder()
    keep = up.Upkeep(rec)
    keep.tick()  # first tick: nothing pending yet
    for step in range(1, 70):  # a step every 0.1 s, a sampler tick after each
        now[0] += 0.1
        rec.log.rows.append([step])
        keep.tick()
        written = [r[0] for r in rec.files.steps.written]
        # every step that ended more than FLUSH_PERIOD_S (+ one tick) ago is on disk
        assert not written or written[-1] >= step - round((up.FLUSH_PERIOD_S + 0.1) / 0.1)
        assert step < 12 or written, "nothing flushed after more than a second"
    infos = rec.files.infos
    assert 1 <= len(infos) <= 69 * 0.1 / up.INFO_PERIOD_S + 1  # rank.yaml only every few seconds
    keep.flush(final=True)
    assert rec.files.infos[-1] is True and [r[0] for r in rec.files.steps.written] == list(range(1, 70))
