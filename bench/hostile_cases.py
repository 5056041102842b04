"""The cases of bench/robustness.py: real seeds recorded on this machine, and one random case of
each kind (a trace, a report, a run directory, a gate config) made from them with the mutators
of bench/hostile.py and bench/hostile_files.py, plus the cases the issues name."""

from __future__ import annotations

import copy
import gzip
import json
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.hostile import GATE_CONFIG, YAML_DOCS, mutate_bytes, mutate_tree, put_in_trace, run_cli
from bench.hostile_files import mutate_run_dir, named_trace_blobs

__all__ = ["KINDS", "Case", "Seeds", "make_case", "named_cases", "record_seeds"]

KINDS = ("trace", "report", "rundir", "gateconfig")


@dataclass
class Case:
    """One CLI run: ``argv`` after ``stallscope``; ``inputs`` are the files it must leave unchanged."""

    kind: str
    label: str
    argv: list[str]
    inputs: list[Path] = field(default_factory=list)


@dataclass
class Seeds:
    """The real files every case starts from."""

    root: Path
    traces: list[dict[str, Any]]  # parsed trace documents
    trace_paths: list[Path]
    run_dir: Path
    report: dict[str, Any]  # the run directory's report
    report_path: Path
    trace_report_path: Path
    gate_config: dict[str, Any]


_RECORD = r"""
import sys, torch, torch.nn as nn
from torch.profiler import profile, schedule, ProfilerActivity
torch.set_num_threads(1)
m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
opt = torch.optim.SGD(m.parameters(), lr=0.1)
def step():
    loss = m(torch.randn(8, 16)).square().mean()
    opt.zero_grad(); loss.backward(); opt.step()
if len(sys.argv) > 1:
    with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=1, active=3, repeat=1),
                 record_shapes=True, with_flops=True) as p:
        for _ in range(5):
            step(); p.step()
    p.export_chrome_trace(sys.argv[1])
else:
    for _ in range(12):
        step()
"""
FIXTURE_TRACES = ("sync_none.json.gz", "copy_pageable_fp32.json.gz")


def record_seeds(root: Path) -> Seeds:
    """Record a CPU trace and a run directory with torch on this machine (unless ``root`` holds
    them from an earlier call), write their reports."""
    root.mkdir(parents=True, exist_ok=True)
    script, trace, run = root / "tiny_train.py", root / "cpu.json", root / "run"
    if not (trace.is_file() and (run / "meta.yaml").is_file()):
        script.write_text(_RECORD)
        subprocess.run([sys.executable, str(script), str(trace)], check=True, capture_output=True, timeout=300)
        shutil.rmtree(run, ignore_errors=True)
        profile = ["profile", "-o", str(run), "--skip", "2", "--steps", "3", "--sample-hz", "5", "-q", "--no-diagnose"]
        subprocess.run(
            [sys.executable, "-m", "stallscope.cli", *profile, "--", sys.executable, str(script)],
            check=True,
            capture_output=True,
            timeout=300,
        )
    fixtures = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "gpu"
    paths = [trace, *(fixtures / n for n in FIXTURE_TRACES if (fixtures / n).is_file())]
    docs = [json.loads(gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()) for p in paths]
    steps = [e for e in docs[0]["traceEvents"] if str(e.get("name")).startswith("ProfilerStep#")]
    assert len(steps) >= 3 and len(docs[0]["traceEvents"]) > 100, f"{trace}: the recording holds too little"
    report_path, trace_report = root / "report.yaml", root / "trace-report.yaml"
    for target, out in ((run, report_path), (trace, trace_report)):
        code, _, err = run_cli(["diagnose", str(target), "-o", str(out), "-f", "yaml"])
        assert code == 0, err
    report = yaml.safe_load(report_path.read_text())
    return Seeds(root, docs, paths, run, report, report_path, trace_report, copy.deepcopy(GATE_CONFIG))


def _trace_text(seeds: Seeds, rng: random.Random) -> bytes:
    doc = rng.choice(seeds.traces)
    text = put_in_trace(doc, rng).encode("utf-8", "surrogatepass")
    if rng.random() < 0.3:
        text = mutate_bytes(text, rng)
    return text


def _write_trace(d: Path, blob: bytes, rng: random.Random) -> Path:
    if rng.random() < 0.25:
        z = gzip.compress(blob, compresslevel=1)
        p = d / "t.json.gz"
        p.write_bytes(z[: rng.randrange(len(z))] if rng.random() < 0.2 else z)
        return p
    p = d / "t.json"
    p.write_bytes(blob)
    return p


