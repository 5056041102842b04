"""Thread roles (analyzers/roles.py) on real traces, and the analyzers that ask for them.

The expected roles come from the trace files themselves, read here without our loader: the loop
is the thread that holds the ``ProfilerStep#N`` ranges, the autograd engine's thread and gloo's
run-loop threads are the ones Kineto's ``thread_name`` metadata calls ``pt_autograd_N`` and
``pt_gloo_runloop`` (the roles are derived from ops only, so the names are an independent check).

Regression (issue 17, failure kind 2): "the thread with the most ops" was taken for the loop; in
traces where backward runs on the engine's thread that is the engine, and a GPU gap in which the
loop thread ran a blocking copy, or waited in ``backward()`` for DDP's collective, was blamed on
"the host computes a metric in Python".
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stallscope.analyzers.base import Severity
from stallscope.analyzers.context import load_context
from stallscope.analyzers.model import Kind
from stallscope.analyzers.roles import ROLES, thread_roles
from stallscope.analyzers.views.cpu_ops import top_cpu_ops
from tests.analyzer_traces import GPU_FIXTURES, run

AT_LEAST_MEDIUM = (Severity.MEDIUM, Severity.HIGH)


def _trace_files(target: Path) -> list[Path]:
    if target.is_file():
        return [target]
    return sorted(p for p in target.rglob("*.json.gz"))


def _truth(path: Path) -> dict[str, Any]:
    """What the raw trace says: the step ranges' thread and the threads Kineto named."""
    with gzip.open(path, "rt") as fh:
        doc = json.load(fh)
    steps: Counter[int] = Counter()
    names: dict[int, set[str]] = {}
    for e in doc["traceEvents"]:
        if e.get("ph") == "X" and str(e.get("name", "")).startswith("ProfilerStep#"):
            steps[int(e["tid"])] += 1
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            names.setdefault(int(e["tid"]), set()).add(str(e["args"]["name"]))
    named = lambda word: sorted(t for t, ns in names.items() if any(word in n for n in ns))  # noqa: E731
    return {"loop": steps.most_common(1)[0][0], "autograd": named("pt_autograd"), "gloo": named("pt_gloo_runloop")}


def _ops_per_thread(ctx: Any, rank: int = 0) -> Counter[int]:
    ev = ctx.ranks[rank].events
    ops = ev.rows_of_kind(Kind.CPU_OP)
    return Counter(int(t) for t in ev.tid[ops])


def _gpu(name: str) -> Path:
    path = GPU_FIXTURES / name
    if not path.exists():
        pytest.skip(f"GPU fixture {name} not recorded yet")
    return path


def _metric_findings(ctx: Any) -> list[Any]:
    return [f for f in run("cpu-metric", ctx) if f.severity in AT_LEAST_MEDIUM]


# ------------------------------------------------------------------------------- GPU fixtures

# Real H200 traces whose backward ran on the autograd engine's thread (CUDA tensors).
ENGINE_TRACES = [
    "train.pt.trace.json.gz",
    "grkan_fast.json.gz",
    "grkan_baseline.json.gz",
    "healthy_bf16_mlp.json.gz",
    "ddp",
    "runs/healthy_cnn",
]


@pytest.mark.parametrize("name", ENGINE_TRACES)
def test_roles_on_h200_traces_match_what_the_trace_says(name: str) -> None:
    target = _gpu(name)
    ctx = load_context(target)
    files = _trace_files(target)
    assert len(files) == len(ctx.ranks)
    for rd, path in zip(sorted(ctx.ranks, key=lambda r: r.trace_path or ""), files, strict=True):
        truth = _truth(Path(rd.trace_path or path))
        roles = rd.roles
        assert roles.loop == truth["loop"], roles.evidence
        assert roles.tids("autograd") == truth["autograd"], roles.evidence
        assert roles.tids("comm") == truth["gloo"], roles.evidence
        assert set(roles.by_tid.values()) <= set(ROLES)
        assert roles.role(truth["loop"]) == "loop" and roles.role(-12345) == "other"


