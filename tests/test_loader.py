"""Loader: real torch.profiler traces -> columnar table, links, steps, ranks, bad input, fuzz."""

from __future__ import annotations

import gzip
import json
import shutil
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stallscope.analyzers.context import load_context
from stallscope.analyzers.loader import load_trace
from stallscope.analyzers.model import Kind
from stallscope.analyzers.tracefile import iter_trace_batches
from stallscope.profiler.common import ToolError
from tests.diagnose_traces import (
    cpu_nosteps_trace,
    cpu_plain_trace,
    cpu_steps_trace,
    ddp_folder,
    empty_trace,
    tb_folder,
)

# Columns the decoder fills (the links come from sorting and linking; step and flops are checked elsewhere).
DECODED_COLUMNS = (
    "kind",
    "name",
    "ts_ns",
    "dur_ns",
    "pid",
    "tid",
    "stream",
    "device",
    "correlation",
    "external_id",
    "bytes",
)


def _raw_events(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return json.load(fh)["traceEvents"]


def test_columns_match_the_json_exactly() -> None:
    path = cpu_steps_trace()
    table, meta = load_trace(path)
    raw = [e for e in _raw_events(path) if e.get("ph") == "X" and e.get("cat") not in ("Trace",)]
    assert len(table) == len(raw)
    assert meta["record_shapes"] == 1
    # integer ns recovered exactly from Kineto's 3-decimal microseconds
    want = sorted(int(Decimal(repr(e["ts"])) * 1000) for e in raw)
    assert np.array_equal(np.sort(table.ts_ns), np.asarray(want, dtype=np.int64))
    want_dur = sorted(int(Decimal(repr(e["dur"])) * 1000) for e in raw)
    assert np.array_equal(np.sort(table.dur_ns), np.asarray(want_dur, dtype=np.int64))
    assert np.all(np.diff(table.ts_ns) >= 0), "rows are time-sorted"
    assert len(set(table.names)) == len(table.names), "names are interned once"
    assert set(np.unique(table.kind)) >= {Kind.CPU_OP, Kind.ANNOTATION, Kind.PYTHON}


def test_sparse_args_shapes_flops() -> None:
    table, _ = load_trace(cpu_steps_trace())
    mm = table.rows_named(lambda s: s == "aten::addmm", Kind.CPU_OP)
    assert mm.size
    assert all("input_dims" in table.extra[int(r)] for r in mm)
    raw_flops = [
        e["args"]["flops"]
        for e in _raw_events(cpu_steps_trace())
        if e.get("name") == "aten::addmm" and "flops" in e.get("args", {})
    ]
    got = table.flops[mm]
    assert sorted(got[np.isfinite(got)].tolist()) == sorted(float(f) for f in raw_flops)
    plain, _ = load_trace(cpu_plain_trace())
    assert not any("input_dims" in e for e in plain.extra.values())


def test_steps_from_profiler_step() -> None:
    ctx = load_context(cpu_steps_trace())
    (rd,) = ctx.ranks
    assert [s.source for s in rd.steps] == ["ProfilerStep"] * len(rd.steps)
    assert len(rd.steps) == 4
    ev = rd.events
    for s in rd.steps:
        inside = (ev.ts_ns >= s.start_ns) & (ev.ts_ns < s.end_ns) & (ev.kind == Kind.CPU_OP)
        assert np.all(ev.step[inside] == s.index)
    assert ctx.has("shapes") and ctx.has("stacks") and not ctx.has("gpu")
    assert any("GPU figures are absent" in n for n in ctx.notices)


def test_no_profiler_step_gives_one_whole_trace_step() -> None:
    ctx = load_context(cpu_nosteps_trace())
    (rd,) = ctx.ranks
    assert len(rd.steps) == 1 and rd.steps[0].source == "whole-trace"
    assert any("whole trace is treated as one step" in n for n in ctx.notices)


def test_tensorboard_handler_folder_keeps_the_newest_cycle() -> None:
    folder = tb_folder()
    files = sorted(folder.glob("*.pt.trace.json.gz"))
    assert len(files) == 2
    ctx = load_context(folder)
    assert len(ctx.ranks) == 1
    assert ctx.ranks[0].trace_path == str(files[-1])
    assert any("one per profiling cycle" in n for n in ctx.notices)
    single = load_context(files[0])
    assert single.ranks[0].steps


def test_rank_folder_uses_distributed_info() -> None:
    ctx = load_context(ddp_folder())
    assert [r.rank for r in ctx.ranks] == [0, 1]
    assert ctx.has("multi-rank")
    assert ctx.trace_meta["distributedInfo"]["world_size"] == 2
    for rd in ctx.ranks:
        assert rd.events.rows_named(lambda s: s.startswith("gloo:")).size > 0


def test_gzip_and_plain_json_load_identically(tmp_path: Path) -> None:
    src = cpu_steps_trace()
    gz = tmp_path / "t.json.gz"
    with open(src, "rb") as a, gzip.open(gz, "wb") as b:
        shutil.copyfileobj(a, b)
    t1, _ = load_trace(src)
    t2, _ = load_trace(gz)
    assert t1.names == t2.names
    for col in ("kind", "name", "ts_ns", "dur_ns", "pid", "tid", "external_id"):
        assert np.array_equal(getattr(t1, col), getattr(t2, col)), col


@pytest.mark.parametrize("chunk", [4096, 50_000])
def test_streaming_batches_equal_one_parse(chunk: int) -> None:
    src = cpu_steps_trace()
    whole = [e for evs, _ in iter_trace_batches(src) for e in evs]
    batches = list(iter_trace_batches(src, chunk_bytes=chunk))
    assert len(batches) > 2
    streamed = [e for evs, _ in batches for e in evs]
    assert streamed == whole
    assert batches[-1][1] is not None and batches[-1][1]["schemaVersion"] == 1


def test_run_directory_with_telemetry(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "rank0").mkdir(parents=True)
    with open(cpu_steps_trace(), "rb") as a, gzip.open(run / "rank0" / "trace.json.gz", "wb") as b:
        shutil.copyfileobj(a, b)
    rows = ["step,start_ns,end_ns,wall_ms,gpu_ms,data_wait_ms,in_window,source"]
    for i in range(12):
        rows.append(f"{i},{i * 10**7},{(i + 1) * 10**7},{10.0 + i % 3},,{1.5},{1 if 2 <= i < 6 else 0},optimizer")
    (run / "rank0" / "steps.csv").write_text("\n".join(rows) + "\n")
    (run / "rank0" / "host.csv").write_text(
        "t_ns,proc_cpu_pct,workers,workers_cpu_pct,max_worker_cpu_pct,rss_mb\n1,90,0,0,0,500\n"
    )
    (run / "rank0" / "rank.yaml").write_text("schema_version: 1\nrank: 0\nclock: {trace_to_epoch_ns: 0}\n")
    (run / "meta.yaml").write_text(
        "schema_version: 1\nkind: stallscope-run\nhost: box\nranks: [0]\nworld_size: 1\n"
        "per_rank: {0: {gpu: null, torch: '2.13.0', python: '3.11'}}\n"
    )
    ctx = load_context(run)
    (rd,) = ctx.ranks
    assert rd.telemetry is not None and rd.telemetry["wall_ms"].size == 12
    assert ctx.has("telemetry") and ctx.has("host") and not ctx.has("nvml")
    assert rd.meta["rank"]["rank"] == 0
    assert len(rd.steps) == 4


def test_run_directory_rejects_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "rank0").mkdir()
    (tmp_path / "meta.yaml").write_text("schema_version: 7\n")
    with pytest.raises(ToolError, match="schema_version 7"):
        load_context(tmp_path)


