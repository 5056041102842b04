"""`stallscope patch plan`, `stallscope run --patch-from`, start-up patching and the Python API."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from stallscope import fixes
from stallscope.cli import app
from fix_settings import GemmNet, kat_like_mlp
from stallscope.fixes.api import NoEffectWarning
from stallscope.fixes.autopatch import attach_from_report, load_kept_fixes
from stallscope.fixes.command import build_plan
from stallscope.profiler.common import ToolError

ROOT = Path(__file__).resolve().parents[1]

REPORT = {
    "schema_version": 1,
    "findings": [
        {"id": "grkan-atomic-backward", "severity": "high", "impact": {"step_time_pct": 90.0, "est_saving_ms_per_step": 80.0},
         "fixes": ["flashkat"]},
        {"id": "input-pipeline-data-wait", "impact": {"est_saving_ms_per_step": 3.0}, "fixes": ["dataloader_workers", "gpu_preprocess"]},
        {"id": "fp32-matmul-off-tensor-cores", "impact": {"est_saving_ms_per_step": 5.0}, "fixes": ["tf32", "amp"]},
        {"id": "many-tiny-copies", "impact": {"est_saving_ms_per_step": 1.0}, "fixes": []},
    ],
    "patches": {"kind": "stallscope-patches", "fixes": [
        {"id": "flashkat", "decision": "kept", "speedup": 41.5},
        {"id": "tf32", "decision": "rolled_back", "speedup": 1.01},
    ]},
}


def test_plan_orders_by_saving_and_joins_the_registry():
    plan = build_plan(REPORT, "r.yaml")
    by_id = {i.fix_id: i for i in plan.items}
    assert [i.fix_id for i in plan.items][:3] == ["flashkat", "tf32", "dataloader-workers"]
    # an earlier auto-patch run decided these: the plan says what it did, not "would apply"
    assert by_id["flashkat"].status == "kept" and by_id["flashkat"].earlier == "kept, 41.50x"
    assert by_id["tf32"].status == "rolled back" and by_id["tf32"].earlier == "rolled_back, 1.01x"
    assert by_id["dataloader-workers"].status == "would apply"
    assert by_id["dataloader-workers"].findings == ["input-pipeline-data-wait"]  # underscore ids normalized
    assert by_id["amp"].status == "unavailable"
    assert "cudnn-benchmark" in plan.other_fixes and "flashkat" not in plan.other_fixes


def test_plan_cli_console_and_yaml(tmp_path):
    report = tmp_path / "report.yaml"
    report.write_text(yaml.safe_dump(REPORT))
    runner = CliRunner()
    out = runner.invoke(app, ["patch", "plan", str(report)])
    assert out.exit_code == 0, out.output
    assert "flashkat" in out.output and "would apply" in out.output and "rolled back" in out.output
    out = runner.invoke(app, ["patch", "plan", str(report), "--format", "yaml"])
    doc = yaml.safe_load(out.output)
    assert doc["kind"] == "stallscope-patch-plan" and doc["fixes"][0]["fix"] == "flashkat"
    bad = tmp_path / "bad.yaml"
    bad.write_text("just: text\n")
    out = runner.invoke(app, ["patch", "plan", str(bad)])
    assert out.exit_code == 2 and "no `findings` list" in out.output


def test_kept_fixes_need_every_rank_to_keep(tmp_path):
    for rank, decision in ((0, "kept"), (1, "rolled_back")):
        (tmp_path / f"rank{rank}").mkdir()
        (tmp_path / f"rank{rank}" / "patches.yaml").write_text(yaml.safe_dump(
            {"fixes": [{"id": "tf32", "decision": decision}, {"id": "flashkat", "decision": "kept"}]}))
    assert load_kept_fixes(tmp_path) == ["flashkat"]
    (tmp_path / "none.yaml").write_text(yaml.safe_dump({"findings": []}))
    with pytest.raises(ToolError, match="no auto-patch decisions"):
        load_kept_fixes(tmp_path / "none.yaml")


def test_run_patch_from_applies_kept_fixes_at_startup(tmp_path):
    (tmp_path / "patches.yaml").write_text(yaml.safe_dump({"fixes": [
        {"id": "flashkat", "decision": "kept"}, {"id": "dataloader-workers", "decision": "kept"},
        {"id": "tf32", "decision": "rolled_back"}]}))
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, torch\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from torch.utils.data import DataLoader\n"
        "from fix_settings import kat_like_mlp, SquaresDataset\n"
        "torch.set_num_threads(1)\n"
        "model = kat_like_mlp()\n"
        "loader = DataLoader(SquaresDataset(8), batch_size=4)\n"
        "for epoch in range(2):\n"
        "    for xb, _ in loader:\n"
        "        model(xb[:, :1].repeat(1, 16)).sum().backward()\n"
        "print('fast', [bool(getattr(m.__dict__.get('rational'), 'stallscope_fast', False)) for m in model if hasattr(m, 'weight_numerator')])\n"
        "print('workers', loader.num_workers, 'precision', torch.get_float32_matmul_precision())\n"
        "sys.exit(3)\n"
    )
    out = subprocess.run([sys.executable, "-m", "stallscope.cli", "run", "--patch-from", str(tmp_path / "patches.yaml"), "--",
                          sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert out.returncode == 3, out.stderr  # the target's exit code
    assert "fast [True, True]" in out.stdout
    assert "workers 1" in out.stdout or "workers 0" not in out.stdout
    assert "precision highest" in out.stdout  # tf32 was rolled back earlier: not applied
    assert "flashkat applied to 2 target(s)" in out.stderr and "parity ok on the first batch" in out.stderr


def test_startup_parity_failure_reverts_before_the_batch_runs(tmp_path):
    from test_fix_autopatch import Broken, SlowTanh, _slow, make_model

    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"fixes": [{"id": "test-broken", "decision": "kept"}]}))
    lines: list[str] = []
    patcher = attach_from_report(tmp_path / "p.yaml", fixes={"test-broken": Broken}, log=lines.append)
    try:
        model = make_model()
        x = torch.randn(6, 8)
        torch.manual_seed(0)
        out = model(x)
        assert isinstance(model[2], SlowTanh) and model[2].impl is _slow
        assert any("parity failed on the first batch" in line for line in lines), lines
        reference = make_model()
        torch.manual_seed(0)
        assert torch.equal(out, reference(x))  # the first batch itself ran unpatched
    finally:
        patcher.remove()


def test_python_api_apply_and_revert_keep_structure():
    model = kat_like_mlp()
    opt = torch.optim.Adam(model.parameters())
    keys, params = list(model.state_dict()), [id(p) for p in model.parameters()]
    x = torch.randn(2, 3, 16)
    before = model(x).detach()
    handles = fixes.apply(model, ["flashkat"])
    assert len(handles) == 2 and all(getattr(m.rational, "stallscope_fast", False) for m in (model[1], model[3]))
    assert list(model.state_dict()) == keys and [id(p) for p in model.parameters()] == params
    assert [id(p) for p in opt.param_groups[0]["params"]] == params
    fixes.revert(handles)
    assert not any(getattr(m.rational, "stallscope_fast", False) for m in (model[1], model[3]))
    assert torch.equal(model(x).detach(), before)
    with pytest.warns(NoEffectWarning, match="flashkat"):
        assert fixes.apply(GemmNet(), ["flashkat"]) == []
    with pytest.raises(ToolError, match="unknown fix"):
        fixes.apply(model, ["no-such-fix"])


def test_plan_does_not_import_torch():
    code = ("import sys; from stallscope.fixes.command import build_plan; "
            "build_plan({'findings': [{'id': 'x', 'fixes': ['flashkat', 'tf32', 'dataloader_workers']}]}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
