"""Blocking readbacks, device-to-device copies and what launch overhead is (issue 17, kinds 3, 5, 7).

Every case reads a committed H200 trace (tests/fixtures/gpu, recorded by
tests/fixtures/make_analyzer_traces_gpu.py). Where no committed recording shows the case, the
test rewrites a real one in ``tmp_path`` with :func:`_insert`: it opens ``d`` microseconds at one
instant of the trace, so what lies after it happens ``d`` later and what was running at it
lasts ``d`` longer. Each transform says which instant and what it stands for; the recipe that
records the case for real is named beside it (``FIXTURES`` in make_analyzer_traces_gpu.py).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from stallscope.analyzers.base import Severity
from tests.analyzer_traces import GPU_FIXTURES, context, gpu_fixture, run

D_US = 20_000.0  # the time a transform opens: far above every figure of the untouched traces (~1 ms steps)
_GPU = ("kernel", "gpu_memcpy", "gpu_memset")


# ------------------------------------------------------------------------------ trace rewriting


def _raw(name: str) -> dict[str, Any]:
    path = GPU_FIXTURES / f"{name}.json.gz"
    if not path.is_file():
        pytest.skip(f"GPU fixture {path.name} not recorded yet")
    with gzip.open(path, "rt") as fh:
        return json.load(fh)


def _x(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in doc["traceEvents"] if e.get("ph") == "X" and "ts" in e]


def _steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(
        (e for e in _x(doc) if e.get("cat") == "user_annotation" and e["name"].startswith("ProfilerStep#")),
        key=lambda e: e["ts"],
    )


def _in(e: dict[str, Any], step: dict[str, Any]) -> bool:
    return step["ts"] <= e["ts"] < step["ts"] + step["dur"]


def _gpu_running_at(doc: dict[str, Any], t: float) -> bool:
    return any(e["ts"] < t < e["ts"] + e["dur"] for e in _x(doc) if e.get("cat") in _GPU)


def _insert(doc: dict[str, Any], at: float, d: float) -> None:
    """Open ``d`` us at trace time ``at``: events from ``at`` on start ``d`` later, events running
    across ``at`` last ``d`` longer. The GPU must be idle at ``at`` (no kernel is stretched)."""
    assert not _gpu_running_at(doc, at), "a transform must open time where the GPU is idle"
    for e in doc["traceEvents"]:
        ts = e.get("ts")
        if not isinstance(ts, (int, float)):
            continue
        if ts >= at:
            e["ts"] = ts + d
        elif isinstance(e.get("dur"), (int, float)) and ts + e["dur"] > at:
            e["dur"] = e["dur"] + d


def _save(doc: dict[str, Any], path: Path) -> Path:
    with gzip.open(path, "wt") as fh:
        json.dump(doc, fh)
    return path


def _runtime(doc: dict[str, Any], name: str, step: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(
        (e for e in _x(doc) if e.get("cat") in ("cuda_runtime", "cuda_driver") and e["name"] == name and _in(e, step)),
        key=lambda e: e["ts"],
    )


def _idle_instant_in(doc: dict[str, Any], call: dict[str, Any]) -> float:
    """An instant inside a host call at which the GPU runs nothing."""
    for k in range(1, 20):
        t = call["ts"] + call["dur"] * k / 20
        if not _gpu_running_at(doc, t):
            return t
    raise AssertionError(f"the GPU runs during all of {call['name']} at {call['ts']}")


def _sync_share(ctx) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(the breakdown's sync wait as % of the steps, ms per step)."""
    bd = ctx.ranks[0].breakdown
    wall = sum(b.wall_ms for b in bd)
    sync = sum(b.sync_wait_ms for b in bd)
    return 100.0 * sync / wall, sync / len(bd)


def _only(found: list, fid: str):  # type: ignore[no-untyped-def]
    hits = [f for f in found if f.id == fid]
    assert len(hits) == 1, [f.id for f in found]
    return hits[0]


# ------------------------------------------------------------------- kind 3: blocking readbacks