def test_empty_trace_loads_without_steps(tmp_path: Path) -> None:
    ctx = load_context(empty_trace(tmp_path))
    assert len(ctx.ranks[0].events) == 0 and ctx.ranks[0].steps == []
    assert not ctx.has("trace")


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda d: d / "missing.json", "no such file"),
        (lambda d: d, "no trace files"),
        (lambda d: _write(d / "bad.json", b'{"traceEvents": [{"ph": "X",'), "not valid JSON"),
        (lambda d: _write(d / "empty.json", b""), "empty"),
        (lambda d: _write(d / "list.json", b'{"hello": 1}'), "not a chrome trace"),
        (
            lambda d: _write(d / "t.json.gz", gzip.compress(Path(cpu_plain_trace()).read_bytes())[:2000]),
            "truncated or corrupt",
        ),
    ],
)
def test_bad_input_is_one_clean_error(tmp_path: Path, make, match: str) -> None:
    with pytest.raises(ToolError, match=match):
        load_context(make(tmp_path))


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


_SEED = None


def _seed_bytes() -> bytes:
    global _SEED
    if _SEED is None:
        _SEED = Path(cpu_plain_trace()).read_bytes()[:60_000]
        cut = _SEED.rfind(b"},")
        _SEED = _SEED[: cut + 1] + b"]}"
    return _SEED


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_mutated_and_truncated_traces(tmp_path_factory, data) -> None:
    seed = _seed_bytes()
    action = data.draw(st.sampled_from(["truncate", "flip", "splice", "gzip-truncate"]))
    if action == "truncate":
        blob = seed[: data.draw(st.integers(0, len(seed)))]
    elif action == "flip":
        arr = bytearray(seed)
        for _ in range(data.draw(st.integers(1, 20))):
            arr[data.draw(st.integers(0, len(arr) - 1))] = data.draw(st.integers(0, 255))
        blob = bytes(arr)
    elif action == "splice":
        i = data.draw(st.integers(0, len(seed)))
        blob = seed[:i] + data.draw(st.binary(max_size=64)) + seed[i:]
    else:
        z = gzip.compress(seed)
        blob = z[: data.draw(st.integers(0, len(z)))]
    d = tmp_path_factory.mktemp("fuzz")
    p = d / ("t.json.gz" if action == "gzip-truncate" else "t.json")
    p.write_bytes(blob)
    import stallscope.analyzers.tracefile as tracefile

    chunk = data.draw(st.sampled_from([tracefile.CHUNK_BYTES, 2048]))  # 2048: the segmented, typed path
    saved, tracefile.CHUNK_BYTES = tracefile.CHUNK_BYTES, chunk
    try:
        ctx = load_context(p)
    except ToolError:
        return
    finally:
        tracefile.CHUNK_BYTES = saved
    for rd in ctx.ranks:
        ev = rd.events
        assert all(len(getattr(ev, c)) == len(ev) for c in ("ts_ns", "dur_ns", "name", "step"))
        for b in rd.breakdown:
            assert sum(b.parts().values()) == pytest.approx(b.wall_ms, rel=0.01, abs=1e-6)


