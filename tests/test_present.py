"""HTML report, compare and the annotated trace, on real CPU traces recorded here."""
from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stallscope.analyzers.render import nothing_found

ROOT = Path(__file__).resolve().parents[1]

RECORD = r'''
import sys, time, torch, torch.nn as nn
torch.set_num_threads(1)  # steady compute on a loaded machine
from torch.profiler import profile, schedule, ProfilerActivity
out, slow = sys.argv[1], float(sys.argv[2])
torch.manual_seed(0)
DATA = torch.randn(2048, 256)
class DS(torch.utils.data.Dataset):
    def __len__(self): return 2048
    def __getitem__(self, i):
        if slow:
            end = time.perf_counter() + slow
            while time.perf_counter() < end: pass
        return DATA[i], i % 10
m = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
opt = torch.optim.SGD(m.parameters(), lr=0.1)
dl = torch.utils.data.DataLoader(DS(), batch_size=32)
if not slow:  # the fixed loop: batches prepared ahead of the step (no per-step input work)
    dl = [(DATA[i:i + 32], torch.arange(i, i + 32) % 10) for i in range(0, 32 * 16, 32)]
with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=1, active=12, repeat=1), record_shapes=True,
             on_trace_ready=lambda pr: pr.export_chrome_trace(out)) as p:
    for i, (x, y) in enumerate(dl):
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad(); loss.backward(); opt.step(); p.step()
        if i >= 14: break
'''


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("present")
    out = {}
    # 32 samples x 4 ms of busy input work a step: the slow loop waits ~130 ms for data, far more
    # than the MLP step computes even on a loaded 2-core machine, so the compare is decided by design.
    for name, slow in (("slow", "0.004"), ("fast", "0")):
        path = tmp / f"{name}.json"
        subprocess.run([sys.executable, "-c", RECORD, str(path), slow], check=True, timeout=180)
        out[name] = path
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stallscope.cli", *args], capture_output=True, text=True, timeout=180)


