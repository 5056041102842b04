"""Traces from the wild: every Kineto schema PyTorch >= 1.8 wrote, ROCm, MTIA and HTA's folders.

The fixtures are real traces from other projects' data, trimmed by
tests/fixtures/trim_public_traces.py (sources, commits and licences in
tests/fixtures/public/README.md). What each test expects was read from the trace itself: the
resnet50 sample was recorded with ``num_workers=0``, so the training loop loads every batch
itself (``enumerate(DataLoader)`` ranges of 55-70 ms in 175 ms steps), and kernels, copies and
launches are all there under capitalised categories.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stallscope.analyzers.breakdown import breakdown_pct
from stallscope.analyzers.context import load_context
from stallscope.analyzers.model import GPU_KINDS, Kind
from stallscope.analyzers.report import build_report
from stallscope.analyzers.vocab import is_sync_call
from tests.diagnose_traces import cpu_steps_trace

PUBLIC = Path(__file__).resolve().parent / "fixtures" / "public"
PT19 = PUBLIC / "kineto_resnet50_nw0_pt19.pt.trace.json.gz"
PT18 = PUBLIC / "kineto_resnet50_nw0_pt18.pt.trace.json.gz"
ROCM = PUBLIC / "hta_rocm62_mi250.json.gz"
MTIA = PUBLIC / "hta_mtia_inference.json.gz"
SAMPLED = PUBLIC / "hta_sampled_2_of_128"


def _doc(path: Path) -> dict | list:
    with gzip.open(path, "rt") as fh:
        return json.load(fh)


def _events(doc: dict | list) -> list[dict]:
    return doc if isinstance(doc, list) else doc["traceEvents"]


def _write(path: Path, doc: dict | list) -> Path:
    with gzip.open(path, "wt") as fh:
        json.dump(doc, fh)
    return path


@pytest.mark.parametrize("path,steps", [(PT19, 2), (PT18, 1)])
def test_pytorch_18_and_19_traces_load_with_steps_kernels_and_links(path: Path, steps: int) -> None:
    raw = _events(_doc(path))
    assert {e.get("cat") for e in raw} >= {"Operator", "Runtime", "Kernel"}, "the fixture keeps the old spelling"
    ctx = load_context(path)
    (rd,) = ctx.ranks
    ev = rd.events
    assert [s.source for s in rd.steps] == ["ProfilerStep"] * steps
    kernels = ev.rows_of_kind(Kind.KERNEL)
    assert kernels.size == sum(1 for e in raw if e.get("cat") == "Kernel")
    assert ctx.has("gpu") and ctx.has("shapes")
    # every kernel is linked to its cudaLaunchKernel, and through "external id" to its op
    assert np.all(ev.launch_of[kernels] >= 0)
    assert np.mean(ev.op_of[kernels] >= 0) > 0.9
    # PyTorch 1.8/1.9 write CPU tids as text ("25738"): read as the same thread number
    cpu = ev.rows_of_kind(Kind.CPU_OP)
    want = {int(e["tid"]) for e in raw if e.get("cat") == "Operator"}
    assert set(np.unique(ev.tid[cpu]).tolist()) == want
    assert rd.meta["clock"]["gpu_usable"] is True
    assert not any("no GPU events" in n for n in ctx.notices)


@pytest.mark.parametrize("path", [PT19, PT18])
def test_old_schema_dataloader_bound_resnet_gets_an_input_pipeline_finding(path: Path) -> None:
    ctx = load_context(path)
    share = breakdown_pct(ctx.ranks[0].breakdown)["data_wait_pct"]
    # the loop loads every batch itself: a third of each step (30-37 % measured)
    assert share > 15.0
    report = build_report(path)
    ids = [f["id"] for f in report["findings"]]
    assert "input-pipeline-data-wait" in ids
    top = next(f for f in report["findings"] if f["id"] == "input-pipeline-data-wait")
    assert top["severity"] in ("medium", "high")
    assert report["summary"]["gpu_events"] is True


def test_category_letter_case_does_not_matter(tmp_path: Path) -> None:
    """The same real trace with every category upper-cased loads into the same table."""
    src = cpu_steps_trace()
    doc = json.loads(Path(src).read_text())
    for e in doc["traceEvents"]:
        if isinstance(e.get("cat"), str):
            e["cat"] = e["cat"].upper()
    upper = tmp_path / "upper.json"
    upper.write_text(json.dumps(doc))
    a, b = load_context(src).ranks[0], load_context(upper).ranks[0]
    assert a.events.names == b.events.names
    for col in ("kind", "name", "ts_ns", "dur_ns", "tid", "step"):
        assert np.array_equal(getattr(a.events, col), getattr(b.events, col)), col
    assert [(s.index, s.start_ns, s.end_ns) for s in a.steps] == [(s.index, s.start_ns, s.end_ns) for s in b.steps]


def test_rocm_trace_reads_hip_launches_and_blocking_hip_calls() -> None:
    ctx = load_context(ROCM)
    (rd,) = ctx.ranks
    ev = rd.events
    gpu = ev.gpu_rows()
    assert ctx.has("gpu") and gpu.size == 16  # 14 kernels and 2 copies on the MI250
    launches = {ev.name_of(int(r)) for r in ev.launch_of[gpu]}
    assert launches == {"hipLaunchKernel", "hipExtModuleLaunchKernel", "hipMemcpyWithStream"}
    assert is_sync_call("hipMemcpyWithStream") and is_sync_call("hipDeviceSynchronize")
    # the host blocks in hipMemcpyWithStream / hipDeviceSynchronize while the GPU is idle
    assert sum(b.sync_wait_ms for b in rd.breakdown) > 0
    assert rd.meta["clock"]["gpu_usable"] is True


def test_mtia_trace_has_device_rows_copies_and_links() -> None:
    raw = _events(_doc(MTIA))
    device = [e for e in raw if e.get("cat") == "mtia_ccp_events"]
    ctx = load_context(MTIA)
    ev = ctx.ranks[0].events
    assert ctx.has("gpu")
    kernels = ev.rows_of_kind(Kind.KERNEL)
    copies = ev.rows_of_kind(Kind.MEMCPY)
    assert {ev.name_of(int(r)) for r in copies} == {"dma_request"}
    assert copies.size == sum(1 for e in device if e["name"] == "dma_request")
    # stream waits and event records are no device work
    assert not {"event_wait", "event_record"} & {ev.name_of(int(r)) for r in kernels}
    linked = ev.launch_of[np.concatenate([kernels, copies])]
    assert np.mean(linked >= 0) > 0.5
    assert {ev.name_of(int(r)) for r in linked[linked >= 0]} <= {
        n for n in ev.names if n.startswith(("runFunction", "enqueueCommand", "recordEvent"))
    }


def test_unknown_schema_says_what_it_found(tmp_path: Path) -> None:
    doc = _doc(ROCM)
    for e in _events(doc):
        if e.get("ph") == "X" and e.get("cat") != "Trace":
            e["cat"] = "vendor_" + str(e.get("cat"))
    ctx = load_context(_write(tmp_path / "renamed.json.gz", doc))
    (notice,) = [n for n in ctx.notices if "no event category stallscope reads" in n]
    assert "vendor_kernel" in notice and "vendor_cpu_op" in notice


def test_launches_without_gpu_events_name_what_is_missing(tmp_path: Path) -> None:
    """ProfilerActivity.CUDA off: the host launched kernels, the trace has none of them."""
    doc = _doc(ROCM)
    doc["traceEvents"] = [
        e for e in _events(doc) if e.get("cat") not in ("kernel", "gpu_memcpy", "gpu_user_annotation")
    ]
    ctx = load_context(_write(tmp_path / "no_gpu.json.gz", doc))
    assert not ctx.has("gpu")
    (notice,) = [n for n in ctx.notices if "GPU figures are absent" in n]
    assert "GPU launches or copies on the host but no GPU events" in notice


def test_hta_folder_of_sampled_ranks(tmp_path: Path) -> None:
    ctx = load_context(SAMPLED)
    assert [r.rank for r in ctx.ranks] == [0, 1]
    assert all(np.isin(r.events.kind, np.asarray(GPU_KINDS, dtype=np.int8)).any() for r in ctx.ranks)
    assert any("traces of 2 ranks (0, 1) of the job's 128 ranks" in n for n in ctx.notices)
    # ranks come from distributedInfo.rank, not the file names: swapped names keep the ranks
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    shutil.copy(SAMPLED / "sampled_rank-0.json.gz", swapped / "trace_b.json.gz")
    shutil.copy(SAMPLED / "sampled_rank-1.json.gz", swapped / "trace_a.json.gz")
    by_rank = {r.rank: Path(r.trace_path or "").name for r in load_context(swapped).ranks}
    assert by_rank == {0: "trace_b.json.gz", 1: "trace_a.json.gz"}
