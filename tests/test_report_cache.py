"""The report cache (analyzers/reportcache.py): a repeated diagnose of unchanged inputs writes the
same bytes without loading or analysing anything, and whatever the report depends on that
changed (the trace, a run directory's telemetry, the format, the code, the settings) runs the
diagnosis again; a damaged entry, a failed analyzer or a refused table file never is served.

Inputs are real: committed H200 fixtures (a trace and a run directory) copied into the test's
folder. Command lines run as ``python -m stallscope.cli`` in a fresh process under a probe that
records, at exit, which modules the process imported: ``stallscope.analyzers.run`` is imported by
every diagnosis that runs the analyzers and by nothing on the cache's path.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from stallscope.analyzers import reportcache, tablestore
from stallscope.analyzers.command import diagnose_command
from stallscope.fixes import advice_for
from tests.analyzer_traces import GPU_FIXTURES

ROOT = Path(__file__).resolve().parents[1]
TRACE = GPU_FIXTURES / "sync_item_per_layer.json.gz"
RUN = GPU_FIXTURES / "runs" / "healthy_cnn"
ANALYSIS = "stallscope.analyzers.run"
HEAVY = ("typer", "numpy", "yaml", ANALYSIS, "stallscope.analyzers.context", "stallscope.analyzers.tablestore")

# Runs `python -m stallscope.cli ARGS` (runpy, as -m does), or the `stallscope` script's
# `entry()` with PROBE_ENTRY set, and writes the imported modules of HEAVY to the file named by
# $PROBE when the process ends, however it ends.
PROBE = """
import atexit, json, os, runpy, sys
heavy = json.loads(os.environ["PROBE_MODULES"])
atexit.register(lambda: open(os.environ["PROBE"], "w").write(json.dumps([m for m in heavy if m in sys.modules])))
sys.argv = ["stallscope", *sys.argv[1:]]
if os.environ.get("PROBE_ENTRY"):
    from stallscope.cli import entry
    entry()
else:
    runpy.run_module("stallscope.cli", run_name="__main__", alter_sys=True)
"""


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    imported: list[str]

    @property
    def analysed(self) -> bool:
        return ANALYSIS in self.imported


def cli(tmp: Path, *args: str, **env: str) -> Run:
    """``stallscope ARGS`` in ``tmp`` with the default cache placement (user cache in tmp/xdg)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("STALLSCOPE_")}
    full.update(
        XDG_CACHE_HOME=str(tmp / "xdg"),
        STALLSCOPE_TABLE_CACHE="auto",
        PROBE=str(tmp / "probe.json"),
        PROBE_MODULES=json.dumps(HEAVY),
    )
    full.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=tmp, env=full, capture_output=True, text=True, timeout=300
    )
    imported = json.loads((tmp / "probe.json").read_text())
    return Run(proc.returncode, proc.stdout, proc.stderr, imported)


def entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(reportcache.SUFFIX))


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    return Path(shutil.copy(TRACE, tmp_path / "trace.json.gz"))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """The run directory without the table files a diagnose may have left next to the fixture."""
    return Path(shutil.copytree(RUN, tmp_path / "run", ignore=shutil.ignore_patterns(".*")))


@pytest.mark.parametrize("fmt", ["yaml", "json", "md"])
def test_repeat_is_byte_identical_and_skips_the_analysis(tmp_path: Path, trace: Path, fmt: str) -> None:
    first = cli(tmp_path, "diagnose", trace.name, "-f", fmt, "-o", f"a.{fmt}")
    assert first.rc == 0 and first.analysed, first.stderr
    second = cli(tmp_path, "diagnose", trace.name, "-f", fmt, "-o", f"b.{fmt}")
    assert second.rc == 0 and second.stderr == ""
    assert second.imported == [], "the cache's path imported typer, numpy, yaml or the analyzers"
    assert second.stdout == first.stdout and len(first.stdout) > 1000
    assert (tmp_path / f"b.{fmt}").read_bytes() == (tmp_path / f"a.{fmt}").read_bytes() == first.stdout.encode()
    # the `stallscope` script's entry() answers from the cache too (typer is imported with cli.py)
    script = cli(tmp_path, "diagnose", trace.name, "-f", fmt, PROBE_ENTRY="1")
    assert script.rc == 0 and not script.analysed and script.stdout == first.stdout
    # what the cache serves is what the diagnosis writes with no cache at all
    off = cli(tmp_path, "diagnose", trace.name, "-f", fmt, STALLSCOPE_TABLE_CACHE="off")
    assert off.analysed and off.stdout == second.stdout
    assert len(entries(tmp_path / "xdg" / "stallscope" / "reports")) == 1


