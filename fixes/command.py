"""``stallscope patch plan REPORT`` and ``stallscope run --patch-from REPORT -- CMD``.

Neither imports torch: the plan reads the report and the fix registry (each ``fix.py`` is
cheap to import); ``run`` starts CMD with the patch bootstrap on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stallscope.analyzers.inputs import open_report
from stallscope.fixes.base import registered_fixes
from stallscope.fixes.startup import load_kept_fixes, patch_entries
from stallscope.profiler._bootstrap import inject
from stallscope.profiler.common import ToolError

__all__ = ["Plan", "PlanItem", "build_plan", "plan_command", "run_command"]


@dataclass
class PlanItem:
    """One fix the report calls for: what it would do, why, and what an auto-patch run decided."""

    fix_id: str
    findings: list[str] = field(default_factory=list)
    saving_ms: float = 0.0
    status: str = "would apply"  # would apply | advisory | unavailable | kept | rolled back | skipped | applied
    description: str = ""
    scope: str = ""
    tolerance: dict[str, Any] = field(default_factory=dict)
    earlier: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "fix": self.fix_id,
            "status": self.status,
            "findings": self.findings,
            "est_saving_ms_per_step": round(self.saving_ms, 4),
            "scope": self.scope,
            "description": self.description,
            "tolerance": self.tolerance or None,
            "auto_patch_decision": self.earlier or None,
        }


@dataclass
class Plan:
    """What ``--auto-patch`` would try for a report, in order of estimated saving."""

    source: str
    items: list[PlanItem]
    other_fixes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "kind": "stallscope-patch-plan",
            "report": self.source,
            "fixes": [i.to_dict() for i in self.items],
            "checked_in_process": self.other_fixes,
        }

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        if not self.items:
            parts: list[Any] = [Text(f"No finding in {self.source} names a fix.", style="bold")]
        else:
            parts = [Text(f"Patch plan for {self.source}", style="bold")]
        for i in self.items:
            style = {"would apply": "green", "advisory": "yellow"}.get(i.status, "red")
            line = Text("  ")
            line.append(f"{i.fix_id}  ", style="bold")
            line.append(i.status, style=style)
            line.append(f"  ~{i.saving_ms:.2f} ms/step  answers {', '.join(i.findings)}")
            parts.append(line)
            parts.append(Text(f"      {i.description}"))
            if i.earlier:
                parts.append(Text(f"      earlier auto-patch: {i.earlier}", style="dim"))
        if self.other_fixes:
            parts.append(
                Text(
                    "Also checked in-process by --auto-patch (no finding needed): " + ", ".join(self.other_fixes),
                    style="dim",
                )
            )
        return Group(*parts)


def _load_report(path: Path) -> dict[str, Any]:
    """The report ``patch plan`` reads: a report file, or a run directory's saved report (diagnosed
    on the spot when it has none; that path loads numpy and the trace decoders)."""
    return dict(open_report(path, use_saved=True, need="findings").report)


def _earlier_decisions(report: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """fix id -> (decision, one line) of an earlier auto-patch run recorded in the report."""
    out: dict[str, tuple[str, str]] = {}
    for e in patch_entries(report.get("patches") or {}):
        speed = f", {e['speedup']:.2f}x" if isinstance(e.get("speedup"), (int, float)) else ""
        decision = str(e.get("decision"))
        out[str(e["id"])] = (decision, f"{decision}{speed}")
    return out


def build_plan(report: Mapping[str, Any], source: str = "report") -> Plan:
    """The plan for a report dict: fixes named by its findings, joined with the registry."""
    registry = registered_fixes()
    findings = report.get("findings")
    if not isinstance(findings, list):
        raise ToolError(
            f"{source}: no `findings` list; is this a stallscope report? (run `stallscope diagnose RUN -o report.yaml`)"
        )
    earlier = _earlier_decisions(report)
    items: dict[str, PlanItem] = {}
    for f in findings:
        if not isinstance(f, Mapping):
            continue
        saving = float(((f.get("impact") or {}).get("est_saving_ms_per_step")) or 0.0)
        for raw in f.get("fixes") or []:
            fix_id = str(raw).replace("_", "-")
            item = items.setdefault(fix_id, PlanItem(fix_id))
            item.findings.append(str(f.get("id", "?")))
            item.saving_ms = max(item.saving_ms, saving)
    for fix_id, item in items.items():
        cls = registry.get(fix_id)
        decision, item.earlier = earlier.get(fix_id, ("", ""))
        if cls is None:
            item.status, item.description = "unavailable", "no such fix in this version (advice only)"
            continue
        item.description, item.scope = cls.description, cls.scope
        item.tolerance = cls.tolerance.to_dict()
        if getattr(cls, "advisory", "") or cls.scope not in ("module", "process", "dataloader"):
            item.status = "advisory"
        elif decision in ("kept", "rolled_back", "skipped", "applied"):
            # auto-patch already decided on this run: say what it did, not what it would do
            item.status = decision.replace("_", " ")
    ordered = sorted(items.values(), key=lambda i: (i.status in ("advisory", "unavailable"), -i.saving_ms, i.fix_id))
    others = sorted(
        i
        for i, c in registry.items()
        if i not in items and not getattr(c, "advisory", "") and c.scope in ("module", "process", "dataloader")
    )
    return Plan(source, ordered, others)


def plan_command(report: Path, fmt: str = "console") -> int:
    """Print the patch plan for ``report`` (console table, or YAML with ``fmt="yaml"``)."""
    if fmt not in ("console", "yaml"):
        raise ToolError(f"--format {fmt}: use console or yaml")
    plan = build_plan(_load_report(Path(report)), str(report))
    if fmt == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(plan.to_dict(), sort_keys=False))
    else:
        from rich.console import Console

        Console().print(plan)
    return 0


def run_command(cmd: Sequence[str], patch_from: Path) -> int:
    """Run ``cmd`` with the fixes an earlier auto-patch run kept, applied at start-up."""
    if not cmd:
        raise ToolError(
            "no command given; put it after `--`, e.g. stallscope run --patch-from report.yaml -- python train.py"
        )
    source = Path(patch_from).resolve()
    kept = load_kept_fixes(source)
    env = inject(dict(os.environ))
    env["STALLSCOPE_PATCH_FROM"] = str(source)
    names = ", ".join(kept) if kept else "none (the earlier run kept no fix)"
    print(
        f"stallscope: applying the fixes kept in {patch_from}: {names}; parity is checked on the first batch",
        file=sys.stderr,
    )
    try:
        proc = subprocess.Popen(list(cmd), env=env)
    except FileNotFoundError:
        raise ToolError(f"{cmd[0]}: command not found") from None
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:  # the child got the same SIGINT; wait for it to finish
            continue
    return 128 + (-code) if code < 0 else code
