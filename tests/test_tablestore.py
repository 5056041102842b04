"""Table files (analyzers/tablestore.py): round trips, the cache's hits and misses, hostile files,
where tables go, the compact form of a rank, and the compaction the profiler starts.

Traces are real: one recorded here on the CPU with torch.profiler, committed H200 fixtures
copied into the test's folder (so that no table is ever written next to a committed file).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stallscope.analyzers import compaction, tablestore
from stallscope.analyzers.compact import compact_rank
from stallscope.analyzers.context import load_rank
from stallscope.analyzers.loader import load_trace
from stallscope.analyzers.model import EventTable
from stallscope.profiler.window import background, process_cpus
from tests.analyzer_traces import GPU_FIXTURES, record

COLUMNS = [f.name for f in dataclasses.fields(EventTable) if f.name not in ("names", "extra")]
GPU_TRACE = GPU_FIXTURES / "runs" / "healthy_cnn" / "rank0" / "trace.json.gz"
DDP = GPU_FIXTURES / "ddp_h200" / "healthy"


class Counting:
    """A ``load`` for load_cached that counts the parses it does."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: Path) -> tuple[EventTable, dict[str, Any]]:
        self.calls += 1
        return load_trace(path)


def assert_same_table(a: EventTable, b: EventTable) -> None:
    assert len(a) == len(b) > 0
    for c in COLUMNS:
        x, y = getattr(a, c), getattr(b, c)
        assert x.dtype == y.dtype, c
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), c
    assert a.names == b.names
    assert a.extra == b.extra