def test_console_repeat_draws_the_cached_report(tmp_path: Path, trace: Path) -> None:
    first = cli(tmp_path, "diagnose", trace.name, "-o", "a.md")
    written = (tmp_path / "a.md").read_bytes()
    (tmp_path / "a.md").unlink()
    second = cli(tmp_path, "diagnose", trace.name, "-o", "a.md")
    assert first.rc == second.rc == 0 and first.analysed and not second.analysed
    assert "typer" not in second.imported
    assert second.stdout == first.stdout and "report written to a.md" in second.stdout
    assert (tmp_path / "a.md").read_bytes() == written
    # the console's report serves `-f json`, the .md file's text `-f md`
    md = cli(tmp_path, "diagnose", trace.name, "-f", "md")
    assert md.imported == [] and md.stdout == (tmp_path / "a.md").read_text()
    as_json = cli(tmp_path, "diagnose", trace.name, "-f", "json")
    assert as_json.imported == [] and json.loads(as_json.stdout)["kind"] == "stallscope-report"


def test_changed_trace_runs_the_diagnosis_again(tmp_path: Path) -> None:
    plain = tmp_path / "trace.json"
    plain.write_bytes(gzip.decompress(TRACE.read_bytes()))
    args = ("diagnose", plain.name, "-f", "yaml")
    assert cli(tmp_path, *args).analysed and not cli(tmp_path, *args).analysed
    os.utime(plain, ns=(plain.stat().st_atime_ns, plain.stat().st_mtime_ns + 10**9))  # touched
    assert cli(tmp_path, *args).analysed and not cli(tmp_path, *args).analysed
    # same size and modification time, one kernel's duration changed
    st = plain.stat()
    data = plain.read_bytes()
    m = re.search(rb'"cat": "kernel".{0,400}?"dur": (\d)', data, re.S)
    assert m is not None
    digit = m.group(1)
    changed = data[: m.start(1)] + (b"1" if digit != b"1" else b"2") + data[m.end(1) :]
    plain.write_bytes(changed)
    os.utime(plain, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert plain.stat().st_size == st.st_size and plain.stat().st_mtime_ns == st.st_mtime_ns
    again = cli(tmp_path, *args)
    assert again.analysed
    assert again.stdout == cli(tmp_path, *args, STALLSCOPE_TABLE_CACHE="off").stdout


def test_run_dir_keeps_its_entries_and_notices_changed_telemetry(tmp_path: Path, run_dir: Path) -> None:
    # the report written into the run directory is not one of its inputs: the repeat is a hit
    args = ("diagnose", "run", "-f", "yaml", "-o", "run/report.yaml")
    first = cli(tmp_path, *args)
    assert first.rc == 0 and first.analysed
    assert len(entries(run_dir)) == 1 and not entries(tmp_path / "xdg")
    assert not cli(tmp_path, *args).analysed
    steps = run_dir / "rank0" / "steps.csv"
    lines = steps.read_text().splitlines()
    fields = lines[0].split(",")
    row = lines[-2].split(",")  # a step after the trace window: one of the report's samples
    wall = fields.index("wall_ms")
    row[wall] = str(float(row[wall]) * 3)
    lines[-2] = ",".join(row)
    steps.write_text("\n".join(lines) + "\n")
    changed = cli(tmp_path, *args)
    assert changed.analysed and changed.stdout != first.stdout
    assert changed.stdout == cli(tmp_path, "diagnose", "run", "-f", "yaml", STALLSCOPE_TABLE_CACHE="off").stdout
    assert not cli(tmp_path, *args).analysed


def test_other_format_and_settings_miss(tmp_path: Path, trace: Path) -> None:
    assert cli(tmp_path, "diagnose", trace.name, "-f", "yaml").analysed
    assert cli(tmp_path, "diagnose", trace.name, "-f", "md").analysed
    assert cli(tmp_path, "diagnose", trace.name, "-f", "yaml", STALLSCOPE_ANALYZER_WORKERS="1").analysed
    assert cli(tmp_path, "diagnose", "./" + trace.name, "-f", "yaml").analysed is False  # typer reads ./x as x
    assert cli(tmp_path, "diagnose", str(trace), "-f", "yaml").analysed  # the report names the path as typed
    for deep in (["--debug", "diagnose", trace.name, "-f", "yaml"], ["diagnose", trace.name, "-f", "yaml", "--deep"]):
        assert cli(tmp_path, *deep).analysed


def test_cache_off_neither_reads_nor_writes(tmp_path: Path, trace: Path) -> None:
    assert cli(tmp_path, "diagnose", trace.name, "-f", "json").analysed
    stored = entries(tmp_path / "xdg")
    assert len(stored) == 1
    for _ in range(2):
        assert cli(tmp_path, "diagnose", trace.name, "-f", "json", STALLSCOPE_TABLE_CACHE="off").analysed
    assert entries(tmp_path / "xdg") == stored
    assert cli(tmp_path, "diagnose", trace.name, "-f", "md", STALLSCOPE_TABLE_CACHE="off").analysed
    assert entries(tmp_path / "xdg") == stored
    # the report cache alone off: the table is still read, no report is
    for _ in range(2):
        assert cli(tmp_path, "diagnose", trace.name, "-f", "md", STALLSCOPE_REPORT_CACHE="off").analysed
    assert entries(tmp_path / "xdg") == stored


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign", "empty"])
def test_damaged_entry_is_a_silent_miss(tmp_path: Path, trace: Path, damage: str) -> None:
    args = ("diagnose", trace.name, "-f", "yaml")
    first = cli(tmp_path, *args)
    (entry,) = entries(tmp_path / "xdg")
    data = entry.read_bytes()
    if damage == "flip":
        i = len(data) - 100
        data = data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1 :]
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "foreign":
        data = b'{"format": "something-else"}\n' + data.split(b"\n", 1)[1]
    else:
        data = b""
    entry.write_bytes(data)
    again = cli(tmp_path, *args)
    assert again.rc == 0 and again.analysed and again.stderr == ""
    assert again.stdout == first.stdout
    assert not cli(tmp_path, *args).analysed  # written again by that diagnosis


