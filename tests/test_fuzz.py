"""Fuzz of the CLI over traces, reports, run directories and gate configs (issue 19 item 5, issue 20).

Hypothesis drives the generators of bench/hostile.py (the ones bench/robustness.py runs a thousand
times) through ``st.randoms``, derandomized: every run tries the same cases. Whatever a case
holds, a command ends with a report (exit 0; the gate's verdicts 1 and 3) or one line
``stallscope: error: ...`` and exit 2; never an internal error, a traceback or a changed input.
Every case the issues name is kept below as a regression with its expected outcome.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.hostile import GATE_CONFIG, YAML_DOCS, mutate_bytes, mutate_tree, put_in_trace, run_cli
from bench.hostile_files import mutate_run_dir, named_trace_blobs
from tests.diagnose_traces import GPU_FIXTURES, cpu_plain_trace

FUZZ = settings(
    derandomize=True,
    database=None,
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
RUN_FIXTURE = GPU_FIXTURES / "runs" / "healthy_cnn"


def assert_clean(argv: list[str], code: int, err: str, ok: tuple[int, ...] = (0,)) -> None:
    """A report (an exit code in ``ok``), or exit 2 with one line; never a traceback."""
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("stallscope: error: "), (argv, err)
    else:
        assert code in ok, (argv, code, err)


class Seeds:
    """Real traces and the report of a real run directory, made once per module (a plain object,
    not a fixture argument: hypothesis would print it with every falsifying example)."""

    def __init__(self, root: Path) -> None:
        gpu = GPU_FIXTURES / "sync_none.json.gz"
        self.docs = [json.loads(Path(cpu_plain_trace()).read_bytes()), json.loads(gzip.decompress(gpu.read_bytes()))]
        self.report = root / "report.yaml"
        code, _, err = run_cli(["diagnose", str(RUN_FIXTURE), "-f", "yaml", "-o", str(self.report)])
        assert code == 0, err
        self.report_doc = yaml.safe_load(self.report.read_text())


SEEDS: list[Seeds] = []


@pytest.fixture(scope="module", autouse=True)
def _seeds(tmp_path_factory: pytest.TempPathFactory) -> None:
    SEEDS[:] = [Seeds(tmp_path_factory.mktemp("fuzz-seeds"))]


@FUZZ
@given(
    rnd=st.randoms(use_true_random=False),
    gz=st.booleans(),
    damage=st.booleans(),
    fmt=st.sampled_from(["console", "json", "md"]),
)
def test_fuzzed_traces_give_a_report_or_one_line(rnd: random.Random, gz: bool, damage: bool, fmt: str) -> None:
    text = put_in_trace(rnd.choice(SEEDS[0].docs), rnd).encode("utf-8", "surrogatepass")
    text = mutate_bytes(text, rnd) if damage else text
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / ("t.json.gz" if gz else "t.json")
        p.write_bytes(gzip.compress(text) if gz else text)
        before = p.read_bytes()
        argv = ["diagnose", str(p), "-f", fmt]
        code, _, err = run_cli(argv)
        assert_clean(argv, code, err)
        assert p.read_bytes() == before


@FUZZ
@given(rnd=st.randoms(use_true_random=False), as_json=st.booleans())
def test_fuzzed_reports_give_a_comparison_or_one_line(rnd: random.Random, as_json: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / ("m.json" if as_json else "m.yaml")
        p.write_text(mutate_tree(SEEDS[0].report_doc, rnd, as_json), encoding="utf-8", errors="surrogatepass")
        before = p.read_bytes()
        good = str(SEEDS[0].report)
        for argv, ok in (
            (["compare", good, str(p), "-f", "md"], (0,)),
            (["compare", str(p), good, "-o", str(Path(tmp) / "c.yaml")], (0,)),
            (["gate", "-q", "--baseline", good, str(p)], (0, 1, 3)),
            (["diagnose", str(p), "-f", "md"], (0,)),
        ):
            code, _, err = run_cli(argv)
            assert_clean(argv, code, err, ok)
        assert p.read_bytes() == before


@settings(FUZZ, max_examples=12)
@given(rnd=st.randoms(use_true_random=False))
def test_fuzzed_run_directories_give_a_report_or_one_line(rnd: random.Random) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(RUN_FIXTURE, run)
        mutate_run_dir(
            run,
            rnd,
            lambda: put_in_trace(SEEDS[0].docs[0], rnd).encode("utf-8", "surrogatepass"),
            lambda doc: mutate_tree(doc, rnd, False),
            YAML_DOCS,
        )
        argv = ["diagnose", str(run)]
        code, _, err = run_cli(argv)
        assert_clean(argv, code, err)


@FUZZ
@given(rnd=st.randoms(use_true_random=False), text=st.booleans())
def test_fuzzed_gate_configs_give_a_verdict_or_one_line(rnd: random.Random, text: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gate.yaml"
        cfg.write_text(
            rnd.choice(YAML_DOCS) if text else mutate_tree(GATE_CONFIG, rnd, False),
            encoding="utf-8",
            errors="surrogatepass",
        )
        base = str(SEEDS[0].report)
        argv = ["gate", "--baseline", base, base, "-c", str(cfg), "--junit", str(Path(tmp) / "j.xml"), "-q"]
        code, _, err = run_cli(argv)
        assert_clean(argv, code, err, (0, 1, 3))


# The outcome of every trace case the issues name: "report", or the words the one error line holds.
NAMED = {
    "ids above 2^63": "report",
    "ids below -2^63": "report",
    "lists where ids belong": "report",
    "ProfilerStep#<huge>": "report",
    "ProfilerStep#2^31": "report",
    "ProfilerStep# without a number": "report",
    "deep nesting in args (3,000)": "nested more than 100 levels",
    "deep nesting in args (300,000)": "nested more than 100 levels",
    "deep nesting at the top (300,000)": "nested too deeply",
    "lone surrogate in a name": "report",
    "lone surrogate in a key": "report",
    "invalid UTF-8 in a name": "report",
    "truncated gzip": "truncated or corrupt",
    "gzip of nothing": "the file is empty",
    "empty file": "the file is empty",
    "whitespace only": "the file is empty",
    "JSON list of the events": "report",
    "JSON list of numbers": "no trace events in it",
    "empty JSON list": "no trace events in it",
    "empty traceEvents": "no trace events in it",
    "traceEvents a mapping": "no traceEvents array",
    "traceEvents of numbers": "no trace events in it",
    "null document": "not a stallscope report",
    "number document": "not a stallscope report",
    "all events without ts": "is usable",
    "all events of an unknown ph": "is usable",
    "all ts NaN": "not valid JSON",
    "all ts strings": "report",
    "all ts not numbers": "is usable",
    "all ts 1e300": "is usable",
    "dur negative": "report",
    "dur 10^30": "report",
    "only metadata events": "is usable",
    "BOM before the document": "report",
}


def test_every_named_case_has_an_expected_outcome() -> None:
    doc = json.loads(Path(cpu_plain_trace()).read_bytes())
    assert [label for label, _, _ in named_trace_blobs(doc)] == list(NAMED)


@pytest.mark.parametrize("label", list(NAMED))
def test_named_trace_cases(tmp_path: Path, label: str) -> None:
    doc = json.loads(Path(cpu_plain_trace()).read_bytes())
    _, name, blob = next(c for c in named_trace_blobs(doc) if c[0] == label)
    p = tmp_path / name
    p.write_bytes(blob)
    code, out, err = run_cli(["diagnose", str(p), "-f", "json"])
    if NAMED[label] == "report":
        assert code == 0 and err == "", err
        assert json.loads(out)["source"]["events"] > 0
    else:
        assert code == 2 and NAMED[label] in err and str(p) in err, err
        assert len(err.strip().splitlines()) == 1


def test_a_lone_surrogate_is_replaced_and_the_rest_diagnosed(tmp_path: Path) -> None:
    doc = json.loads(Path(cpu_plain_trace()).read_bytes())
    clean, bad = tmp_path / "clean.json", tmp_path / "bad.json"
    clean.write_text(json.dumps(doc))
    text = json.dumps(doc)
    at = text.index('"name": "') + len('"name": "')
    bad.write_text(text[:at] + "\\ud800" + text[at:])  # the JSON escape of a lone surrogate
    reports = []
    for p in (clean, bad):
        code, out, err = run_cli(["diagnose", str(p), "-f", "json"])
        assert code == 0, err
        reports.append(json.loads(out))
    assert reports[1]["source"]["events"] == reports[0]["source"]["events"]
    assert reports[1]["summary"]["steps"] == reports[0]["summary"]["steps"] > 0
    assert any("invalid Unicode" in n and "U+FFFD" in n for n in reports[1]["notices"])
    assert not any("invalid Unicode" in n for n in reports[0]["notices"])
