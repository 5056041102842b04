"""`stallscope report --html` of a run recorded on an H200 (committed: tests/fixtures/gpu/runs/
h200_cnn_memory, made by tests/fixtures/record_gpu_runs.sh): every view a TensorBoard-profiler or
HTA user looks for is drawn from the GPU run's own data. The report is rendered here on the CPU."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from stallscope.analyzers.html import SECTION_IDS  # noqa: E402

RUN = Path(__file__).parent / "fixtures" / "gpu" / "runs" / "h200_cnn_memory"


@pytest.fixture(scope="module")
def html(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("h200-html") / "report.html"
    res = subprocess.run(
        [sys.executable, "-m", "stallscope.cli", "report", str(RUN), "--html", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return out.read_text()


def _section(page: str, view: str) -> str:
    found = re.search(rf"<section id=[\"']{SECTION_IDS[view]}[\"'][^>]*>(.*?)</section>", page, re.S)
    assert found, f"no section {SECTION_IDS[view]}"
    return found.group(1)


def _cells(sec: str) -> list[list[str]]:
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", sec, re.S)]


def test_top_cpu_ops_come_from_the_gpu_runs_threads(html: str) -> None:
    rows = [r for r in _cells(_section(html, "cpu_ops")) if r]
    assert len(rows) >= 5
    roles = {r[1] for r in rows}
    assert {"loop", "autograd"} <= roles  # the backward ran on the autograd engine's thread
    assert any("convolution" in r[0] for r in rows)


def test_modules_view_reads_the_module_ranges(html: str) -> None:
    rows = [r for r in _cells(_section(html, "modules")) if r]
    assert rows and all(float(r[3]) > 0 for r in rows)  # forward ms per step


def test_memory_view_draws_the_allocator_samples_of_the_memory_run(html: str) -> None:
    sec = _section(html, "memory")
    assert "<svg" in sec and "allocated" in sec and "reserved" in sec


def test_host_cpu_view_draws_host_csv(html: str) -> None:
    sec = _section(html, "host")
    with (RUN / "rank0" / "host.csv").open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) > 20
    assert "<svg" in sec and "process CPU" in sec


def test_step_chart_is_on_the_runs_step_numbers(html: str) -> None:
    sec = _section(html, "steps")
    ticks = re.findall(r"<g id=[\"']xtick_\d+[\"']>.*?<text[^>]*>([^<]*)</text>", sec, re.S)
    with (RUN / "rank0" / "steps.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    steps = [int(r["step"]) for r in rows]
    last_window = max(int(r["step"]) for r in rows if r["in_window"] == "1")
    assert len(ticks) >= 3 and all(re.fullmatch(r"\d+", t) for t in ticks), ticks
    assert last_window < min(map(int, ticks)) and max(map(int, ticks)) <= max(steps)


def test_streams_view_names_the_gpu_stream(html: str) -> None:
    rows = [r for r in _cells(_section(html, "streams")) if r]
    assert rows and any("stream" in r[0] for r in rows)
