"""`stallscope gate`: exit codes, bad input, JUnit (validated against a JUnit XSD), markdown, baseline update."""
from __future__ import annotations

import copy
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from stallscope.cli import app

ENV = {"gpu": {"name": "NVIDIA H200", "uuid": "GPU-1"}, "gpu_count": 1, "driver": "570.86", "cuda": "13.0", "torch": "2.11.0", "host": "ci-1"}


def finding(id: str, severity: str, category: str = "input-pipeline") -> dict:
    """A finding as the diagnose report writes it."""
    return {"id": id, "category": category, "title": id.replace("-", " "), "severity": severity,
            "impact": {"step_time_pct": 10.0, "est_saving_ms_per_step": 2.0}, "evidence": {"share_pct": 10.0},
            "where": {}, "confidence": 0.8, "fixes": []}


def make_report(median_ms: float = 20.0, n: int = 100, cv: float = 0.02, seed: int = 0, findings: Optional[list] = None, env: Optional[dict] = None, **summary: Any) -> dict:
    """A report as stallscope diagnose writes it, with simulated per-step samples."""
    rng = np.random.default_rng(seed)
    samples = median_ms * np.exp(rng.normal(0.0, math.sqrt(math.log1p(cv * cv)), n))
    breakdown = {"compute_pct": 70.0, "memory_pct": 5.0, "comm_exposed_pct": 2.0, "comm_overlapped_pct": 0.0, "data_wait_pct": 10.0, "sync_wait_pct": 5.0, "launch_overhead_pct": 3.0, "host_other_pct": 5.0}
    report = {
        "schema_version": 1,
        "kind": "stallscope-report",
        "tool": {"name": "stallscope", "version": "0.1.0"},
        "source": {"path": "sim", "kind": "run-dir"},
        "environment": copy.deepcopy(env if env is not None else ENV),
        "summary": {
            "steps": n,
            "step_time_ms": {"median": float(np.median(samples)), "p10": float(np.quantile(samples, 0.1)), "p90": float(np.quantile(samples, 0.9)), "samples": samples.round(4).tolist()},
            "breakdown_pct": breakdown,
            "peak_memory_mb": 1000.0,
        },
        "top_kernels": [{"name": "gemm", "count": 10, "total_ms": 5.0, "pct": 50.0, "class": "compute-bound"}],
        "findings": [finding(**f) for f in findings] if findings is not None else [finding("input-pipeline", "medium")],
        "notices": [],
    }
    for key, value in summary.items():
        report["summary"][key] = value
    return report


def write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False) if path.suffix != ".json" else json.dumps(data))
    return path


def gate(*args: str, env: Optional[dict] = None) -> Any:
    return CliRunner().invoke(app, ["gate", *args], env=env or {"GITHUB_STEP_SUMMARY": ""})


@pytest.fixture
def reports(tmp_path: Path) -> dict[str, Path]:
    return {
        "base": write(tmp_path / "base.yaml", make_report(20.0, seed=1)),
        "same": write(tmp_path / "same.yaml", make_report(20.0, seed=2)),
        "slow": write(tmp_path / "slow.json", make_report(23.0, seed=3)),  # +15 %, also checks JSON reports
        "fast": write(tmp_path / "fast.yaml", make_report(18.0, seed=4)),
    }


def test_simulated_reports_follow_the_diagnose_report_schema() -> None:
    pytest.importorskip("jsonschema")
    from stallscope.analyzers.report import validate_report

    validate_report(make_report(findings=[{"id": "a", "severity": "high"}]))


def test_same_code_passes_with_exit_0(reports: dict[str, Path]) -> None:
    res = gate("--baseline", str(reports["base"]), str(reports["same"]))
    assert res.exit_code == 0, res.output
    assert "verdict: pass" in res.output


def test_regression_exits_1_and_names_the_rule(reports: dict[str, Path]) -> None:
    res = gate("--baseline", str(reports["base"]), str(reports["slow"]))
    assert res.exit_code == 1, res.output
    assert "regression in step_time_median" in res.output


def test_improvement_passes(reports: dict[str, Path]) -> None:
    res = gate("check", "-b", str(reports["base"]), str(reports["fast"]))
    assert res.exit_code == 0, res.output
    assert "improvement" in res.output