@pytest.mark.parametrize("name", ["grkan_fast.json.gz", "ddp", "runs/healthy_cnn"])
def test_the_engine_thread_has_the_most_ops_but_is_not_the_loop(name: str) -> None:
    ctx = load_context(_gpu(name))
    for i, rd in enumerate(ctx.ranks):
        busiest = _ops_per_thread(ctx, i).most_common(1)[0][0]
        assert rd.roles.role(busiest) == "autograd"
        assert rd.roles.loop != busiest


@pytest.mark.parametrize("name", ["runs/healthy_cnn", "ddp"])
def test_loop_thread_host_work_is_not_blamed_on_a_python_metric(name: str) -> None:
    """Kind 2 of issue 17. healthy_cnn: a healthy run (the scenario's "must not be reported")
    whose loop thread runs a blocking 3 ms host-to-device ``aten::to`` at the start of a step and
    then waits in ``backward()`` while the engine's thread runs a 12 ms batch-norm backward; ddp:
    the loop waits in ``backward()`` while gloo's run-loop threads all-reduce the gradients. There
    is no metric code in either; the old rule read the engine's thread and reported a
    cpu-metric finding (20 % medium, 61 % high)."""
    ctx = load_context(_gpu(name))
    assert _metric_findings(ctx) == []


def test_kan_benchmark_launch_gaps_are_not_a_python_metric() -> None:
    """grkan_fast: a KAN layer benchmark with ~1 ms steps and no device-to-host copy at all; its
    0.1-0.3 ms GPU gaps are launch latency and the engine's hand-off. The old rule took every
    ``aten::to`` for a readback and reported "CPU work after a device-to-host copy", 50 % high."""
    ctx = load_context(_gpu("grkan_fast.json.gz"))
    ev = ctx.ranks[0].events
    assert ev.rows_named(lambda s: "DtoH" in s, Kind.MEMCPY).size == 0
    assert _metric_findings(ctx) == []


def test_loop_host_ops_after_a_readback_are_not_a_metric() -> None:
    """roles_loop_host_work (tests/fixtures/make_thread_roles_traces_gpu.py): after ``loss.item()``
    the loop thread runs torch ops on CPU tensors and the optimizer while the GPU idles; the
    engine's thread records more ops than the loop."""
    ctx = load_context(_gpu("roles_loop_host_work.json.gz"))
    rd = ctx.ranks[0]
    busiest = _ops_per_thread(ctx).most_common(1)[0][0]
    assert rd.roles.role(busiest) == "autograd"
    assert _metric_findings(ctx) == []


def test_python_metric_after_a_readback_is_still_found_on_the_loop_thread() -> None:
    """roles_bleu_readback: ``.tolist()`` of the sampled tokens, then a per-sentence Python BLEU
    on the loop thread with the GPU idle, no stacks: the readback-then-silence signature."""
    ctx = load_context(_gpu("roles_bleu_readback.json.gz"))
    found = _metric_findings(ctx)
    assert len(found) == 1 and found[0].fixes == ["tensorbleu"]
    assert found[0].evidence["gaps_after_device_to_host"] >= len(ctx.ranks[0].steps)


def test_cpu_ops_view_groups_by_the_model_roles() -> None:
    ctx = load_context(_gpu("ddp"))
    rows = top_cpu_ops(ctx, limit=500)
    by_role = {(r["name"], r["role"]) for r in rows}
    assert ("aten::copy_", "comm") in by_role  # gloo's run-loop copies the bucket to the host
    assert any(role == "autograd" and "Backward" in n for n, role in by_role)
    assert ("aten::linear", "loop") in by_role


# ------------------------------------------------------------------------- CPU traces recorded here