def test_stub_last_step_left_out(tmp_path: Path) -> None:
    # torch.profiler opens ProfilerStep#N+1 at the last prof.step() and closes it when it stops;
    # reproduce that stub on a real trace and check it is not counted as a step
    doc = json.loads(Path(cpu_plain_trace()).read_text())
    steps = [e for e in doc["traceEvents"] if str(e.get("name", "")).startswith("ProfilerStep#")]
    last = max(steps, key=lambda e: e["ts"])
    n = int(last["name"].split("#")[1]) + 1
    doc["traceEvents"].append({**last, "name": f"ProfilerStep#{n}", "ts": last["ts"] + last["dur"] + 1.0, "dur": 0.05})
    p = tmp_path / "stub.json"
    p.write_text(json.dumps(doc))
    ctx = load_context(p)
    assert [s.index for s in ctx.ranks[0].steps] == sorted(int(e["name"].split("#")[1]) for e in steps)
    assert any("cut short" in notice for notice in ctx.notices)


def test_parallel_parse_equals_one_process(monkeypatch) -> None:
    import stallscope.analyzers.tracefile as tracefile

    src = cpu_steps_trace()
    monkeypatch.setenv("STALLSCOPE_PARSE_WORKERS", "0")
    one, meta1 = load_trace(src)
    monkeypatch.setattr(tracefile, "CHUNK_BYTES", 8192)
    monkeypatch.setenv("STALLSCOPE_PARSE_WORKERS", "2")
    par, meta2 = load_trace(src)
    assert par.names == one.names and par.extra == one.extra
    for col in ("kind", "name", "ts_ns", "dur_ns", "pid", "tid", "correlation", "external_id", "launch_of", "op_of"):
        assert np.array_equal(getattr(par, col), getattr(one, col)), col
    assert meta1 == meta2