def test_too_few_samples_is_inconclusive_not_a_pass(tmp_path: Path, reports: dict[str, Path]) -> None:
    short = write(tmp_path / "short.yaml", make_report(20.0, n=8, seed=5))
    res = gate("--baseline", str(reports["base"]), str(short))
    assert res.exit_code == 3, res.output
    assert "too few samples" in res.output
    # the exact number of steps to add: 8 samples against the default minimum of 20
    assert "run at least 12 more step(s)" in " ".join(res.output.split())


def test_environment_change_is_inconclusive_unless_allowed(tmp_path: Path, reports: dict[str, Path]) -> None:
    other = dict(ENV, driver="580.10", gpu={"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-2"})
    moved = write(tmp_path / "moved.yaml", make_report(23.0, seed=3, env=other))
    res = gate("--baseline", str(reports["base"]), str(moved))
    assert res.exit_code == 3, res.output
    assert "driver: 570.86 -> 580.10" in res.output
    res = gate("--baseline", str(reports["base"]), str(moved), "--allow-env-change")
    assert res.exit_code == 1, res.output


def test_configured_clock_differs_but_resting_clock_is_only_a_note(tmp_path: Path) -> None:
    from stallscope.analyzers.gate.fingerprint import compare_environments

    a = dict(ENV, clocks={"sm_clock_max_mhz": 1980.0, "sm_clock_at_rest_mhz": 345.0, "power_limit_w": 700.0})
    b = dict(ENV, clocks={"sm_clock_max_mhz": 1980.0, "sm_clock_at_rest_mhz": 1980.0, "power_limit_w": 700.0})
    check = compare_environments(a, b)
    assert check.matches and any("at_rest" in n for n in check.notes)
    c = dict(ENV, clocks={"sm_clock_max_mhz": 1600.0, "sm_clock_at_rest_mhz": 345.0, "power_limit_w": 500.0})
    check = compare_environments(a, c)
    assert not check.matches and len(check.differences) == 2
    assert "uuid" not in " ".join(check.differences)  # two H200s are the same machine kind


def test_new_finding_rules_and_allow_list(tmp_path: Path, reports: dict[str, Path]) -> None:
    new_high = finding("sync-item-in-loop", "high", "synchronization")
    cur = make_report(20.0, seed=2)
    cur["findings"].append(new_high)
    current = write(tmp_path / "cur.yaml", cur)
    res = gate("--baseline", str(reports["base"]), str(current))
    assert res.exit_code == 1 and "sync-item-in-loop" in res.output
    cfg = write(tmp_path / "gate.yaml", {"findings": {"fail_on_new": "medium", "allow": ["sync-item-in-loop"]}})
    res = gate("--baseline", str(reports["base"]), str(current), "--config", str(cfg))
    assert res.exit_code == 0, res.output
    # A finding already in the baseline is not new, whatever its severity.
    cfg = write(tmp_path / "gate2.yaml", {"findings": {"fail_on_new": "info"}})
    res = gate("--baseline", str(reports["base"]), str(reports["same"]), "--config", str(cfg))
    assert res.exit_code == 0, res.output


def test_scalar_rules_by_alias_and_dotted_path(tmp_path: Path, reports: dict[str, Path]) -> None:
    cur = make_report(20.0, seed=2, peak_memory_mb=1300.0)
    cur["summary"]["breakdown_pct"]["data_wait_pct"] = 17.0  # +7 points of GPU idle
    current = write(tmp_path / "cur.yaml", cur)
    cfg = write(tmp_path / "gate.yaml", {"rules": [
        {"metric": "step_time_median", "max_regression_pct": 3},
        {"metric": "gpu_idle_pct", "max_regression_abs": 5},
        {"metric": "peak_memory_mb", "max_regression_pct": 50},
        {"metric": "summary.breakdown_pct.data_wait_pct", "max_regression_abs": 10, "name": "data wait"},
        {"metric": "top_kernels.0.total_ms", "max_regression_pct": 10},
    ]})
    out = tmp_path / "verdict.yaml"
    res = gate("--baseline", str(reports["base"]), str(current), "--config", str(cfg), "-o", str(out))
    assert res.exit_code == 1, res.output
    verdict = yaml.safe_load(out.read_text())
    status = {r["name"]: r["status"] for r in verdict["rules"]}
    assert status == {"step_time_median": "pass", "gpu_idle_pct": "regression", "peak_memory_mb": "pass", "data wait": "pass", "top_kernels.0.total_ms": "pass", "findings: no new finding >= high": "pass"}
    idle = next(r for r in verdict["rules"] if r["name"] == "gpu_idle_pct")
    assert idle["base"] == pytest.approx(23.0) and idle["current"] == pytest.approx(30.0)
    assert verdict["verdict"] == "regression" and verdict["exit_code"] == 1
    median = next(r for r in verdict["rules"] if r["name"] == "step_time_median")
    assert median["test"] == "mann-whitney" and 0 <= median["p_value"] <= 1 and median["n_base"] == 100


