"""Each view of the HTML report, opened at its anchor in headless Chromium: its section is in the
DOM with the run's real content, and its screenshot is a picture of that view.

One real run directory is recorded on the CPU (`stallscope profile --memory --stack` of a small
training script with nn.Modules and a DataLoader) and rendered once with `stallscope report --html`.
Chromium 156's headless mode paints a screenshot scrolled to a fragment blank, so each screenshot
is of the whole page (a window taller than the page), and the view is cut out of it by the outline
that `section:target` draws around the section the link opens (TARGET_COLOUR, used by no chart).
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)"
)

from stallscope.analyzers.html import SECTION_IDS, TARGET_COLOUR  # noqa: E402

SKIP, STEPS, TOTAL = 3, 4, 20
WINDOW = (1200, 5600)  # taller than the report of this run (about 4,500 px): the whole page is painted

TRAIN = f"""
import time
import torch, torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
torch.set_num_threads(1)  # steady on a loaded machine
torch.manual_seed(0)

class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.fc(x)) + x

class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(64, 256)
        self.blocks = nn.Sequential(Block(256), Block(256))
        self.head = nn.Linear(256, 10)

    def forward(self, x):
        return self.head(self.blocks(self.inp(x)))

data = TensorDataset(torch.randn({TOTAL} * 32, 64), torch.randint(0, 10, ({TOTAL} * 32,)))
model = TinyNet()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for x, y in DataLoader(data, batch_size=32):
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    time.sleep(0.05)  # a run long enough for a host.csv series (a sample every 50 ms at most)
"""

VIEWS = ["steps", "host", "memory", "cpu_ops", "modules", "streams", "findings"]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--hide-scrollbars",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stallscope.cli", *args], capture_output=True, text=True, timeout=180)


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["chromium", *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=90
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The run's HTML report: its DOM as Chromium builds it, one screenshot per view, the run's steps."""
    tmp = tmp_path_factory.mktemp("html-views")
    script, run, out = tmp / "train.py", tmp / "run", tmp / "report.html"
    script.write_text(TRAIN)
    prof = _cli(
        "profile",
        "-q",
        "--no-diagnose",
        "--memory",
        "--stack",
        "-o",
        str(run),
        "--skip",
        str(SKIP),
        "--steps",
        str(STEPS),
        "--",
        sys.executable,
        str(script),
    )
    assert prof.returncode == 0, prof.stderr[-2000:]
    rep = _cli("report", str(run), "--html", str(out))
    assert rep.returncode == 0, rep.stderr[-2000:]
    with (run / "rank0" / "steps.csv").open(newline="") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]

    def shot(view: str) -> Path:
        png = tmp / f"{view}.png"
        _chromium(
            tmp / f"profile-{view}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--screenshot={png}",
            f"{out.as_uri()}#{SECTION_IDS[view]}",
        )
        return png

    with ThreadPoolExecutor(3) as pool:  # chromium mostly waits on its own start: three at a time
        dom_job = pool.submit(_chromium, tmp / "profile-dom", "--dump-dom", out.as_uri())
        shots = dict(zip(VIEWS, pool.map(shot, VIEWS), strict=True))
    return {"dom": dom_job.result().stdout, "shots": shots, "steps": steps, "pictures": {}}


def _section(dom: str, view: str) -> str:
    found = re.search(rf'<section id="{SECTION_IDS[view]}"[^>]*>(.*?)</section>', dom, re.S)
    assert found, f"no section {SECTION_IDS[view]} in the DOM"
    return found.group(1)


def _lines(svg: str) -> list[int]:
    """Vertex counts of the SVG's unfilled paths with more than two points: the plotted data
    (axis lines are two points, bars and shaded spans are filled)."""
    out = []
    for attrs in re.findall(r"<path ([^>]*)>", svg):
        d = re.search(r'\bd="([^"]*)"', attrs)
        if d and "fill: none" in attrs:
            n = len(re.findall(r"[ML]", d.group(1)))
            if n > 2:
                out.append(n)
    return out


def _picture(page: dict, view: str) -> np.ndarray:
    """The view's picture, decoded once."""
    if view not in page["pictures"]:
        page["pictures"][view] = _view_picture(page["shots"][view])
    return page["pictures"][view]