def test_item_per_layer_sync_share_agrees_with_the_breakdown():
    """The untouched recording: eight ``.item()`` per step. The analyzer and the breakdown measure
    the same wait (GPU idle while the loop is blocked, plus the drained gap after): on main the
    analyzer counted only a capped bubble after each sync and missed the breakdown by 5 pp. The
    recording is host-bound (its GPU works under half the step), so what removing the syncs
    saves is the host's time blocked in them, not the GPU's idle time around them."""
    ctx = gpu_fixture("sync_item_per_layer")
    (f,) = run("synchronization", ctx)
    pct, _ = _sync_share(ctx)
    assert abs(f.evidence["sync_wait_pct_of_step"] - pct) < 2.0
    bd = ctx.ranks[0].breakdown
    assert sum(b.compute_ms + b.memory_ms for b in bd) < 0.5 * sum(b.wall_ms for b in bd)  # host-bound
    assert f.impact.est_saving_ms_per_step <= f.evidence["host_blocked_ms_per_step"] * 1.001
    assert f.impact.step_time_pct < pct / 2 and "host-bound" in f.evidence["bounded_by"]
    site = f.where["sites"][0]
    assert site["op"] == "aten::_local_scalar_dense" and site["cause"].startswith(".item()")
    assert "make_analyzer_traces_gpu.py" in (site.get("python") or "")


def _readback_then_host_work(tmp_path: Path, gpu_us: float) -> Any:
    """sync_item_per_layer with ``D_US`` of host work opened right after the last ``.item()`` of
    every step returns (the GPU is idle then: the sync drained it) and, when ``gpu_us`` > 0, the
    kernel that sync waits for made ``gpu_us`` longer (the host stays blocked in the sync)."""
    doc = _raw("sync_item_per_layer")
    for step in _steps(doc)[::-1]:
        last = _runtime(doc, "cudaStreamSynchronize", step)[-1]
        _insert(doc, last["ts"] + last["dur"], D_US)
        if gpu_us:  # stretch the GPU work a blocking call of this readback waits on
            calls = _runtime(doc, "cudaMemcpyAsync", step)[-1:] + [last]
            at, k = next(
                (c["ts"] + c["dur"] * i / 20, e)
                for c in calls
                for i in range(1, 20)
                for e in _x(doc)
                if e.get("cat") in _GPU and e["ts"] < c["ts"] + c["dur"] * i / 20 < e["ts"] + e["dur"]
            )
            _insert_inside(doc, k, at, gpu_us)
    return context(_save(doc, tmp_path / f"readback_then_host_work_{int(gpu_us)}.json.gz"))


def test_readback_followed_by_host_work_is_host_time_when_the_host_is_slower(tmp_path: Path):
    """A small readback, then 20 ms of host work while the GPU has nothing queued (a loop that logs
    or scores the value it read), on a step whose GPU works ~1 ms: the breakdown calls the gap a
    sync wait, but without the sync the host would still spend those 20 ms a step and the GPU
    would still wait for it. The synchronization finding claims no more than the host's time
    blocked in the calls; the gap is the host's."""
    ctx = _readback_then_host_work(tmp_path, 0.0)
    pct, ms = _sync_share(ctx)
    assert ms > D_US / 1e3  # the transform did what it says
    f = _only(run("synchronization", ctx), "blocking-syncs")
    assert f.evidence["sync_wait_ms_per_step"] > D_US / 1e3
    assert f.impact.est_saving_ms_per_step < 1.0 < D_US / 1e3
    assert f.severity != Severity.HIGH


def test_readback_followed_by_host_work_is_a_sync_wait_when_the_gpu_is_slower(tmp_path: Path):
    """The same 20 ms of host work after the readback, on a step whose GPU works 60 ms more (the
    kernel the sync waits for): now the host would do its 20 ms while queued kernels run, so
    the drained gap is what the sync costs (the readback issued later would hide it)."""
    ctx = _readback_then_host_work(tmp_path, 3 * D_US)
    pct, ms = _sync_share(ctx)
    assert ms > D_US / 1e3
    f = _only(run("synchronization", ctx), "blocking-syncs")
    assert abs(f.impact.step_time_pct - pct) < 3.0
    assert f.impact.est_saving_ms_per_step > D_US / 1e3
    assert f.severity == Severity.HIGH


