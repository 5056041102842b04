"""stallscope.analyzers.deep: ncu command, CSV parsing, and the one-notice behaviour without ncu."""
from __future__ import annotations

import subprocess

import torch

from stallscope.analyzers import deep
from tests.analyzer_traces import context, gpu_fixture, record

# The layout `ncu --csv --page raw` prints: a header of metric names, a units row, one row per kernel.
NCU_RAW = '''==PROF== Connected to process 123
"ID","Kernel Name","gpu__time_duration.sum","dram__throughput.avg.pct_of_peak_sustained_elapsed","sm__throughput.avg.pct_of_peak_sustained_elapsed","smsp__inst_executed_op_global_atom.sum","smsp__inst_executed_op_global_red.sum","smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio","smsp__average_warps_issue_stalled_selected_per_issue_active.ratio","smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio","smsp__average_warps_issue_stalled_wait_per_issue_active.ratio"
"","","usecond","%","%","inst","inst","","","",""
"0","rational_bwd_kernel","1,030.50","1.21","3.40","0","48,496,640","981.51","1.00","12.5","0.8"
'''


def test_kernel_function_name_strips_templates_and_arguments():
    assert deep.kernel_function_name(
        "void at::native::vectorized_elementwise_kernel<4, at::native::AbsFunctor<float>, std::array<char*, 2ul> >(int, X, Y)"
    ) == "vectorized_elementwise_kernel"
    assert deep.kernel_function_name("rational_bwd_kernel") == "rational_bwd_kernel"
    assert deep.kernel_function_name("sm90_xmma_gemm_f32f32_f32f32_f32_nn_n_tilesize128x128x8") == (
        "sm90_xmma_gemm_f32f32_f32f32_f32_nn_n_tilesize128x128x8")


def test_ncu_command_selects_one_steady_state_launch():
    cmd = deep.ncu_command("ncu", "void foo<1>(int)", 12, ["python", "train.py"])
    assert cmd[cmd.index("--clock-control") + 1] == "none"
    assert cmd[cmd.index("--kernel-name") + 1] == "regex:^foo$"
    assert cmd[cmd.index("--launch-skip") + 1] == "12" and cmd[cmd.index("--launch-count") + 1] == "1"
    assert cmd[-3:] == ["--", "python", "train.py"]


def test_parse_raw_csv():
    ev = deep.parse_ncu_csv(NCU_RAW)
    assert ev["ncu_duration_us"] == 1030.5
    assert ev["ncu_dram_throughput_pct"] == 1.21 and ev["ncu_sm_throughput_pct"] == 3.4
    assert ev["ncu_global_atomic_instructions"] == 48_496_640
    assert ev["ncu_top_stalls"][0].startswith("long_scoreboard: 981.51")
    assert not any(s.startswith("selected") for s in ev["ncu_top_stalls"])
    assert deep.parse_ncu_csv("==ERROR== something failed") is None


def test_without_ncu_one_notice_and_findings_untouched(tmp_path, monkeypatch):
    monkeypatch.setattr(deep, "find_ncu", lambda: None)
    ctx = context(record(tmp_path / "t.json", lambda i: torch.mm(torch.randn(8, 8), torch.randn(8, 8)), stacks=False))
    notices = deep.deepen(ctx, [])
    assert len(notices) == 1 and "not installed" in notices[0]


def test_plain_trace_has_no_command_to_replay(tmp_path, monkeypatch):
    monkeypatch.setattr(deep, "find_ncu", lambda: "/usr/bin/ncu")
    ctx = context(record(tmp_path / "t.json", lambda i: torch.mm(torch.randn(8, 8), torch.randn(8, 8)), stacks=False))
    notices = deep.deepen(ctx, [])
    assert len(notices) == 1 and "no recorded command" in notices[0]


def test_counters_land_in_the_finding_that_names_the_kernel(monkeypatch):
    from stallscope.analyzers.run import run_analyzers

    ctx = gpu_fixture("grkan_baseline")
    ctx.meta = {"command": ["python3", "train.py"], "cwd": ".", "window": {"skip": 1}}
    findings = run_analyzers(ctx).findings
    calls = []

    def fake_ncu(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, NCU_RAW, "")

    monkeypatch.setattr(deep, "find_ncu", lambda: "/usr/bin/ncu")
    deep.deepen(ctx, findings, top_n=1, runner=fake_ncu)
    grkan = [f for f in findings if f.id == "grkan-atomic-backward"][0]
    assert len(calls) == 1 and "rational_bwd_kernel" in calls[0][calls[0].index("--kernel-name") + 1]
    assert grkan.evidence["ncu_dram_throughput_pct"] == 1.21


def test_refused_counters_give_one_notice(monkeypatch):
    ctx = gpu_fixture("grkan_baseline")
    ctx.meta = {"command": ["python3", "train.py"]}
    monkeypatch.setattr(deep, "find_ncu", lambda: "/usr/bin/ncu")
    refuse = lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "==ERROR== ERR_NVGPUCTRPERM - no permission")  # noqa: E731
    notices = deep.deepen(ctx, [], top_n=3, runner=refuse)
    assert len(notices) == 1 and "ERR_NVGPUCTRPERM" in notices[0]


def test_deepen_report_accepts_a_path_and_says_once_without_ncu(tmp_path, monkeypatch):
    monkeypatch.setattr(deep, "find_ncu", lambda: None)
    path = record(tmp_path / "t.json", lambda i: torch.mm(torch.randn(8, 8), torch.randn(8, 8)), stacks=False)
    report = {"findings": [{"id": "x", "where": {"kernels": ["k"]}, "evidence": {"a_ms": 1.0}}]}
    notices = deep.deepen_report(str(path), report)
    assert len(notices) == 1 and report["findings"][0]["evidence"] == {"a_ms": 1.0}
