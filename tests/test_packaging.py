"""The distribution installs one import package, `stallscope`, and a target's own `profiler`,
`cli`, `fixes` and `analyzers` modules stay the target's under `stallscope profile`."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_folder():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {"stallscope"} | {
        "stallscope." + ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("profiler", "analyzers", "fixes") for p in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert set(cfg["packages"]) == on_disk, "add the new package folder to [tool.setuptools] packages"
    assert cfg["package-dir"] == {"stallscope": "."}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="building the wheel needs setuptools")
def test_wheel_has_only_the_stallscope_package(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("stallscope-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"stallscope"}
    for needed in ("stallscope/__init__.py", "stallscope/cli.py", "stallscope/profiler/boot/sitecustomize.py",
                   "stallscope/analyzers/report.schema.json", "stallscope/fixes/flashkat/kernels.py",
                   "stallscope/cli_help.json"):
        assert needed in names
    assert not any(n.startswith(("stallscope/tests/", "stallscope/bench/", "stallscope/docs/")) for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "stallscope = stallscope.cli:entry" in zipfile.ZipFile(wheel).read(entry).decode()


TARGET = """\
import sys
import profiler, cli, fixes, analyzers
import torch
profiler.helper()
print("target", cli.NAME, fixes.NAME, analyzers.NAME)
model = torch.nn.Linear(8, 8)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(12):
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    opt.zero_grad()
sys.exit(7)
"""


@pytest.mark.slow
def test_target_with_its_own_profiler_cli_fixes_analyzers_runs_unchanged(tmp_path):
    (tmp_path / "profiler.py").write_text("def helper():\n    print('own profiler')\n")
    (tmp_path / "cli.py").write_text("NAME = 'own-cli'\n")
    for pkg in ("fixes", "analyzers"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(f"NAME = 'own-{pkg}'\n")
    (tmp_path / "train.py").write_text(TARGET)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALLSCOPE_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH="")
    plain = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert plain.returncode == 7, plain.stderr[-2000:]
    run = tmp_path / "run"
    profiled = subprocess.run([sys.executable, "-m", "stallscope.cli", "profile", "-q", "--no-diagnose", "-o", str(run),
                               "--skip", "2", "--steps", "2", "--", sys.executable, "train.py"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert profiled.returncode == 7, profiled.stderr[-3000:]
    want = "own profiler\ntarget own-cli own-fixes own-analyzers\n"
    assert plain.stdout == want
    assert want in profiled.stdout
    assert "Traceback" not in profiled.stderr
    assert (run / "rank0" / "steps.csv").is_file()  # and it was profiled, under its own names


SESSION_TARGET = """\
import sys
import stallscope
import torch
x = torch.randn(64, 64)
with stallscope.Session(out=sys.argv[1], skip=2, steps=2, sample_hz=5) as s:
    for _ in range(8):
        (x @ x).sum()
        stallscope.step()
print("done", stallscope.__version__)
"""


@pytest.mark.slow
def test_in_target_api_is_import_stallscope(tmp_path):
    """`import stallscope; stallscope.Session(...)` / `stallscope.step()` write a run directory
    whose steps come from the API calls (no optimizer, no module calls to find them)."""
    script = tmp_path / "nb.py"
    script.write_text(SESSION_TARGET)
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALLSCOPE_")}
    env.update(OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(script), str(run)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("done ")
    rows = (run / "rank0" / "steps.csv").read_text().splitlines()
    header = rows[0].split(",")
    sources = {r.split(",")[header.index("source")] for r in rows[1:]}
    assert len(rows) - 1 >= 7 and sources == {"api"}