@pytest.fixture
def auto_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default placement (tables next to the trace), with the user cache in tmp_path."""
    monkeypatch.setenv(tablestore.CACHE_ENV, "auto")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "stallscope" / "tables"


@pytest.fixture(scope="module")
def cpu_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(_: int) -> None:
        loss = model(torch.randn(16, 32)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return record(tmp_path_factory.mktemp("cpu") / "cpu.pt.trace.json", step, steps=3)


def _copy(src: Path, folder: Path, name: str | None = None) -> Path:
    """``src`` copied as a rank's trace of a run directory (``RUN/rankN/``, ``RUN/meta.yaml``): the
    only place diagnose writes tables next to a trace by default."""
    if not folder.name.startswith("rank"):
        folder = folder / "rank0"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder.parent / "meta.yaml").exists():
        (folder.parent / "meta.yaml").write_text("schema_version: 1\n")
    dest = folder / (name or src.name)
    shutil.copyfile(src, dest)
    return dest


@pytest.mark.parametrize("which", ["cpu", "gpu"])
def test_round_trip_then_hit(which: str, cpu_trace: Path, tmp_path: Path, auto_cache: Path) -> None:
    trace = _copy(cpu_trace, tmp_path / "cpu") if which == "cpu" else _copy(GPU_TRACE, tmp_path / "run" / "rank0")
    ref_table, ref_meta = load_trace(trace)
    load = Counting()
    t1, m1 = tablestore.load_cached(trace, load)
    assert load.calls == 1 and tablestore.sidecar(trace).is_file()
    t2, m2 = tablestore.load_cached(trace, load)
    assert load.calls == 1, "the second load must come from the table file"
    assert_same_table(t2, ref_table)
    assert m2 == ref_meta == m1
    assert tablestore.TABLE_NOTICE not in m2
    if which == "cpu":
        assert any("input_dims" in e for e in t2.extra.values())  # shapes recorded and kept
    else:
        assert len(t2.gpu_rows()) > 100 and (t2.launch_of >= 0).any()
    # rows that shared one args dict share it again (the decoder's memory saving survives)
    assert len({id(v) for v in t2.extra.values()}) == len({id(v) for v in ref_table.extra.values()})


def test_changed_trace_misses(tmp_path: Path, auto_cache: Path) -> None:
    trace = _copy(GPU_TRACE, tmp_path / "t")
    load = Counting()
    tablestore.load_cached(trace, load)
    st = trace.stat()
    os.utime(trace, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: new mtime
    tablestore.load_cached(trace, load)
    assert load.calls == 2
    tablestore.load_cached(trace, load)
    assert load.calls == 2  # stored again for the new mtime
    # same size and mtime, other bytes at the end (the gzip trailer): the hash tells
    st = trace.stat()
    data = bytearray(trace.read_bytes())
    data[-5] ^= 0xFF
    trace.write_bytes(bytes(data))
    os.utime(trace, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(Exception):  # noqa: B017 - the damaged gzip itself no longer parses
        tablestore.load_cached(trace, load)
    assert load.calls == 3


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class _Boom:
    """Unpickling this would create a file: proof that a table file never gets unpickled."""

    marker: Path | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _hostile_variants(path: Path, tmp_path: Path) -> dict[str, Any]:
    good = _arrays(path)
    n = good["kind"].size

    def with_(**changes: Any) -> dict[str, np.ndarray]:
        return {**good, **changes}

    launch = good["launch_of"].copy()
    launch[0] = n + 5
    boom = _Boom()
    boom.marker = tmp_path / "unpickled"
    return {
        "wrong dtype": with_(ts_ns=good["ts_ns"].astype(np.float64)),
        "column too short": with_(dur_ns=good["dur_ns"][:-1]),
        "link out of range": with_(launch_of=launch),
        "name id out of range": with_(name=np.full(n, 10**6, dtype=np.int32)),
        "pickled object": with_(names=np.array([boom, "x"], dtype=object)),
        "not our header": with_(header=np.frombuffer(b'{"format": "other"}', dtype=np.uint8)),
        "extra member": with_(payload=np.zeros(3)),
    }


def test_hostile_table_files_are_misses(tmp_path: Path, auto_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = _copy(GPU_TRACE, tmp_path / "t")
    ref, ref_meta = load_trace(trace)
    load = Counting()
    tablestore.load_cached(trace, load)
    side = tablestore.sidecar(trace)
    pristine = side.read_bytes()
    # control: the same arrays written back by numpy are still a hit, so each rejection below
    # comes from the one thing changed
    np.savez(side, **_arrays(side))
    tablestore.load_cached(trace, load)
    assert load.calls == 1
    cases: dict[str, Any] = _hostile_variants(side, tmp_path)
    cases["truncated"] = pristine[: len(pristine) // 2]
    cases["empty"] = b""
    cases["a CRC that does not match"] = (
        pristine[:-2000] + bytes(b ^ 0x55 for b in pristine[-2000:-1900]) + pristine[-1900:]
    )
    for what, content in cases.items():
        if isinstance(content, bytes):
            side.write_bytes(content)
        else:
            np.savez(side, **content)
        before = load.calls
        table, meta = tablestore.load_cached(trace, load)
        assert load.calls == before + 1, what
        assert_same_table(table, ref)
        assert {k: v for k, v in meta.items() if k != tablestore.TABLE_NOTICE} == ref_meta
        assert str(side) in meta.get(tablestore.TABLE_NOTICE, ""), what
        assert len(meta[tablestore.TABLE_NOTICE]) < 400
    assert not (tmp_path / "unpickled").exists()
    # a names blob over the bound is refused before it is read
    side.write_bytes(pristine)
    monkeypatch.setattr(tablestore, "MAX_BLOB_BYTES", 64)
    before = load.calls
    _, meta = tablestore.load_cached(trace, load)
    assert load.calls == before + 1 and "names" in meta[tablestore.TABLE_NOTICE]


def test_compressed_member_refused(tmp_path: Path, auto_cache: Path) -> None:
    """Deflated members could expand past any bound (a zip bomb): only stored members are read."""
    trace = _copy(GPU_TRACE, tmp_path / "t")
    load = Counting()
    tablestore.load_cached(trace, load)
    side = tablestore.sidecar(trace)
    np.savez_compressed(side, **_arrays(side))
    _, meta = tablestore.load_cached(trace, load)
    assert load.calls == 2 and "compressed" in meta[tablestore.TABLE_NOTICE]


def test_off_writes_nothing(tmp_path: Path, auto_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tablestore.CACHE_ENV, "off")
    trace = _copy(GPU_TRACE, tmp_path / "t")
    load = Counting()
    tablestore.load_cached(trace, load)
    tablestore.load_cached(trace, load)
    assert load.calls == 2
    assert sorted(p.name for p in trace.parent.iterdir()) == [trace.name]
    assert not auto_cache.exists()


def test_unwritable_folder_falls_back_to_user_cache(tmp_path: Path, auto_cache: Path) -> None:
    trace = _copy(GPU_TRACE, tmp_path / "ro")
    if os.geteuid() == 0:  # root writes anywhere: block the table's name with a folder instead
        tablestore.sidecar(trace).mkdir()
    else:
        trace.parent.chmod(0o555)
    try:
        load = Counting()
        tablestore.load_cached(trace, load)
        tablestore.load_cached(trace, load)
    finally:
        trace.parent.chmod(0o755)
    assert load.calls == 1
    assert [p.name.endswith(tablestore.TABLE_SUFFIX) for p in auto_cache.iterdir()] == [True]


def test_user_mode_and_pruning(tmp_path: Path, auto_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tablestore.CACHE_ENV, "user")
    traces = [_copy(GPU_TRACE, tmp_path / f"t{i}") for i in range(3)]
    load = Counting()
    for t in traces:
        tablestore.load_cached(t, load)
        assert not tablestore.sidecar(t).exists()
    entries = sorted(auto_cache.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert len(entries) == 3
    old = time.time() - 100
    os.utime(entries[0], (old, old))
    tablestore.prune_user_cache(limit=sum(p.stat().st_size for p in entries) - 1)
    assert sorted(auto_cache.iterdir()) == sorted(entries[1:])


def _rank_folders(tmp_path: Path) -> list[Path]:
    return [
        _copy(DDP / f"rank{r}.pt.trace.json.gz", tmp_path / "run" / f"rank{r + 8}", "trace.json.gz") for r in (0, 1)
    ]


def test_compaction_writes_the_compact_form_that_context_reads(tmp_path: Path, auto_cache: Path) -> None:
    traces = _rank_folders(tmp_path)
    assert compaction.main([str(t) for t in traces] + ["--quiet"]) == 0
    for t in traces:  # ranks 8 and 9: beyond FULL_RANKS, compact form only
        assert tablestore.sidecar(t, tablestore.COMPACT_SUFFIX).is_file()
        assert not tablestore.sidecar(t).exists()
    built: list[int] = []

    def build(own: list[str]) -> Any:
        built.append(1)
        rd = load_rank(traces[1], 9, own)
        compact_rank(rd)
        return rd

    notices: list[str] = []
    got = tablestore.compact_rank_cached(traces[1], 9, notices, build)
    assert not built, "the compact form written by the compaction must be read"
    ref = build([])
    assert got.meta["compacted"] and got.rank == 9
    assert_same_table(got.events, dataclasses.replace(ref.events, names=got.events.names, name=got.events.name))
    assert [got.events.name_of(i) for i in range(len(got.events))] == [
        ref.events.name_of(i) for i in range(len(ref.events))
    ]
    assert got.steps == ref.steps and got.breakdown == ref.breakdown and len(got.breakdown) >= 3
    assert got.meta["trace"] == ref.meta["trace"]


def test_compaction_full_form_is_the_cache(tmp_path: Path, auto_cache: Path) -> None:
    trace = _copy(GPU_TRACE, tmp_path / "run" / "rank0")
    assert compaction.main([str(trace), "--quiet"]) == 0
    load = Counting()
    table, _ = tablestore.load_cached(trace, load)
    assert load.calls == 0
    assert_same_table(table, load_trace(trace)[0])


def test_compaction_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"traceEvents": [')
    assert compaction.main([str(bad), str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("compaction: ") for line in err)
    assert not list(tmp_path.glob(".*.npz"))


@pytest.mark.parametrize("switch", ["on", "0"])
def test_profiler_window_starts_compaction(switch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from stallscope.profiler.window import COMPACT_ENV, TraceWindow

    monkeypatch.setenv(COMPACT_ENV, switch)
    notes: list[str] = []
    window = TraceWindow(torch, skip=0, steps=1, stack=False, memory=False, notice=notes.append)
    folder = tmp_path / "rank0"
    folder.mkdir()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.autograd.profiler.record_function("ProfilerStep#0"):
            torch.randn(64, 64).mm(torch.randn(64, 64))
    window._export(prof, folder)
    assert window.trace_written and not notes
    if switch == "0":
        assert window.compaction_state() is None and window.info()["compaction"] is None
        return
    if hasattr(os, "SCHED_IDLE"):  # it runs only on CPU time the training leaves idle
        assert window._compactor is not None
        assert os.sched_getscheduler(window._compactor.pid) == os.SCHED_IDLE
    deadline = time.monotonic() + 120
    while window.compaction_state() == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert window.info()["compaction"] == "done"
    trace = folder / "trace.json.gz"
    load = Counting()
    tablestore.load_cached(trace, load)  # the rank-0 table written at the source is the cache
    assert load.calls == 0


def test_a_users_own_trace_gets_its_table_in_the_user_cache(tmp_path: Path, auto_cache: Path) -> None:
    """A trace outside a run directory is the user's file: nothing is written into its folder."""
    folder = tmp_path / "mine"
    folder.mkdir()
    trace = folder / GPU_TRACE.name
    shutil.copyfile(GPU_TRACE, trace)
    load = Counting()
    tablestore.load_cached(trace, load)
    tablestore.load_cached(trace, load)
    assert load.calls == 1, "the second load must come from the user cache"
    assert sorted(p.name for p in folder.iterdir()) == [GPU_TRACE.name]
    assert len(list(auto_cache.iterdir())) == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_background_child_leaves_the_pinned_training_cpu() -> None:
    """A child started from a thread pinned to one CPU inherits that one CPU; background()
    gives it every CPU of the process and idle priority."""
    allowed = os.sched_getaffinity(0)
    out: dict = {}

    def pinned_start() -> None:  # a thread of its own: the test's main thread keeps its mask
        os.sched_setaffinity(0, {min(allowed)})
        out["proc"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        out["inherited"] = os.sched_getaffinity(out["proc"].pid)
        background(out["proc"].pid)

    t = threading.Thread(target=pinned_start)
    t.start()
    t.join()
    proc = out["proc"]
    try:
        assert out["inherited"] == {min(allowed)}
        assert os.sched_getaffinity(proc.pid) == process_cpus() == allowed
        assert os.sched_getscheduler(proc.pid) == os.SCHED_IDLE
    finally:
        proc.kill()
        proc.wait()