def test_html_report_is_self_contained_with_charts(traces: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "report.html"
    proc = _cli("report", str(traces["slow"]), "--html", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert text.count("<svg") >= 2
    # Charts hold data: bars of the breakdown are SVG paths, the step-time line has points.
    assert len(re.findall(r"<path ", text)) > 20
    assert "Loop waits" in text or "DataLoader" in text
    external = [u for u in re.findall(r'(?:src|href)="([^"#]+)"', text) if not u.startswith("data:")]
    assert external == [], external


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)")
def test_html_report_opens_in_headless_chromium(traces: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "report.html"
    assert _cli("report", str(traces["slow"]), "--html", str(out)).returncode == 0
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--window-size=1200,1600"]
    proc = subprocess.run(["chromium", *flags, f"--screenshot={shot}", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line or "Failed to load resource" in line]
    assert console == [], console
    dom = subprocess.run(["chromium", *flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<svg") >= 2 and "<path" in dom
    assert "<h2>Top CPU ops</h2>" in dom and "aten::addmm" in dom  # the MLP's matmuls are among its top ops


def test_compare_shows_speedup_and_resolved_finding(traces: dict[str, Path]) -> None:
    from stallscope.analyzers.compare import compare_reports
    from stallscope.analyzers.inputs import open_report

    before, _ = open_report(traces["slow"])
    after, _ = open_report(traces["fast"])
    cmp = compare_reports(before, after)
    assert cmp.step_time["speedup"] > 1.3
    assert cmp.step_time["verdict"] == "faster"
    assert any(f["id"].startswith("input-pipeline") for f in cmp.findings["resolved"])
    md = cmp.to_markdown()
    assert "Findings resolved" in md and "faster" in md
    proc = _cli("compare", str(traces["slow"]), str(traces["fast"]), "-f", "yaml")
    assert proc.returncode == 0, proc.stderr
    import yaml

    data = yaml.safe_load(proc.stdout)
    assert data["kind"] == "stallscope-comparison" and data["step_time"]["speedup"] > 1.3
    # two traces: the op-level diff; the slow loop's DataLoader collates with aten::stack, the
    # fixed loop has its batches ready, so that op is gone in B
    assert data["trace_diff"]["counts"]["ops"]["removed"] >= 1
    from stallscope.analyzers.views import trace_diff

    full = trace_diff(open_report(traces["slow"]).context, open_report(traces["fast"]).context, limit=500)
    removed = {r["name"] for r in full["ops"] if r["status"] == "removed"}
    assert "aten::stack" in removed, full["ops"][:10]
    console = _cli("compare", str(traces["slow"]), str(traces["fast"]))
    assert console.returncode == 0 and "trace diff, CPU ops" in console.stdout


def test_annotated_trace_is_valid_chrome_trace(traces: dict[str, Path], tmp_path: Path) -> None:
    from stallscope.analyzers.annotate import FINDINGS_PID, write_annotated_trace
    from stallscope.analyzers.context import load_context
    from stallscope.analyzers.report import report_from_context

    ctx = load_context(traces["slow"])
    report = report_from_context(ctx)
    out = write_annotated_trace(ctx, report, tmp_path / "annotated.json.gz")
    data = json.loads(gzip.decompress(out.read_bytes()))
    events = data["traceEvents"]
    original = json.loads(traces["slow"].read_text())["traceEvents"]
    assert len(events) > len(original)
    for e in events:
        assert isinstance(e.get("ph"), str) and "pid" in e
        if e["ph"] in ("X", "i"):
            assert isinstance(e["ts"], (int, float))
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0
    ours = [e for e in events if e.get("pid") == FINDINGS_PID and e["ph"] == "X"]
    assert {e["args"]["id"] for e in ours} == {f["id"] for f in report["findings"]}
    # Our own loader reads it back, findings track included.
    again = load_context(out)
    assert len(again.ranks[0].events) > len(ctx.ranks[0].events)


def test_report_of_a_missing_target_is_one_line(tmp_path: Path) -> None:
    proc = _cli("report", str(tmp_path / "nope"), "--html", str(tmp_path / "x.html"))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.html").exists()


def test_nothing_found_says_what_was_looked_at(tmp_path):
    """A run whose window was never reached is not 'no bottleneck': it says nothing was analysed
    and what to change; a trace without findings names the steps and analyzers it looked at."""
    script = tmp_path / "short.py"
    script.write_text(
        "import torch\n"
        "m = torch.nn.Linear(16, 16); opt = torch.optim.SGD(m.parameters(), lr=0.01); x = torch.randn(8, 16)\n"
        "for _ in range(8):\n"
        "    m(x).sum().backward(); opt.step(); opt.zero_grad()\n"
    )
    run = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "stallscope.cli", "profile", "-o", str(run), "--skip", "40", "--", sys.executable,
         str(script)],
        capture_output=True, text=True, timeout=240,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    screen = " ".join((res.stdout + res.stderr).split())
    assert "nothing analysed: no step of the run was traced" in screen and "lower --skip" in screen
    assert "no bottleneck" not in screen
    report = {"summary": {"steps": 3, "step_time_ms": {"median": 12.0}}, "source": {"kind": "trace"},
              "analyzers": {"ran": ["compile", "input-pipeline"], "skipped": {"precision": ["gpu"]}}}
    line = nothing_found(report)
    assert "3 traced steps" in line and "2 analyzers ran (compile, input-pipeline)" in line
    assert "could not run: precision" in line


VIEWS = r'''
import sys, torch, torch.nn as nn
from torch.profiler import profile, schedule, ProfilerActivity
torch.set_num_threads(1)
class Heavy(nn.Module):
    def forward(self, x):
        return (x @ x.T).relu() @ x
class Net(nn.Module):
    def __init__(self):
        super().__init__(); self.light = nn.Linear(256, 256); self.heavy = Heavy()
    def forward(self, x):
        return self.heavy(self.light(x))
m, x = Net(), torch.randn(512, 256)
with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=1, active=4, repeat=1), with_stack=True,
             profile_memory=True, on_trace_ready=lambda pr: pr.export_chrome_trace(sys.argv[1])) as p:
    for _ in range(5):
        keep = torch.ones(4, 2**20)  # 16 MB held through the step
        m(x).sum().backward(); del keep; p.step()
'''


def test_report_views_in_yaml_markdown_and_html(tmp_path: Path) -> None:
    """Top CPU ops, time per module and the memory view reach every renderer of the report."""
    pytest.importorskip("matplotlib")
    trace = tmp_path / "views.json"
    subprocess.run([sys.executable, "-c", VIEWS, str(trace)], check=True, timeout=180)
    proc = _cli("diagnose", str(trace), "-f", "yaml")
    assert proc.returncode == 0, proc.stderr
    import yaml

    views = yaml.safe_load(proc.stdout)["views"]
    assert views["cpu_ops"]["rows"] and views["cpu_ops"]["rows"][0]["self_ms_per_step"] > 0
    modules = {r["module"].split("_")[0]: r for r in views["modules"]["rows"]}
    assert modules["Heavy"]["forward_ms_per_step"] > modules["Linear"]["forward_ms_per_step"]  # two big matmuls
    assert max(s["peak_allocated_mb"] for s in views["memory"]["steps"]) >= 16
    md = _cli("diagnose", str(trace), "-f", "md").stdout
    assert "## Views" in md and "top cpu ops" in md.lower()
    page = tmp_path / "r.html"
    assert _cli("report", str(trace), "--html", str(page)).returncode == 0
    text = page.read_text()
    assert all(f"<h2>{t}</h2>" in text for t in ("Top CPU ops", "Time per module", "Memory"))
    assert ">False<" not in text and ">True<" not in text  # flags read yes/no


def test_html_draws_the_host_samples_of_a_run(tmp_path: Path) -> None:
    """host.csv (process CPU, RSS) becomes a chart in the run's HTML report."""
    pytest.importorskip("matplotlib")
    script = tmp_path / "t.py"
    script.write_text(
        "import torch, time\n"
        "m = torch.nn.Linear(64, 64); opt = torch.optim.SGD(m.parameters(), lr=0.01); x = torch.randn(32, 64)\n"
        "for _ in range(14):\n"
        "    m(x).sum().backward(); opt.step(); opt.zero_grad(); time.sleep(0.05)\n"
    )
    run = tmp_path / "run"
    res = _cli("profile", "-q", "--no-diagnose", "-o", str(run), "--skip", "2", "--steps", "2", "--", sys.executable, str(script))
    assert res.returncode == 0, res.stderr[-2000:]
    assert (run / "rank0" / "host.csv").is_file()
    page = tmp_path / "r.html"
    assert _cli("report", str(run), "--html", str(page)).returncode == 0
    text = page.read_text()
    section = text.split("<h2>Host CPU and memory (host.csv)</h2>", 1)
    assert len(section) == 2 and "<svg" in section[1].split("</section>", 1)[0]