def _trace_case(seeds: Seeds, rng: random.Random, d: Path) -> Case:
    p = _write_trace(d, _trace_text(seeds, rng), rng)
    roll = rng.random()
    if roll < 0.7:
        argv = ["diagnose", str(p), *rng.choice(([], ["-f", "json"], ["-f", "md"], ["-f", "yaml"]))]
    elif roll < 0.8:
        argv = ["diagnose", str(p), "-o", str(d / "r.yaml"), "--annotated-trace", str(d / "a.json")]
    elif roll < 0.9:
        argv = ["report", str(p), "--html", str(d / "r.html")]
    else:
        argv = ["compare", str(seeds.trace_paths[0]), str(p), "-f", rng.choice(("console", "md", "yaml"))]
    return Case("trace", "random trace", argv, [p])


def _report_case(seeds: Seeds, rng: random.Random, d: Path) -> Case:
    as_json = rng.random() < 0.3
    p = d / ("m.json" if as_json else "m.yaml")
    if not as_json and rng.random() < 0.1:
        p.write_text(rng.choice(YAML_DOCS))
    else:
        p.write_text(mutate_tree(seeds.report, rng, as_json), encoding="utf-8", errors="surrogatepass")
    good = str(seeds.report_path)
    argv = rng.choice(
        (
            ["compare", str(p), good],
            ["compare", good, str(p), "-f", "md"],
            ["compare", str(p), str(p), "-f", "yaml"],
            ["compare", good, str(p), "-o", str(d / "c.md")],
            ["gate", "-q", "--baseline", good, str(p)],
            ["gate", "--baseline", str(p), good, "-o", str(d / "v.yaml")],
            ["diagnose", str(p), "-f", "md"],
            ["diagnose", str(p)],
            ["report", str(p), "--html", str(d / "r.html")],
            ["patch", "plan", str(p)],
        )
    )
    return Case("report", "random report", argv, [p, seeds.report_path])


def _rundir_case(seeds: Seeds, rng: random.Random, d: Path) -> Case:
    run = d / "run"
    shutil.copytree(seeds.run_dir, run)
    labels = mutate_run_dir(
        run, rng, lambda: _trace_text(seeds, rng), lambda doc: mutate_tree(doc, rng, False), YAML_DOCS
    )
    argv = rng.choice(
        (
            ["diagnose", str(run)],
            ["diagnose", str(run)],
            ["diagnose", str(run), "-f", "json"],
            ["gate", "-q", "--baseline", str(seeds.report_path), str(run)],
            ["compare", str(run), str(seeds.report_path)],
        )
    )
    return Case("rundir", "run dir: " + ", ".join(labels), argv, [])


def _gate_case(seeds: Seeds, rng: random.Random, d: Path) -> Case:
    cfg = d / "gate.yaml"
    cfg.write_text(
        rng.choice(YAML_DOCS) if rng.random() < 0.1 else mutate_tree(seeds.gate_config, rng, False),
        encoding="utf-8",
        errors="surrogatepass",
    )
    base, cur = seeds.report_path, rng.choice((seeds.report_path, seeds.trace_report_path))
    argv = ["gate", "--baseline", str(base), str(cur), "-c", str(cfg)]
    out = rng.choice(
        (
            (),
            ("-o", d / "v.yaml"),
            ("--junit", d / "j.xml"),
            ("-o", d),
            ("--junit", d),
            ("-o", base),
            ("--junit", cfg),
            ("-o", cur),
            ("-q",),
        )
    )
    argv += [str(x) for x in out]
    return Case("gateconfig", f"gate config, output {out[:1]}", argv, [cfg, base, cur])


def make_case(kind: str, seeds: Seeds, rng: random.Random, d: Path) -> Case:
    """A random case of ``kind`` (one of :data:`KINDS`) with its files under ``d``."""
    make = {"trace": _trace_case, "report": _report_case, "rundir": _rundir_case, "gateconfig": _gate_case}[kind]
    return make(seeds, rng, d)


def named_cases(seeds: Seeds, d: Path) -> list[Case]:
    """The cases the issues name, each once: see bench/hostile_files.py ``NAMED_TRACES``."""
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for label, name, blob in named_trace_blobs(seeds.traces[0]):
        p = d / f"{len(out)}-{name}"
        p.write_bytes(blob)
        out.append(Case("trace", label, ["diagnose", str(p)], [p]))
    t = seeds.trace_paths[0]
    base = seeds.report_path
    for label, argv, inputs in (
        ("-o is the input trace", ["diagnose", str(t), "-o", str(t)], [t]),
        ("-o is a folder", ["diagnose", str(t), "-o", str(d)], [t]),
        ("compare -o folder", ["compare", str(base), str(base), "-o", str(d)], [base]),
        ("gate -o baseline", ["gate", "--baseline", str(base), str(base), "-o", str(base)], [base]),
        ("gate --junit folder", ["gate", "--baseline", str(base), str(base), "--junit", str(d)], [base]),
        ("report --html folder", ["report", str(t), "--html", str(d)], [t]),
    ):
        out.append(Case("trace" if "diagnose" in argv else "report", label, argv, inputs))
    return out