@pytest.fixture(scope="module")
def ddp_cpu_traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CPU training loop under DDP on gloo (one rank): forward, backward, optimizer and a
    DataLoader on the loop thread, gloo's all-reduce and buffer broadcast on its run-loop threads.
    Recorded three ways: with ProfilerStep ranges, without steps, and forward/backward only."""
    torch = pytest.importorskip("torch")
    dist = pytest.importorskip("torch.distributed")
    from torch.profiler import ProfilerActivity, profile, schedule

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialized in this process")
    tmp = tmp_path_factory.mktemp("roles")
    dist.init_process_group("gloo", init_method=f"file://{tmp / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 1))
        model = torch.nn.parallel.DistributedDataParallel(net)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        data = torch.utils.data.TensorDataset(torch.randn(512, 64))
        batches = iter(torch.utils.data.DataLoader(data, batch_size=32, num_workers=0))

        def step(optimize: bool = True) -> None:
            (x,) = next(batches)
            model(x).pow(2).mean().backward()
            if optimize:
                opt.step()
                opt.zero_grad()

        out = {}
        with profile(
            activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=1, active=3, repeat=1)
        ) as prof:
            for _ in range(4):
                step()
                prof.step()
        prof.export_chrome_trace(str(tmp / "steps.json"))
        out["steps"] = tmp / "steps.json"
        for name, optimize in (("nosteps", True), ("bare", False)):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    step(optimize)
            prof.export_chrome_trace(str(tmp / f"{name}.json"))
            out[name] = tmp / f"{name}.json"
        return out
    finally:
        dist.destroy_process_group()


def _truth_plain(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    threads: dict[int, set[str]] = {}
    main = None
    for e in doc["traceEvents"]:
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            threads.setdefault(int(e["tid"]), set()).add(str(e["args"]["name"]))
        if e.get("ph") == "X" and str(e.get("name", "")).startswith("aten::linear"):
            main = int(e["tid"])  # the forward runs on the thread that called the model
    gloo = sorted(t for t, ns in threads.items() if any("pt_gloo_runloop" in n for n in ns))
    return {"main": main, "gloo": gloo}


@pytest.mark.parametrize("variant", ["steps", "nosteps", "bare"])
def test_cpu_ddp_loop_and_gloo_threads(ddp_cpu_traces: dict[str, Path], variant: str) -> None:
    """On the CPU the engine runs the backward on the calling thread, so the loop thread holds
    the forward, the backward (``evaluate_function`` ranges) and the optimizer; gloo's run-loop
    threads are communication. With steps the loop is the step thread; without, the thread with
    the optimizer's ranges; with neither, the thread whose work outside backward spans most."""
    path = ddp_cpu_traces[variant]
    truth = _truth_plain(path)
    ctx = load_context(path)
    roles = ctx.ranks[0].roles
    assert truth["gloo"], "gloo's run-loop threads recorded nothing"
    assert roles.loop == truth["main"], roles.evidence
    assert roles.tids("comm") == truth["gloo"], roles.evidence
    assert roles.tids("autograd") == []
    assert thread_roles(ctx.ranks[0].events) is roles  # one classification per table
    if variant == "steps":
        assert "step ranges" in roles.evidence[roles.loop]
    elif variant == "nosteps":
        assert "optimizer" in roles.evidence[roles.loop]


def test_cpu_prefetch_thread_is_the_dataloader_not_the_loop(tmp_path: Path) -> None:
    """A thread that fills a queue from a DataLoader, started before the profiler: with Python
    stacks the profiler records its frames (``torch/utils/data/...``) under its own thread id,
    and it calls ``__next__`` far more often than the loop; the loop is the thread that takes
    the batches and steps."""
    torch = pytest.importorskip("torch")
    import queue
    import threading

    from torch.profiler import ProfilerActivity, profile, schedule

    lin = torch.nn.Linear(64, 64)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(torch.randn(4096, 64))
    ready: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def prefetch() -> None:
        for (batch,) in torch.utils.data.DataLoader(data, batch_size=32, num_workers=0):
            while not stop.is_set():
                try:
                    ready.put(batch, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return

    worker = threading.Thread(target=prefetch, daemon=True)
    worker.start()
    ready.get()  # the thread is running before the profiler starts
    try:
        with profile(
            activities=[ProfilerActivity.CPU],
            schedule=schedule(wait=0, warmup=1, active=3, repeat=1),
            with_stack=True,
        ) as prof:
            for _ in range(4):
                lin(ready.get()).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
                prof.step()
        prof.export_chrome_trace(str(tmp_path / "prefetch.json"))
    finally:
        stop.set()
        worker.join(timeout=5)
    roles = load_context(tmp_path / "prefetch.json").ranks[0].roles
    assert roles.loop == threading.get_native_id(), roles.evidence
    assert roles.role(worker.native_id) == "dataloader", roles.evidence