def test_host_blocked_in_a_small_device_to_host_copy_is_a_sync_wait(tmp_path: Path):
    """The issue's trace: a 4-byte readback whose ``cudaMemcpyAsync`` (device to host) itself
    blocks the host while the GPU idles. Transform of sync_item_per_layer: 20 ms open inside the
    last ``cudaMemcpyAsync`` of every step, at an instant the GPU runs nothing. On main the copy
    call was not a sync for the analyzer (only cudaStreamSynchronize was) and memory-copy ignores
    copies under 64 KiB, so the wait had no finding; the breakdown counted it as sync wait."""
    doc = _raw("sync_item_per_layer")
    for step in _steps(doc)[::-1]:
        copy = _runtime(doc, "cudaMemcpyAsync", step)[-1]
        _insert(doc, _idle_instant_in(doc, copy), D_US)
    ctx = context(_save(doc, tmp_path / "blocking_readback.json.gz"))
    pct, ms = _sync_share(ctx)
    assert ms > D_US / 1e3
    f = _only(run("synchronization", ctx), "blocking-syncs")
    assert abs(f.impact.step_time_pct - pct) < 3.0
    assert f.evidence["host_blocked_ms_per_step"] > D_US / 1e3
    top = f.where["sites"][0]
    assert top["api"][0] == "cudaMemcpyAsync" and top["op"] == "aten::_local_scalar_dense"
    assert top["bytes"] == 4 and top["ms_per_step"] > D_US / 1e3
    assert "make_analyzer_traces_gpu.py" in (top.get("python") or "")


# ------------------------------------------------------------- kind 7: device-to-device copies


def test_device_to_device_copies_are_reported_with_bytes_bandwidth_and_op(tmp_path: Path):
    """healthy_bf16_mlp copies a 134 MB fp32 tensor on the device once a step (``Memcpy DtoD``,
    ~64 us: 1.2 % of the step). Transform (recipe ``dtod_copies`` records it for real): each of
    those copies made 20 times larger, as the same copy of a 20x larger tensor at the same speed
    (its duration opened by 19x at its midpoint, its bytes multiplied by 20): ~2.7 GB a step. On
    main memory-copy had no finding for device-to-device copies at any size."""
    doc = _raw("healthy_bf16_mlp")
    launches = {e["args"].get("correlation"): e for e in _x(doc) if e.get("cat") == "cuda_runtime"}
    copies = [e for e in _x(doc) if e.get("cat") == "gpu_memcpy" and "DtoD" in e["name"]]
    # launched in a step (the host runs ahead: the copies themselves run after the host's step ends)
    copies = [e for e in copies if any(_in(launches[e["args"]["correlation"]], s) for s in _steps(doc))]
    assert len(copies) == len(_steps(doc))
    for e in sorted(copies, key=lambda e: -e["ts"]):
        dur = e["dur"]
        _insert_inside(doc, e, e["ts"] + dur / 2, 19 * dur)
        e["args"]["bytes"] = 20 * e["args"]["bytes"]
    ctx = context(_save(doc, tmp_path / "dtod.json.gz"))
    n = len(_steps(doc))
    copy_bytes = sum(e["args"]["bytes"] for e in copies)
    copy_us = sum(e["dur"] for e in copies)
    f = _only(run("memory-copy", ctx), "device-to-device-copies")
    assert f.evidence["dtod_gb_per_step"] == pytest.approx(copy_bytes / n / 1e9, rel=0.01)
    assert f.evidence["copy_ms_per_step"] >= 0.99 * copy_us / n / 1e3
    # a device-to-device copy reads and writes its bytes: HBM traffic is twice the size
    assert f.evidence["achieved_gbps"] == pytest.approx(2 * copy_bytes / (copy_us * 1e-6) / 1e9, rel=0.02)
    assert f.evidence["peak_gbps"] == 4250
    assert f.severity.rank >= Severity.MEDIUM.rank
    assert any(op.startswith("aten::copy_") for op in f.where["ops"])