# PyTorch 1.8 and 1.9 traces (capitalised categories, "external id", "Input dims", tids as text,
# a bare JSON array in 1.8): public samples trimmed by tests/fixtures/trim_public_traces.py
_OLD_SCHEMAS = [
    lambda: Path(__file__).parent / "fixtures" / "public" / "kineto_resnet50_nw0_pt18.pt.trace.json.gz",
    lambda: Path(__file__).parent / "fixtures" / "public" / "kineto_resnet50_nw0_pt19.pt.trace.json.gz",
]


@pytest.mark.parametrize("make", [cpu_steps_trace, lambda: sorted(ddp_folder().glob("*.json"))[0], *_OLD_SCHEMAS])
def test_typed_decoding_equals_generic_parse(monkeypatch, make) -> None:
    import stallscope.analyzers.kineto_structs as ks
    import stallscope.analyzers.tracefile as tracefile

    if not ks.AVAILABLE:
        pytest.skip("msgspec is not installed: only the generic parse exists")
    monkeypatch.setattr(tracefile, "CHUNK_BYTES", 16384)  # many segments, so the typed path runs
    monkeypatch.setenv("STALLSCOPE_PARSE_WORKERS", "0")
    typed, m1 = load_trace(make())
    monkeypatch.setattr(ks, "AVAILABLE", False)
    generic, m2 = load_trace(make())
    assert typed.names == generic.names and typed.extra == generic.extra and m1 == m2
    for col in DECODED_COLUMNS:
        assert np.array_equal(getattr(typed, col), getattr(generic, col)), col


@pytest.mark.parametrize("make", [cpu_steps_trace, lambda: sorted(ddp_folder().glob("*.json"))[0], *_OLD_SCHEMAS])
def test_generic_parse_dicts_decode_like_typed_records(monkeypatch, make) -> None:
    """Dicts from the generic parse reach the one decoder through msgspec.convert, or wrapped in
    Python when msgspec is absent: both give the typed decode's columns."""
    import stallscope.analyzers.kineto_structs as ks
    from stallscope.analyzers.decode import EventColumns
    from stallscope.analyzers.link import sort_and_link

    if not ks.AVAILABLE:
        pytest.skip("msgspec is not installed: only the Python wrapping exists")
    monkeypatch.setenv("STALLSCOPE_PARSE_WORKERS", "0")
    typed, _ = load_trace(make())
    batches = [events for events, _ in iter_trace_batches(make())]
    tables = []
    for available in (True, False):
        monkeypatch.setattr(ks, "AVAILABLE", available)
        cols = EventColumns()
        for events in batches:
            cols.add_dicts(events)
        tables.append(cols.table())
    for table in tables:
        table = sort_and_link(table)
        assert table.names == typed.names and table.extra == typed.extra
        for col in (*DECODED_COLUMNS, "launch_of", "op_of"):
            assert np.array_equal(getattr(table, col), getattr(typed, col)), col


def test_categories_are_read_in_any_case_and_listed() -> None:
    """Each category spelling is classified once and reported in the metadata (what was read as what)."""
    from stallscope.analyzers.loader import CATEGORIES

    _, meta = load_trace(_OLD_SCHEMAS[1]())
    assert meta[CATEGORIES] == {
        "Operator": "cpu_op",
        "Runtime": "runtime",
        "Kernel": "kernel",
        "Memset": "memset",
        "Memcpy": "memcpy",
        "Trace": "skipped",
    }
    table, _ = load_trace(_OLD_SCHEMAS[1]())
    runtime = table.rows_of_kind(Kind.RUNTIME)
    assert np.all(table.external_id[runtime] >= 0), "runtime rows carry their op's id as 'external id'"
