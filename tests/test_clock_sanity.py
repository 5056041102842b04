"""Clock sanity: unusable GPU timestamps and start-up outside the steps (analyzers/clock.py).

The broken-clock cases start from real committed GPU traces and break their GPU timestamps the
way real traces were found broken: every GPU event at ``ts = 0, dur = 0`` (torch 2.11, exported
after another profiler session of the same process), a device clock off by a year, kernels that
start 50 ms before their launch, one corrupt duration. The start-up cases start from real CPU
traces recorded by the test session (tests/diagnose_traces.py) and put a synthetic CUDA start-up
in front of them (see :func:`_with_startup`), so that seconds of start-up (cuInit, module loads)
can be shown; one real start-up, recorded on an H200, is checked as it is.
"""

from __future__ import annotations

import glob
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from stallscope.analyzers.context import load_context
from stallscope.analyzers.model import Kind
from stallscope.analyzers.report import build_report
from tests.diagnose_traces import cpu_nosteps_trace, cpu_steps_trace

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GPU = FIXTURES / "gpu"
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset", "gpu_user_annotation")


def _load(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return json.load(fh)


def _save(path: Path, doc: dict) -> Path:
    with gzip.open(path, "wt") as fh:
        json.dump(doc, fh)
    return path


def _broken(src: Path, out: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    """``src`` with ``edit(event)`` applied to every GPU event."""
    doc = _load(src)
    for e in doc["traceEvents"]:
        if e.get("ph") == "X" and e.get("cat") in GPU_CATS:
            edit(e)
    return _save(out, doc)


def _trace_span_ms(doc: dict) -> float:
    """The span of the trace on the CPU's clock: every complete event but the GPU's (the
    profiler's own ``Trace`` range included)."""
    cpu = [e for e in doc["traceEvents"] if e.get("ph") == "X" and e.get("cat") not in GPU_CATS]
    return (max(e["ts"] + e["dur"] for e in cpu) - min(e["ts"] for e in cpu)) / 1e3


def _zero(e: dict) -> None:
    e["ts"] = 0
    e["dur"] = 0


@pytest.mark.parametrize(
    "fixture,steps_from",
    [("train.pt.trace.json.gz", "CPU ProfilerStep ranges"), ("nosteps.pt.trace.json.gz", "the CPU timeline")],
)
def test_gpu_events_all_at_zero_give_cpu_step_times_and_a_notice(tmp_path: Path, fixture: str, steps_from: str) -> None:
    src = GPU / fixture
    path = _broken(src, tmp_path / fixture, _zero)
    report = build_report(path)
    s = report["summary"]
    span_ms = _trace_span_ms(_load(src))
    assert 0 < s["step_time_ms"]["median"] <= span_ms
    assert all(0.0 <= v <= 100.0 for v in s["breakdown_pct"].values())
    assert all(0.0 <= f["impact"]["step_time_pct"] <= 100.0 for f in report["findings"])
    assert s["timeline"] == "cpu"
    want = f"GPU timestamps are unusable (all 0): step times from {steps_from}; GPU findings from kernel names only"
    assert any(want in n for n in report["notices"])
    ctx = load_context(path)
    (rd,) = ctx.ranks
    assert rd.meta["clock"]["gpu_usable"] is False and rd.meta["clock"]["reason"] == "all 0"
    assert not ctx.has("gpu")
    # the kernels are still there by name, linked to their launches, on no timeline
    raw = sum(1 for e in _load(src)["traceEvents"] if e.get("cat") == "kernel")
    untimed = rd.events.rows_of_kind(Kind.UNTIMED_KERNEL)
    assert untimed.size == raw and np.all(rd.events.launch_of[untimed] >= 0)
    assert not np.any(rd.events.dur_ns[untimed])


def test_steps_keep_their_cpu_ranges_when_the_gpu_clock_is_broken(tmp_path: Path) -> None:
    good = load_context(GPU / "train.pt.trace.json.gz").ranks[0]
    bad = load_context(_broken(GPU / "train.pt.trace.json.gz", tmp_path / "z.json.gz", _zero)).ranks[0]
    assert [(s.index, s.start_ns, s.end_ns) for s in bad.steps] == [(s.index, s.start_ns, s.end_ns) for s in good.steps]


def test_precision_from_kernel_names_when_gpu_durations_are_unusable(tmp_path: Path) -> None:
    path = _broken(GPU / "gemm_fp32_no_tf32.json.gz", tmp_path / "gemm.json.gz", _zero)
    report = build_report(path)
    (f,) = [f for f in report["findings"] if f["id"] == "fp32-matmul-off-tensor-cores"]
    assert f["severity"] in ("low", "medium")
    assert "GPU timestamps are unusable" in f["evidence"]["impact_basis"]
    assert any("simt_sgemm" in k for k in f["where"]["kernels"])  # the fixture's cutlass SIMT kernel
    assert 0.0 <= f["impact"]["step_time_pct"] <= 100.0
    # a TF32 run broken the same way gets no precision finding
    ok = build_report(_broken(GPU / "gemm_fp32_tf32.json.gz", tmp_path / "tf32.json.gz", _zero))
    assert not [f for f in ok["findings"] if f["id"] == "fp32-matmul-off-tensor-cores"]


def test_gpu_clock_a_year_off_is_unusable(tmp_path: Path) -> None:
    def year_later(e: dict) -> None:
        e["ts"] += 365 * 86400 * 1e6

    ctx = load_context(_broken(GPU / "train.pt.trace.json.gz", tmp_path / "y.json.gz", year_later))
    clock = ctx.ranks[0].meta["clock"]
    assert clock["gpu_usable"] is False and "outside the CPU span" in clock["reason"]
    assert any("GPU timestamps are unusable" in n for n in ctx.notices)


def test_kernels_before_their_launch_mean_unaligned_clocks(tmp_path: Path) -> None:
    """50 ms early: inside the trace's span tolerance, but no kernel starts before its launch."""

    def early(e: dict) -> None:
        e["ts"] -= 50_000.0

    ctx = load_context(_broken(GPU / "train.pt.trace.json.gz", tmp_path / "e.json.gz", early))
    clock = ctx.ranks[0].meta["clock"]
    assert clock["gpu_usable"] is False and "before their launch" in clock["reason"]


def test_one_corrupt_duration_leaves_the_rest_of_the_gpu_timeline(tmp_path: Path) -> None:
    doc = _load(GPU / "train.pt.trace.json.gz")
    kernels = [e for e in doc["traceEvents"] if e.get("cat") == "kernel"]
    kernels[3]["dur"] = 7 * 86400 * 1e6  # a CUPTI timestamp overflow: a week-long kernel
    ctx = load_context(_save(tmp_path / "one.json.gz", doc))
    (rd,) = ctx.ranks
    assert rd.meta["clock"]["gpu_usable"] is True and rd.meta["clock"]["untimed_events"] == 1
    assert ctx.has("gpu") and rd.events.rows_of_kind(Kind.KERNEL).size == len(kernels) - 1
    assert any("1 of" in n and "far outside" in n for n in ctx.notices)
    assert all(sum(b.parts().values()) == pytest.approx(b.wall_ms, rel=0.01) for b in rd.breakdown)


_REAL_GPU = [
    *sorted(glob.glob(str(GPU / "*.json.gz"))),
    *sorted(glob.glob(str(GPU / "ddp*" / "**" / "rank0.pt.trace.json.gz"), recursive=True)),
    *sorted(glob.glob(str(GPU / "runs" / "*"))),
    *sorted(glob.glob(str(FIXTURES / "public" / "*.json.gz"))),
    str(FIXTURES / "public" / "hta_sampled_2_of_128"),
]


@pytest.mark.parametrize("path", _REAL_GPU, ids=lambda p: str(Path(p).relative_to(FIXTURES)))
def test_real_traces_keep_their_gpu_clock(path: str) -> None:
    """No false alarm on any committed real trace (CUDA on H200 and V100, ROCm, MTIA; 1.8 to 2.x)."""
    ctx = load_context(path)
    for rd in ctx.ranks:
        if rd.events.gpu_rows().size:
            assert rd.meta["clock"] == {**rd.meta["clock"], "gpu_usable": True, "untimed_events": 0}
    assert not any("GPU timestamps" in n for n in ctx.notices)
    if not Path(path).name.startswith("startup_"):  # none of them was profiled from a cold start
        assert not any("start-up took" in n for n in ctx.notices)


def test_real_cuda_startup_is_left_out_of_the_pseudo_step() -> None:
    """A cold process recorded on an H200 (tests/fixtures/public/record_startup_gpu.py): device
    queries from 33 ms, the context created inside cudaDeviceGetStreamPriorityRange (142 ms),
    the first cudaMalloc, then the weights' first cudaMemcpyAsync at 199 ms."""
    path = FIXTURES / "public" / "startup_h200_nosteps.json.gz"
    raw = [e for e in _load(path)["traceEvents"] if e.get("ph") == "X" and e.get("cat") not in GPU_CATS]
    first_work = min(e["ts"] for e in raw if e["name"] == "cudaMemcpyAsync") * 1000
    context = next(e for e in raw if e["name"] == "cudaDeviceGetStreamPriorityRange")
    ctx = load_context(path)
    (rd,) = ctx.ranks
    (step,) = rd.steps
    assert (context["ts"] + context["dur"]) * 1000 <= step.start_ns <= first_work
    clock = rd.meta["clock"]
    assert clock["gpu_usable"] is True and clock["startup_calls_ms"] >= context["dur"] / 1e3
    (notice,) = [n for n in ctx.notices if "start-up took" in n]
    assert "cudaDeviceGetStreamPriorityRange" in notice and "the whole-trace step begins after it" in notice


# A CUDA start-up as a real trace of a cold process shows it (cuda_runtime / cuda_driver rows on
# the main thread): device count, driver init, primary context, the first cudaFree, an attribute
# storm, lazy module loads and the first allocations. 4.06 s in all, ending GAP_MS before the
# recorded trace's first event.
_STARTUP = (
    [("cudaGetDeviceCount", 1_000.0), ("cuInit", 2_000_000.0), ("cuDevicePrimaryCtxRetain", 1_500_000.0)]
    + [("cudaFree", 300_000.0)]
    + [("cudaDeviceGetAttribute", 2.0)] * 200
    + [("cuModuleLoadData", 50_000.0)] * 5
    + [("cudaMalloc", 2_000.0)] * 3
)


GAP_MS = 1.0


def _with_startup(src: str, out: Path) -> tuple[Path, float, float]:
    """``src`` with :data:`_STARTUP` in front of its first event; returns (path, prefix start us,
    prefix end us)."""
    doc = _load(Path(src))
    xs = [e for e in doc["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "cpu_op"]
    first = min(xs, key=lambda e: e["ts"])
    length = sum(d for _, d in _STARTUP)
    t = first["ts"] - GAP_MS * 1e3 - length
    start = t
    for i, (name, dur) in enumerate(_STARTUP):
        cat = "cuda_driver" if name.startswith("cu") and not name.startswith("cuda") else "cuda_runtime"
        doc["traceEvents"].append(
            {
                "ph": "X",
                "cat": cat,
                "name": name,
                "pid": first["pid"],
                "tid": first["tid"],
                "ts": t,
                "dur": dur,
                "args": {"correlation": 10_000_000 + i},
            }
        )
        t += dur
    return _save(out, doc), start, t


def test_startup_before_a_trace_without_steps_is_left_out_of_the_pseudo_step(tmp_path: Path) -> None:
    src = cpu_nosteps_trace()
    plain = load_context(src).ranks[0]
    path, _, end_us = _with_startup(src, tmp_path / "startup.json.gz")
    ctx = load_context(path)
    (rd,) = ctx.ranks
    (step,) = rd.steps
    assert step.source == "whole-trace"
    assert step.start_ns >= int(end_us * 1000) - 1000
    assert step.end_ns == plain.steps[0].end_ns
    assert rd.meta["clock"]["startup_ms"] == pytest.approx(sum(d for _, d in _STARTUP) / 1e3, rel=0.01)
    (notice,) = [n for n in ctx.notices if "start-up took" in n]
    assert "the whole-trace step begins after it" in notice and "cuInit" in notice
    # the step: the recorded trace and the gap between the last set-up call and its first event
    report = build_report(path)
    assert report["summary"]["step_time_ms"]["median"] == pytest.approx(plain.steps[0].wall_ms + GAP_MS, abs=0.01)


def test_startup_before_the_first_step_is_stated(tmp_path: Path) -> None:
    src = cpu_steps_trace()
    plain = load_context(src).ranks[0]
    path, _, _ = _with_startup(src, tmp_path / "steps.json.gz")
    ctx = load_context(path)
    rd = ctx.ranks[0]
    assert [(s.index, s.start_ns, s.end_ns) for s in rd.steps] == [(s.index, s.start_ns, s.end_ns) for s in plain.steps]
    (notice,) = [n for n in ctx.notices if "start-up took" in n]
    assert "outside the steps" in notice
    assert rd.meta["clock"]["startup_ms"] > 4000.0