def _insert_inside(doc: dict[str, Any], gpu_event: dict[str, Any], at: float, d: float) -> None:
    """:func:`_insert` at an instant where ``gpu_event`` runs: that event alone is stretched."""
    gpu_event["dur"] += d
    saved = gpu_event["ts"]
    gpu_event["ts"] = -1.0  # out of the way of _insert's idle check and shift
    _insert(doc, at, d)
    gpu_event["ts"] = saved


def test_dtype_casts_under_autocast_are_named_and_stay_low_on_a_healthy_run():
    """healthy_bf16_mlp runs its fp32 MLP under bf16 autocast: every step casts the 16384x2048 fp32
    input to bf16 (read 4 + write 2 bytes an element: 201 MB) and the weights. A cast is the
    precision the model asked for, so it is named (bytes, ops) but graded low at most."""
    f = _only(run("memory-copy", gpu_fixture("healthy_bf16_mlp")), "dtype-casts")
    assert f.evidence["cast_traffic_gb_per_step"] * 1e9 >= 16384 * 2048 * (4 + 2)
    assert f.severity.rank <= Severity.LOW.rank
    assert any("float" in op and "BFloat16" in op for op in f.where["ops"])


# ------------------------------------------------------------- kind 5: what launch overhead is


def _host_bound_parts(f) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return {k: f.evidence[k] for k in f.evidence if k.endswith("_ms_per_step")}


def _launch_ms(found: list) -> float:
    """host-bound's launch overhead per step (every host-bound finding carries the split); 0 with none."""
    return max((float(f.evidence["launch_overhead_ms_per_step"]) for f in found), default=0.0)