def _view_picture(png: Path) -> np.ndarray:
    """The pixels inside the target outline of a full-page screenshot (RGB)."""
    from PIL import Image

    assert png.is_file(), f"chromium wrote no screenshot {png.name}"
    a = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    assert (a[-40:] == a[-1, -1]).all(), "the page is taller than the window: raise WINDOW"
    ring = (a == [int(TARGET_COLOUR[i : i + 2], 16) for i in (1, 3, 5)]).all(-1)
    cols = np.flatnonzero(ring.sum(0) >= 50)  # the outline's left and right edges run down the section
    assert cols.size, "no section outlined: the fragment did not select a section"
    x0, x1 = int(cols.min()), int(cols.max())
    rows = np.flatnonzero(ring[:, x0] & ring[:, x1])
    y0, y1 = int(rows.min()), int(rows.max())
    return a[y0 + 4 : y1 - 3, x0 + 4 : x1 - 3]  # inside the 3-pixel outline


# What each view holds in this run, read from its section of the DOM.
def _check_steps(sec: str, steps: list[int]) -> None:
    ticks = re.findall(r'<g id="xtick_\d+">.*?<text[^>]*>([^<]*)</text>', sec, re.S)
    assert len(ticks) >= 3, ticks
    assert all(re.fullmatch(r"\d+", t) for t in ticks), f"x ticks are not whole step numbers: {ticks}"
    # the samples are steps after the trace window (the steps before it are warm-up, those in it
    # run under the profiler), so every tick is a step of the run past the window; sample indices
    # (0 to the number of samples) would start at 0
    assert SKIP + STEPS <= min(map(int, ticks)) and max(map(int, ticks)) <= max(steps), (ticks, steps)
    assert _lines(sec), "no step-time line"


def _check_host(sec: str, steps: list[int]) -> None:
    assert "process CPU" in sec
    assert _lines(sec), "no host.csv series drawn"


def _check_memory(sec: str, steps: list[int]) -> None:
    assert "<svg" in sec, "no memory chart with --memory"
    assert max(_lines(sec), default=0) > 20, "the allocated line has too few allocator samples"
    table = re.search(r"memory per step.*?</table>", sec, re.S)
    assert table, "no memory-per-step table"
    rows = [int(s) for s in re.findall(r"<tr><td>(\d+)</td>", table.group(0))]
    assert rows == list(range(SKIP, SKIP + STEPS)), rows  # the traced window's steps
    assert "allocations live at the peak" in sec


def _check_cpu_ops(sec: str, steps: list[int]) -> None:
    assert "aten::addmm" in sec or "aten::linear" in sec  # the model's matmuls


def _check_modules(sec: str, steps: list[int]) -> None:
    for name in ("TinyNet_0", "Block_0", "Block_1", "Linear_"):
        assert name in sec, name


def _check_streams(sec: str, steps: list[int]) -> None:
    assert "GPU" in sec and "<table" not in sec  # a CPU run: a note that there is no GPU stream


def _check_findings(sec: str, steps: list[int]) -> None:
    assert "<details" in sec or 'class="muted"' in sec  # findings, or what was looked at without one


CHECKS = {
    "steps": _check_steps,
    "host": _check_host,
    "memory": _check_memory,
    "cpu_ops": _check_cpu_ops,
    "modules": _check_modules,
    "streams": _check_streams,
    "findings": _check_findings,
}


@pytest.mark.parametrize("view", VIEWS)
def test_view_in_dom_and_screenshot(page: dict, view: str) -> None:
    dom = page["dom"]
    sec = _section(dom, view)
    nav = re.search(r'<nav class="toc">(.*?)</nav>', dom, re.S)
    assert nav and f'href="#{SECTION_IDS[view]}"' in nav.group(1), "the view is not in the table of contents"
    CHECKS[view](sec, page["steps"])

    pic = _picture(page, view)
    assert pic.shape[0] > 40 and pic.shape[1] > 600, pic.shape
    # A blank section is one flat colour (standard deviation 0). Dark text on white over 1 % of
    # the pixels already gives a standard deviation above 10 grey levels; 5 is far from both.
    grey = pic.mean(-1)
    assert grey.std() > 5, f"the {view} view's picture is blank (std {grey.std():.2f})"
    for other in VIEWS:
        if other != view:
            o = _picture(page, other)
            assert o.shape != pic.shape or not np.array_equal(o, pic), f"{view} and {other} look the same"


def test_links_point_at_sections(page: dict) -> None:
    """Every link of the table of contents opens a section of the page, and the page stays offline."""
    dom = page["dom"]
    nav = re.search(r'<nav class="toc">(.*?)</nav>', dom, re.S)
    assert nav
    targets = re.findall(r'href="#([^"]+)"', nav.group(1))
    ids = re.findall(r'<section id="([^"]+)"', dom)
    assert targets == ids and len(ids) >= len(VIEWS)
    external = [u for u in re.findall(r'(?:src|href)="([^"#]+)"', dom) if not u.startswith("data:")]
    assert external == [], external
