"""gate.yaml validation never crashes, paths resolve as documented, the fingerprint reads real report environments."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from stallscope.analyzers.gate.evaluate import evaluate_findings, resolve
from stallscope.analyzers.gate.fingerprint import compare_environments, fingerprint
from stallscope.analyzers.gate.rules import ALIASES, FindingRule, normalize_path, parse_config
from stallscope.profiler.common import ToolError
from tests.test_gate_cli import finding, make_report

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 200),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["step_time_median", "summary.step_time_ms.p90", "high", "off", "bootstrap", "lower_is_better"]),
)
keys = st.one_of(
    st.integers(0, 2),
    st.sampled_from(
        [
            "rules",
            "findings",
            "alpha",
            "min_samples",
            "run_to_run_cv_pct",
            "baseline_runs",
            "schema_version",
            "metric",
            "max_regression_pct",
            "max_regression_abs",
            "direction",
            "test",
            "name",
            "required",
            "fail_on_new",
            "allow",
            "other",
        ]
    ),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(documents)
@example({"findings": {"fail_on_new": []}})
@example({1: 2, "x": 3})
@example({"rules": [{"metric": "step_time_median", "max_regression_pct": 3, 7: 1}]})
@example({"rules": [{"metric": ["a"], "max_regression_pct": 3}]})
def test_any_document_is_a_config_or_one_clear_error(doc: object) -> None:
    try:
        config = parse_config(doc, "gate.yaml")
    except ToolError as exc:
        message = str(exc)
        assert message.startswith("gate.yaml") and "\n" not in message
        return
    for rule in config.rules:
        assert (rule.max_regression_pct is None) != (rule.max_regression_abs is None)
        assert rule.path.split(".")[0] in ("summary", "top_kernels", "per_rank")


def test_variance_keys_validate_with_one_line_errors() -> None:
    config = parse_config({"run_to_run_cv_pct": 2.5, "baseline_runs": 4})
    assert config.run_to_run_cv_pct == 2.5 and config.baseline_runs == 4
    defaults = parse_config(None)
    assert defaults.run_to_run_cv_pct == 2.5 and defaults.baseline_runs == 20
    for doc, message in (
        ({"run_to_run_cv_pct": -1}, "run_to_run_cv_pct must be a number in [0, 50]"),
        ({"run_to_run_cv_pct": "2%"}, "run_to_run_cv_pct must be a number"),
        ({"baseline_runs": 0}, "baseline_runs must be an integer in [1, 1000]"),
        ({"baseline_runs": True}, "baseline_runs must be an integer"),
    ):
        try:
            parse_config(doc, "gate.yaml")
        except ToolError as exc:
            assert message in str(exc) and str(exc).startswith("gate.yaml")
        else:
            raise AssertionError(f"{doc} was accepted")


def test_paths_aliases_and_summary_shorthand() -> None:
    report = make_report(20.0, n=30)
    assert normalize_path("breakdown_pct.data_wait_pct", "x") == "summary.breakdown_pct.data_wait_pct"
    assert resolve(report, normalize_path("step_time_median", "x")) == report["summary"]["step_time_ms"]["median"]
    assert resolve(report, "top_kernels.0.name") == "gemm"
    assert resolve(report, ALIASES["gpu_idle_pct"]) == 23.0  # data wait 10 + sync 5 + launch 3 + other host 5
    assert (
        parse_config({"rules": [{"metric": "summary.throughput_samples_per_s", "max_regression_pct": 5}]})
        .rules[0]
        .direction
        == "higher_is_better"
    )


def test_findings_rule_severity_floor_and_allow_list() -> None:
    base = make_report(findings=[{"id": "old", "severity": "high"}])
    cur = make_report(
        findings=[
            {"id": "old", "severity": "high"},
            {"id": "new-low", "severity": "low"},
            {"id": "new-med", "severity": "medium"},
        ]
    )
    assert evaluate_findings(FindingRule("high"), base, cur).status == "pass"
    result = evaluate_findings(FindingRule("medium"), base, cur)
    assert result.status == "regression" and result.new_findings == ["new-med (medium)"]
    assert evaluate_findings(FindingRule("low", ["new-med", "new-low"]), base, cur).status == "pass"
    assert evaluate_findings(FindingRule(None), base, cur).status == "skipped"
    assert finding("x", "info")["severity"] == "info"


def test_fingerprint_reads_the_diagnose_environment_layout() -> None:
    # The layout analyzers/report.py writes (environment from meta.yaml and the trace).
    env = {
        "gpu": {"index": 0, "name": "NVIDIA H200", "memory_gb": 139.8, "compute_capability": "9.0"},
        "gpu_count": 1,
        "driver": "570.133",
        "cuda": "13.0",
        "torch": "2.11.0+cu130",
        "python": "3.12.3",
        "host": "node-7",
        "world_size": 1,
        "backend": None,
        "command": ["python", "train.py"],
        "git": {"commit": "abc", "dirty": False},
        "device_name": "NVIDIA H200",
        "clocks": {"sm_clock_max_mhz": 1980.0, "power_limit_w": 700.0, "sm_clock_at_rest_mhz": 345.0},
    }
    fp = fingerprint(env)
    assert (
        fp["gpu_model"] == "NVIDIA H200" and fp["driver"] == "570.133" and fp["cuda"] == "13.0" and fp["gpu_count"] == 1
    )
    assert fp["clock:clocks.sm_clock_max_mhz"] == 1980.0 and fp["rest:clocks.sm_clock_at_rest_mhz"] == 345.0
    other_host = dict(env, host="node-9", command=["python", "train.py", "--new"], git={"commit": "def", "dirty": True})
    assert compare_environments(env, other_host).matches
    assert not compare_environments(env, dict(env, torch="2.12.0+cu130")).matches
    cpu = {"gpu": None, "gpu_count": 0, "driver": None, "cuda": None, "torch": "2.13.0+cpu"}
    check = compare_environments(cpu, cpu)
    assert check.matches and fingerprint(cpu) == {"gpu_count": 0, "torch": "2.13.0+cpu"}


REPORT_PATHS = [
    "schema_version",
    "summary",
    "summary.step_time_ms",
    "summary.step_time_ms.samples",
    "summary.step_time_ms.median",
    "summary.breakdown_pct",
    "summary.breakdown_pct.data_wait_pct",
    "summary.peak_memory_mb",
    "findings",
    "findings.0",
    "findings.0.severity",
    "findings.0.id",
    "environment",
    "environment.gpu",
    "top_kernels",
    "top_kernels.0.total_ms",
]


def _mutate(report: dict, path: str, value: object) -> dict:
    parts = path.split(".")
    node: object = report
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
        else:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return report
    last = parts[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        if value == "<delete>":
            node.pop(last, None)
        else:
            node[last] = value
    return report


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(REPORT_PATHS), st.one_of(st.just("<delete>"), scalars, st.lists(scalars, max_size=3))
        ),
        min_size=1,
        max_size=3,
    ),
    st.booleans(),
    st.booleans(),
)
def test_damaged_reports_give_a_verdict_or_one_clear_error(
    mutations: list, on_current: bool, several_runs: bool
) -> None:
    from stallscope.analyzers.gate.command import judge

    config = parse_config(
        {
            "rules": [
                {"metric": "step_time_median", "max_regression_pct": 3},
                {"metric": "step_time_p90", "max_regression_pct": 10},
                {"metric": "gpu_idle_pct", "max_regression_abs": 5},
                {"metric": "peak_memory_mb", "max_regression_pct": 10},
                {"metric": "top_kernels.0.total_ms", "max_regression_pct": 10},
            ],
            "findings": {"fail_on_new": "low"},
        }
    )
    base, current = make_report(20.0, n=30, seed=1), make_report(20.0, n=30, seed=2)
    others = [make_report(20.0, n=30, seed=s) for s in (3, 4, 5)]
    for path, value in mutations:
        _mutate(current if on_current else base, path, value)
    runs = ([base, *others[:2]], [current, others[2]]) if several_runs else None
    try:
        verdict = judge(base, current, config, baseline_name="b", current_name="c", runs=runs)
    except ToolError as exc:
        assert "\n" not in str(exc)
        return
    assert verdict.exit_code in (0, 1, 3)
    verdict.to_junit(), verdict.to_markdown(), verdict.to_dict()


def test_a_huge_integer_in_gate_config_is_one_line_not_an_overflow() -> None:
    """An integer too big for a float (a parsed config need not come from our YAML reader) is a
    usage error naming the key, not an OverflowError from math.isfinite."""
    try:
        parse_config({"alpha": 10**400})
    except ToolError as exc:
        assert "alpha must be a number" in str(exc)
    else:
        raise AssertionError("a huge alpha was accepted")