# ---- bad input: one line on stderr, exit 2 -------------------------------------------------

BAD_CONFIGS = [
    ("rules: [metric: step_time_median", "not valid YAML"),
    ({"rules": [{"metric": "step_time_ms.mediann", "max_regression_pct": 3}]}, "step_time_ms takes one of"),
    ({"rules": [{"metric": "step time", "max_regression_pct": 3}]}, "not an alias or a dotted report path"),
    ({"rules": [{"metric": "step_time_median", "max_regression_pct": -3}]}, "max_regression_pct must be a number"),
    ({"rules": [{"metric": "step_time_median", "max_regression_pct": "five"}]}, "max_regression_pct must be a number"),
    ({"rules": [{"metric": "step_time_median"}]}, "needs exactly one threshold"),
    ({"rules": [{"metric": "step_time_median", "max_regression_pct": 3, "max_regression_abs": 1}]}, "needs exactly one threshold"),
    ({"rules": [{"metric": "step_time_median", "max_regression_pct": 3, "direction": "down"}]}, "direction must be"),
    ({"rules": [{"metric": "step_time_median", "max_regression_pct": 3, "test": "t-test"}]}, "test must be one of"),
    ({"rules": [{"metric": "step_time_median", "max_regression_pct": 3, "treshold": 1}]}, "unknown key 'treshold'"),
    ({"rulez": []}, "unknown key 'rulez'"),
    ({"min_samples": 2}, "min_samples must be an integer >= 5"),
    ({"alpha": 0.9}, "alpha must be a number"),
    ({"findings": {"fail_on_new": "critical"}}, "fail_on_new must be one of"),
    ({"schema_version": 2}, "schema_version 2 is not supported"),
    ([1, 2], "must be a mapping"),
]


def _one_line_error(res: Any) -> str:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("stallscope: error: ")
    assert "Traceback" not in res.output
    return lines[0]


@pytest.mark.parametrize("config, message", BAD_CONFIGS)
def test_bad_gate_yaml_is_one_line_exit_2(tmp_path: Path, reports: dict[str, Path], config: Any, message: str) -> None:
    cfg = tmp_path / "gate.yaml"
    cfg.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    line = _one_line_error(gate("--baseline", str(reports["base"]), str(reports["same"]), "--config", str(cfg)))
    assert message in line and "gate.yaml" in line


def test_unknown_metric_path_suggests_the_right_one(tmp_path: Path, reports: dict[str, Path]) -> None:
    cfg = write(tmp_path / "gate.yaml", {"rules": [{"metric": "summary.breakdown_pct.data_waits_pct", "max_regression_abs": 5}]})
    line = _one_line_error(gate("--baseline", str(reports["base"]), str(reports["same"]), "-c", str(cfg)))
    assert "in neither report" in line and "did you mean summary.breakdown_pct.data_wait_pct" in line


def test_different_schema_versions_exit_2(tmp_path: Path, reports: dict[str, Path]) -> None:
    newer = make_report(20.0, seed=2)
    newer["schema_version"] = 2
    line = _one_line_error(gate("--baseline", str(reports["base"]), str(write(tmp_path / "v2.yaml", newer))))
    assert "different schema versions (baseline: 1, current: 2)" in line


