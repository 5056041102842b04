"""The loader's parse with forked helpers: the same table however the file is shared out."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

import stallscope.analyzers.loader as loader
import stallscope.analyzers.tracefile as tracefile
from stallscope.analyzers.decode import EventColumns
from stallscope.analyzers.loader import free_cores, load_trace
from stallscope.profiler.common import ToolError

TRACE = Path(__file__).resolve().parent / "fixtures" / "gpu" / "train.pt.trace.json.gz"
COLUMNS = ("kind", "name", "ts_ns", "dur_ns", "pid", "tid", "stream", "device", "correlation", "external_id")
LINKS = ("launch_of", "op_of", "step")


@pytest.mark.skipif(not loader.can_fork(), reason="no fork on this platform")
@pytest.mark.parametrize(("share", "workers"), [(0.0, 1), (0.3, 1), (1.0, 1), (0.55, 3)])
def test_shared_parse_gives_the_one_process_table(monkeypatch: pytest.MonkeyPatch, share: float, workers: int) -> None:
    """This process parsing none, part or all of the blobs, or a quarter beside three helpers:
    each gives the one-process table, metadata and counts, and rows with equal shapes share one
    ``extra`` dict across the parts, as in one parse."""
    monkeypatch.setenv("STALLSCOPE_PARSE_WORKERS", "0")
    one, meta1 = load_trace(TRACE)
    monkeypatch.setattr(tracefile, "CHUNK_BYTES", 8192)  # dozens of blobs from a small trace
    monkeypatch.setattr(loader, "PARENT_SHARE", share)
    monkeypatch.setenv("STALLSCOPE_PARSE_WORKERS", str(workers))
    par, meta2 = load_trace(TRACE)
    assert len(par) == len(one) > 1000
    assert par.names == one.names and par.extra == one.extra
    for col in COLUMNS + LINKS:
        assert np.array_equal(getattr(par, col), getattr(one, col)), col
    assert np.array_equal(par.flops, one.flops, equal_nan=True)
    assert np.array_equal(par.bytes, one.bytes)
    assert meta1 == meta2
    distinct = {id(v) for v in one.extra.values()}
    assert len({id(v) for v in par.extra.values()}) == len(distinct) < len(one.extra)


def test_merge_renumbers_text_ids_as_one_parse_would() -> None:
    """pids / tids that are not numbers get negative ids in order of first sight; a part parsed
    elsewhere numbers its own, and merging maps them onto the ids of one parse."""
    rows = [
        {"ph": "X", "cat": "cpu_op", "name": n, "pid": p, "tid": t, "ts": i, "dur": 1}
        for i, (n, p, t) in enumerate([("a", "Spans", "x"), ("b", 1, "y"), ("c", "Spans", "y"), ("d", "Other", "x")])
    ]
    whole = EventColumns()
    whole.add_dicts(rows)
    first, second = EventColumns(), EventColumns()
    first.add_dicts(rows[:1])
    second.add_dicts(rows[1:])
    first.merge(second)
    a, b = whole.table(), first.table()
    assert a.pid.tolist() == b.pid.tolist() == [-2, 1, -2, -5]  # "Spans", 1, "Spans", "Other"
    assert a.tid.tolist() == b.tid.tolist() == [-3, -4, -4, -3]  # "x", "y", "y", "x"
    assert a.names == b.names


def test_helper_failure_is_raised_and_the_helper_reaped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A helper that cannot parse its part reports it; the caller then parses in one process."""
    bad = tmp_path / "cut.json"
    text = gzip.decompress(TRACE.read_bytes())
    bad.write_bytes(text[: len(text) * 3 // 4])  # the helper's part ends inside the document
    monkeypatch.setattr(tracefile, "CHUNK_BYTES", 8192)
    pids = []
    fork = loader._fork_helper

    def recorded(*args):  # type: ignore[no-untyped-def]
        pid, fd = fork(*args)
        pids.append(pid)
        return pid, fd

    monkeypatch.setattr(loader, "_fork_helper", recorded)
    with pytest.raises(RuntimeError, match="parse helper failed"):
        loader._read_parallel(bad, 1)
    assert len(pids) == 1
    with pytest.raises(ChildProcessError):
        os.waitpid(pids[0], os.WNOHANG)  # reaped: no zombie left behind
    monkeypatch.setenv("STALLSCOPE_PARSE_WORKERS", "1")
    with pytest.raises(ToolError, match="truncated|corrupt|invalid|JSON"):
        load_trace(bad)  # the one-process parse names what is wrong


def test_free_cores_counts_other_runnable_tasks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Four usable cores with this process and two others runnable leave two free; more runnable
    tasks than cores leave none; without /proc the load-average estimate stands in."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    real_open = open

    def fake_loadavg(text: str):  # type: ignore[no-untyped-def]
        def opener(path, *args, **kwargs):  # type: ignore[no-untyped-def]
            if path == "/proc/loadavg":
                p = tmp_path / "loadavg"
                p.write_text(text)
                return real_open(p, *args, **kwargs)
            return real_open(path, *args, **kwargs)

        return opener

    monkeypatch.setattr("builtins.open", fake_loadavg("0.50 0.40 0.30 3/200 12345\n"))
    assert free_cores() == 2
    monkeypatch.setattr("builtins.open", fake_loadavg("7.00 6.00 5.00 9/200 12345\n"))
    assert free_cores() == 0

    def no_proc(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise FileNotFoundError(path)

    monkeypatch.setattr("builtins.open", no_proc)
    monkeypatch.setattr(loader, "idle_cores", lambda: 1.5)
    assert free_cores() == 1