def test_launched_work_waiting_on_the_gpu_is_not_launch_overhead(tmp_path: Path):
    """A kernel that was launched and sat in its queue while this trace's GPU ran nothing: it waits
    on another stream's event or on another process's work (the ddp fixture's two ranks share one
    H200 and show it for real; recipe ``gpu_shared_with_another_process``). Transform of
    tiny_kernels (a real launch-bound trace): 20 ms open at the start of one kernel in the middle
    of every step, one that began after an idle GPU gap, whose launch had returned, at an instant
    no runtime call runs. The breakdown puts queued time in launch_overhead_ms; on main host-bound
    called all of it launch overhead."""
    name = "tiny_kernels.pt.trace"
    doc = _raw(name)
    gpu = sorted((e for e in _x(doc) if e.get("cat") in _GPU), key=lambda e: e["ts"])
    calls = {e["args"].get("correlation"): e for e in _x(doc) if e.get("cat") == "cuda_runtime"}
    runtime = [e for e in _x(doc) if e.get("cat") == "cuda_runtime"]
    candidates: dict[str, list[float]] = {}
    busy_end = None
    for k in gpu:
        launch = calls.get(k["args"].get("correlation"))
        step = next((s for s in _steps(doc) if _in(k, s)), None)
        if (
            step is not None
            and launch is not None
            and busy_end is not None
            and k["ts"] - busy_end > 1
            and launch["ts"] + launch["dur"] < k["ts"]
            and not any(r["ts"] < k["ts"] < r["ts"] + r["dur"] for r in runtime)
        ):
            candidates.setdefault(step["name"], []).append(k["ts"])
        busy_end = max(busy_end or k["ts"], k["ts"] + k["dur"])
    assert len(candidates) == len(_steps(doc))
    for t in sorted((v[len(v) // 2] for v in candidates.values()), reverse=True):
        _insert(doc, t, D_US)
    ctx = context(_save(doc, tmp_path / "queued_wait.json.gz"))
    bd = ctx.ranks[0].breakdown
    before = _launch_ms(run("host-bound", gpu_fixture(name)))
    assert sum(b.launch_overhead_ms for b in bd) / len(bd) > D_US / 1e3  # what the breakdown calls it
    found = run("host-bound", ctx)
    assert _launch_ms(found) < before + 0.1 * D_US / 1e3
    wait = _only(found, "gpu-waits-on-queued-work")
    assert wait.evidence["queued_wait_ms_per_step"] > 0.9 * D_US / 1e3


def _stretch_call(doc: dict[str, Any], name: str, d: float) -> None:
    """Open ``d`` inside the first ``name`` call of every step that finds the GPU idle."""
    for step in _steps(doc)[::-1]:
        for call in _runtime(doc, name, step):
            try:
                at = _idle_instant_in(doc, call)
            except AssertionError:
                continue
            _insert(doc, at, d)
            break
        else:
            raise AssertionError(f"no {name} in {step['name']} finds the GPU idle")


@pytest.mark.parametrize(
    ("fixture", "call"),
    [
        # lazy module loading: the first launch of a kernel loads its module inside cudaLaunchKernel
        ("sync_none", "cudaLaunchKernel"),
        # a device query, the call that creates the CUDA context when it is the first one
        ("train.pt.trace", "cudaDeviceGetAttribute"),
    ],
)
def test_runtime_set_up_inside_a_step_is_not_launch_overhead(tmp_path: Path, fixture: str, call: str):
    """Start-up work of the CUDA runtime inside a step (context creation, module loading, device
    queries, allocation; the HTA alexnet trace has 30 s of it and was reported host-bound 99.6 %
    with CUDA-graph advice). Transform: 20 ms open inside the first such call of every step, at an
    instant the GPU is idle (recipe ``runtime_setup_in_step``). On main host-bound called it launch
    overhead."""
    doc = _raw(fixture)
    _stretch_call(doc, call, D_US)
    ctx = context(_save(doc, tmp_path / f"{fixture}_setup.json.gz"))
    bd = ctx.ranks[0].breakdown
    before = _launch_ms(run("host-bound", gpu_fixture(fixture)))
    assert sum(b.launch_overhead_ms for b in bd) / len(bd) > D_US / 1e3  # what the breakdown calls it
    found = run("host-bound", ctx)
    assert _launch_ms(found) < before + 0.1 * D_US / 1e3
    setup = _only(found, "runtime-setup-in-step")
    assert setup.evidence["runtime_setup_ms_per_step"] > 0.9 * D_US / 1e3
    assert call in setup.where["calls"]


def test_two_ranks_on_one_gpu_wait_for_each_other_not_for_launches():
    """The ddp fixture: two gloo DDP ranks share one H200, so a launched kernel often waits ~130 us
    for the other process's work. That wait is named; host-bound's parts still partition the
    breakdown's launch_overhead_ms + host_other_ms."""
    ctx = context(GPU_FIXTURES / "ddp")
    for rd in ctx.ranks:
        from stallscope.analyzers.builtin.host_bound import host_idle_parts

        parts = host_idle_parts(rd)
        bd = rd.breakdown
        total = sum(b.launch_overhead_ms + b.host_other_ms for b in bd) / len(bd)
        assert sum(parts.values()) == pytest.approx(total, rel=1e-6)
        assert parts["queued_wait"] > 0
        assert parts["launch"] < sum(b.launch_overhead_ms for b in bd) / len(bd)


def test_a_launch_bound_trace_keeps_its_launch_finding():
    """tiny_kernels: 150 sub-microsecond kernels a step, launched back to back. Nothing waits on
    another stream and nothing is set up: the GPU idles on launches, as before."""
    found = run("host-bound", gpu_fixture("tiny_kernels.pt.trace"))
    f = _only(found, "host-bound-launch-gaps")
    assert f.severity == Severity.HIGH
    parts = _host_bound_parts(f)
    assert parts["launch_overhead_ms_per_step"] > 10 * (
        parts["queued_wait_ms_per_step"] + parts["runtime_setup_ms_per_step"]
    )