def test_missing_samples_exit_2(tmp_path: Path, reports: dict[str, Path]) -> None:
    bare = make_report(20.0, seed=2)
    del bare["summary"]["step_time_ms"]["samples"]
    line = _one_line_error(gate("--baseline", str(reports["base"]), str(write(tmp_path / "bare.yaml", bare))))
    assert "no per-step samples" in line and "current" in line


@pytest.mark.parametrize("name, content, message", [
    ("cur.json", None, "no such file"),
    ("cur.yaml", "just text", "not a stallscope report"),
    ("cur.yaml", "kind: something-else\nschema_version: 1\nsummary: {}\n", "not a stallscope report"),
    ("cur.json", "{broken", "not a readable JSON report"),
])
def test_unreadable_reports_exit_2(tmp_path: Path, reports: dict[str, Path], name: str, content: Optional[str], message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    line = _one_line_error(gate("--baseline", str(reports["base"]), str(path)))
    assert message in line


# ---- outputs -------------------------------------------------------------------------------

JUNIT_XSD = """<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" elementFormDefault="qualified">
  <xs:complexType name="result" mixed="true">
    <xs:attribute name="message" type="xs:string"/>
    <xs:attribute name="type" type="xs:string"/>
  </xs:complexType>
  <xs:complexType name="testcase">
    <xs:sequence>
      <xs:choice minOccurs="0" maxOccurs="unbounded">
        <xs:element name="skipped" type="result"/>
        <xs:element name="error" type="result"/>
        <xs:element name="failure" type="result"/>
      </xs:choice>
      <xs:element name="system-out" type="xs:string" minOccurs="0"/>
      <xs:element name="system-err" type="xs:string" minOccurs="0"/>
    </xs:sequence>
    <xs:attribute name="name" type="xs:string" use="required"/>
    <xs:attribute name="classname" type="xs:string" use="required"/>
    <xs:attribute name="time" type="xs:decimal"/>
  </xs:complexType>
  <xs:complexType name="testsuite">
    <xs:sequence>
      <xs:element name="properties" minOccurs="0">
        <xs:complexType>
          <xs:sequence>
            <xs:element name="property" minOccurs="0" maxOccurs="unbounded">
              <xs:complexType>
                <xs:attribute name="name" type="xs:string" use="required"/>
                <xs:attribute name="value" type="xs:string" use="required"/>
              </xs:complexType>
            </xs:element>
          </xs:sequence>
        </xs:complexType>
      </xs:element>
      <xs:element name="testcase" type="testcase" minOccurs="0" maxOccurs="unbounded"/>
      <xs:element name="system-out" type="xs:string" minOccurs="0"/>
      <xs:element name="system-err" type="xs:string" minOccurs="0"/>
    </xs:sequence>
    <xs:attribute name="name" type="xs:string" use="required"/>
    <xs:attribute name="tests" type="xs:nonNegativeInteger" use="required"/>
    <xs:attribute name="failures" type="xs:nonNegativeInteger"/>
    <xs:attribute name="errors" type="xs:nonNegativeInteger"/>
    <xs:attribute name="skipped" type="xs:nonNegativeInteger"/>
    <xs:attribute name="time" type="xs:decimal"/>
  </xs:complexType>
  <xs:element name="testsuites">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="testsuite" type="testsuite" minOccurs="0" maxOccurs="unbounded"/>
      </xs:sequence>
      <xs:attribute name="name" type="xs:string"/>
      <xs:attribute name="tests" type="xs:nonNegativeInteger"/>
      <xs:attribute name="failures" type="xs:nonNegativeInteger"/>
      <xs:attribute name="errors" type="xs:nonNegativeInteger"/>
      <xs:attribute name="skipped" type="xs:nonNegativeInteger"/>
      <xs:attribute name="time" type="xs:decimal"/>
    </xs:complexType>
  </xs:element>
</xs:schema>
"""


def _check_junit_shape(root: ET.Element) -> None:
    """The XSD's rules, checked by hand, so the test holds where xmlschema is not installed."""
    assert root.tag == "testsuites"
    for suite in root:
        assert suite.tag == "testsuite" and {"name", "tests"} <= set(suite.attrib)
        cases = suite.findall("testcase")
        assert int(suite.get("tests", -1)) == len(cases)
        assert int(suite.get("failures", -1)) == sum(len(c.findall("failure")) for c in cases)
        assert int(suite.get("skipped", -1)) == sum(len(c.findall("skipped")) for c in cases)
        for case in cases:
            assert {"name", "classname"} <= set(case.attrib)
            tags = [child.tag for child in case]
            results = [t for t in tags if t in ("failure", "error", "skipped")]
            assert tags[: len(results)] == results and set(tags[len(results):]) <= {"system-out", "system-err"}


def test_junit_validates_with_the_failing_rule_as_failed_testcase(tmp_path: Path, reports: dict[str, Path]) -> None:
    short = write(tmp_path / "short.yaml", make_report(23.0, n=100, seed=3))
    junit = tmp_path / "out" / "gate.xml"
    res = gate("--baseline", str(reports["base"]), str(short), "--junit", str(junit))
    assert res.exit_code == 1
    root = ET.parse(junit).getroot()
    _check_junit_shape(root)
    xmlschema = pytest.importorskip("xmlschema")
    xmlschema.XMLSchema(JUNIT_XSD).validate(str(junit))
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {"environment", "step_time_median", "step_time_p90", "findings: no new finding >= high"}
    failure = cases["step_time_median"].find("failure")
    assert failure is not None and "beyond 3%" in failure.get("message", "")
    assert cases["step_time_p90"].find("failure") is not None  # +15 % is beyond p90's 10 % too
    assert cases["environment"].find("failure") is None
    assert cases["findings: no new finding >= high"].find("failure") is None
    assert root.get("failures") == "2"


def test_junit_marks_inconclusive_rules_as_skipped(tmp_path: Path, reports: dict[str, Path]) -> None:
    short = write(tmp_path / "short.yaml", make_report(20.0, n=10, seed=3))
    junit = tmp_path / "gate.xml"
    assert gate("--baseline", str(reports["base"]), str(short), "--junit", str(junit)).exit_code == 3
    root = ET.parse(junit).getroot()
    _check_junit_shape(root)
    skipped = [c.get("name") for c in root.iter("testcase") if c.find("skipped") is not None]
    assert skipped == ["step_time_median", "step_time_p90"]


def test_markdown_goes_to_the_github_step_summary(tmp_path: Path, reports: dict[str, Path]) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    res = gate("--baseline", str(reports["base"]), str(reports["slow"]), "-q", env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert res.exit_code == 1 and res.output == ""
    text = summary.read_text()
    assert text.startswith("earlier step\n### stallscope gate: ❌ regression\n")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| Rule | Baseline | Current | Change | Threshold | p-value | Result |"
    median_row = next(r for r in rows if r.startswith("| step_time_median |"))
    cells = [c.strip() for c in median_row.strip("|").split(" | ")]
    assert len(cells) == 7 and cells[3].startswith("+") and cells[4] == "3%" and "❌ regression" in cells[6]
    assert "| findings: no new finding >= high |" in text


def test_update_baseline_copies_atomically_and_refuses_bad_input(tmp_path: Path, reports: dict[str, Path]) -> None:
    baseline = tmp_path / "ci" / "baseline.yaml"
    res = gate("--baseline", str(baseline), str(reports["same"]), "--update-baseline")
    assert res.exit_code == 0, res.output
    assert baseline.read_bytes() == reports["same"].read_bytes()
    before = baseline.read_bytes()
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 1\n")
    _one_line_error(gate("--baseline", str(baseline), str(bad), "--update-baseline"))
    assert baseline.read_bytes() == before
    assert sorted(p.name for p in baseline.parent.iterdir()) == ["baseline.yaml"]  # no temp file left
    res = gate("--baseline", str(tmp_path / "b.json"), str(reports["slow"]), "--update-baseline")
    assert res.exit_code == 0 and json.loads((tmp_path / "b.json").read_text())["schema_version"] == 1


def test_gate_help_lists_both_modes() -> None:
    res = CliRunner().invoke(app, ["gate", "--help"])
    assert res.exit_code == 0 and "check" in res.output and "ab" in res.output