def test_refused_table_file_is_not_kept(tmp_path: Path, trace: Path) -> None:
    args = ("diagnose", trace.name, "-f", "json")
    cli(tmp_path, *args)
    for e in entries(tmp_path / "xdg"):
        e.unlink()
    (table,) = (tmp_path / "xdg" / "stallscope" / "tables").iterdir()
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a column's CRC fails
    table.write_bytes(bytes(data))
    refused = cli(tmp_path, *args)
    assert refused.rc == 0 and "table file" in refused.stdout and "not used" in refused.stdout
    assert entries(tmp_path / "xdg") == []
    clean = cli(tmp_path, *args)  # the table was written again; this report is kept
    assert clean.analysed and "table file" not in clean.stdout
    assert not cli(tmp_path, *args).analysed


# ------------------------------------------------------------------------------ in this process
@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(reportcache.CACHE_ENV, str(folder))
    return folder


def test_code_or_settings_change_is_a_miss(cache_dir: Path, trace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert diagnose_command(trace, fmt="md", fix_advice=advice_for) == 0
    argv = ["diagnose", str(trace), "-f", "md"]
    hit = reportcache.lookup(argv, advice=reportcache.callable_id(advice_for))
    assert hit is not None and "## " in hit.texts["md"]
    assert reportcache.lookup(argv, advice=None) is None  # markdown written with other advice
    monkeypatch.setattr(reportcache, "code_stamp", lambda: "another version of stallscope")
    assert reportcache.lookup(argv, advice=reportcache.callable_id(advice_for)) is None
    monkeypatch.undo()
    monkeypatch.setenv(reportcache.CACHE_ENV, str(cache_dir))
    assert reportcache.lookup(argv, advice=reportcache.callable_id(advice_for)) is not None
    monkeypatch.setenv("STALLSCOPE_PARSE_WORKERS", "0")
    assert reportcache.lookup(argv, advice=reportcache.callable_id(advice_for)) is None


def test_the_cli_names_the_advice_it_passes() -> None:
    from stallscope import cli as cli_module

    assert cli_module.FIX_ADVICE_ID == reportcache.callable_id(advice_for)


def test_plain_diagnose_runs_before_typer_loads(tmp_path: Path, trace: Path) -> None:
    """A plain diagnose the cache cannot answer is diagnosed without typer (whose option checks
    load pydantic, as long as a small trace's whole diagnosis), with typer's outputs and codes."""
    cold = cli(tmp_path, "diagnose", trace.name, "-f", "yaml", STALLSCOPE_REPORT_CACHE="off")
    assert cold.rc == 0 and cold.analysed and "typer" not in cold.imported, cold.stderr
    # a global option goes through typer: the same report
    typed = cli(tmp_path, "--debug", "diagnose", trace.name, "-f", "yaml", STALLSCOPE_REPORT_CACHE="off")
    assert typed.rc == 0 and "typer" in typed.imported and typed.stdout == cold.stdout
    # bad input: one line and exit 2, as through typer
    missing = cli(tmp_path, "diagnose", "no-such-trace.json", "-f", "yaml")
    assert missing.rc == 2 and "typer" not in missing.imported
    assert missing.stderr.count("\n") == 1 and missing.stderr.startswith("stallscope: error: ")
    assert "no-such-trace.json" in missing.stderr and missing.stdout == ""


def test_failed_analyzer_or_usage_error_keeps_nothing(
    cache_dir: Path, trace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stallscope.analyzers.base import registered_analyzers
    from stallscope.profiler.common import ToolError

    with pytest.raises(ToolError):
        diagnose_command(trace, fmt="html")
    cls = registered_analyzers(["synchronization"])["synchronization"]

    def broken(self: object, ctx: object) -> list[object]:
        raise RuntimeError("planted bug")

    monkeypatch.setattr(cls, "analyze", broken)
    monkeypatch.setenv("STALLSCOPE_ANALYZER_WORKERS", "1")
    assert diagnose_command(trace, fmt="json") == 0
    report = json.loads(capsys.readouterr().out)
    assert "synchronization" in report["analyzers"]["failed"]
    assert entries(cache_dir) == []
    monkeypatch.undo()
    monkeypatch.setenv(reportcache.CACHE_ENV, str(cache_dir))
    assert diagnose_command(trace, fmt="json") == 0
    assert len(entries(cache_dir)) == 1


def test_user_cache_is_bounded(cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    traces = [Path(shutil.copy(GPU_FIXTURES / f"{n}.json.gz", tmp_path)) for n in ("gemm_fp32_tf32", "sync_none")]
    diagnose_command(traces[0], fmt="yaml")
    (one,) = entries(cache_dir)
    monkeypatch.setattr(reportcache, "USER_MAX_BYTES", one.stat().st_size + 100)
    os.utime(one, ns=(0, 0))  # older than anything written now
    diagnose_command(traces[1], fmt="yaml")
    (kept,) = entries(cache_dir)
    assert kept != one and reportcache.lookup(["diagnose", str(traces[1]), "-f", "yaml"]) is not None


@pytest.mark.parametrize(
    "argv,want",
    [
        (["diagnose", "t.json.gz"], ("t.json.gz", "console", None)),
        (["diagnose", "-f", "yaml", "./t.json.gz", "-o", "out//r.yaml"], ("t.json.gz", "yaml", "out/r.yaml")),
        (["diagnose", "t", "--format=md", "--output=r.md"], ("t", "md", "r.md")),
        (["diagnose", "t", "--deep"], None),
        (["diagnose", "t", "--annotated-trace", "a.json"], None),
        (["--debug", "diagnose", "t"], None),
        (["diagnose", "t", "--help"], None),
        (["diagnose", "t", "-f", "html"], None),
        (["diagnose", "t", "-f", "yaml", "-f", "json"], None),
        (["diagnose", "t", "u"], None),
        (["diagnose", "t", "-o"], None),
        (["diagnose", "t", "-fyaml"], None),
        (["diagnose", "t", "-o", "-"], None),
        (["report", "t", "--html", "r.html"], None),
    ],
)
def test_only_plain_diagnose_command_lines_are_answered(argv: list[str], want: tuple[str, str, str | None]) -> None:
    got = reportcache.parse_diagnose(argv)
    assert (None if got is None else (got.target, got.fmt, got.output)) == want


@pytest.mark.parametrize("value", ["", "auto", "ON", "off", "0", "False", "user", "/some/folder", "~/x"])
def test_cache_settings_read_as_the_table_cache_reads_them(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tablestore.CACHE_ENV, value)
    assert reportcache.CACHE_ENV == tablestore.CACHE_ENV
    assert reportcache.cache_mode() == tablestore.cache_mode()


def test_only_what_diagnose_reads_keys_a_folder(run_dir: Path) -> None:
    before = reportcache.input_key(run_dir)
    (run_dir / "report.html").write_text("<html></html>")
    (run_dir / "rank0" / ".trace.json.gz.stallscope-table.npz").write_bytes(b"table")
    assert reportcache.input_key(run_dir) == before
    (run_dir / "rank0" / "rank.yaml").write_text((run_dir / "rank0" / "rank.yaml").read_text() + "# edited\n")
    assert reportcache.input_key(run_dir) != before
    nested = reportcache.input_key(run_dir)
    (run_dir / "dumps").mkdir()
    (run_dir / "dumps" / "rank0_nccl_trace.json").write_text("{}")  # read by the communication analyzer
    assert reportcache.input_key(run_dir) != nested
