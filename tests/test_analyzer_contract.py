"""Every registered analyzer: runs on an empty, a CPU-only and a GPU trace without raising, and
returns findings that serialize into the report schema."""
from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from stallscope.analyzers.base import CATEGORIES, Analyzer, Finding, registered_analyzers
from stallscope.analyzers.context import load_context
from stallscope.analyzers.report import schema
from stallscope.analyzers.run import run_analyzers
from tests.diagnose_traces import cpu_steps_trace, ddp_folder, empty_trace, gpu_fixture

ANALYZERS = sorted(registered_analyzers())


def _contexts(tmp_path: Path) -> dict:
    out = {"empty": load_context(empty_trace(tmp_path)), "cpu": load_context(cpu_steps_trace()), "cpu-ddp": load_context(ddp_folder())}
    for name in ("train.pt.trace.json.gz", "tiny_kernels.pt.trace.json.gz"):
        p = gpu_fixture(name)
        if p is not None:
            out[f"gpu:{name}"] = load_context(p)
    return out


def test_registry_has_the_shipped_analyzers() -> None:
    assert {"input-pipeline", "host-bound"} <= set(ANALYZERS)


@pytest.mark.parametrize("name", ANALYZERS)
def test_analyzer_contract(name: str, tmp_path: Path) -> None:
    cls = registered_analyzers([name])[name]
    assert issubclass(cls, Analyzer) and cls.name == name
    finding_schema = {**schema()["$defs"]["finding"], "$defs": schema()["$defs"]}
    for label, ctx in _contexts(tmp_path).items():
        found = cls().analyze(ctx)  # directly, even when its requirements are missing
        assert isinstance(found, list), label
        for f in found:
            assert isinstance(f, Finding), label
            assert f.category in CATEGORIES
            jsonschema.validate(f.to_dict(), finding_schema)


def test_gpu_trace_present_or_skip() -> None:
    if gpu_fixture("train.pt.trace.json.gz") is None:
        pytest.skip("GPU fixtures not recorded yet: run tests/fixtures/make_gpu_traces.py on a GPU machine")


def test_runner_skips_and_isolates_failures(tmp_path: Path) -> None:
    from stallscope.analyzers import base

    @base.register
    class Boom(Analyzer):
        name = "zz-test-boom"
        requires = frozenset({"trace"})

        def analyze(self, ctx):  # noqa: ANN001
            raise RuntimeError("kaput")

    try:
        ctx = load_context(cpu_steps_trace())
        res = run_analyzers(ctx)
        assert "zz-test-boom" in res.failed and "kaput" in res.failed["zz-test-boom"]
        assert any("zz-test-boom failed" in n for n in ctx.notices)
        assert "host-bound" in res.skipped and res.skipped["host-bound"] == ["gpu"]
        assert "input-pipeline" in res.ran
    finally:
        base._REGISTRY.pop("zz-test-boom", None)


def test_forked_workers_give_the_same_findings(monkeypatch) -> None:
    from stallscope.analyzers import base

    @base.register
    class Boom(Analyzer):
        name = "zz-test-boom-forked"
        requires = frozenset({"trace"})

        def analyze(self, ctx):  # noqa: ANN001
            ctx.notices.append("zz note from a worker")
            raise RuntimeError("kaput")

    try:
        monkeypatch.setenv("STALLSCOPE_ANALYZER_WORKERS", "1")
        ctx1 = load_context(cpu_steps_trace())
        one = run_analyzers(ctx1)
        monkeypatch.setenv("STALLSCOPE_ANALYZER_WORKERS", "2")
        ctx2 = load_context(cpu_steps_trace())
        two = run_analyzers(ctx2)
        assert [f.to_dict() for f in one.findings] == [f.to_dict() for f in two.findings]
        assert one.ran == two.ran and one.skipped == two.skipped and set(one.failed) == set(two.failed)
        assert "zz note from a worker" in ctx2.notices
    finally:
        base._REGISTRY.pop("zz-test-boom-forked", None)
