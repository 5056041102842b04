"""Render a report dict: rich console views (``__rich__`` objects) and markdown.

The console shows the environment, the steps and step-time statistics, a breakdown bar and the
findings ranked by impact with their evidence. Markdown carries the same content for PR
comments and GitHub step summaries. No torch import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from stallscope.analyzers.views.report import views_of
from stallscope.analyzers.vocab import short_kernel_name

__all__ = [
    "BREAKDOWN_PARTS",
    "AccountingView",
    "BreakdownBar",
    "FindingView",
    "FixAdvice",
    "ReportView",
    "fix_advice_lines",
    "to_markdown",
]

# The advice text of a fix id, or None: supplied by the caller (the CLI passes
# ``stallscope.fixes.advice_for``), so the analysis side needs nothing from fixes/.
FixAdvice = Callable[[str], Optional[str]]

BREAKDOWN_PARTS = (
    ("compute_pct", "compute", "green"),
    ("memory_pct", "memcpy/set", "blue"),
    ("comm_exposed_pct", "comm exposed", "magenta"),
    ("data_wait_pct", "data wait", "red"),
    ("sync_wait_pct", "sync wait", "yellow"),
    ("launch_overhead_pct", "launch overhead", "cyan"),
    ("host_other_pct", "other host", "white"),
)


def fix_advice_lines(finding: dict[str, Any], fix_advice: FixAdvice | None) -> list[tuple[str, str]]:
    """``(fix id, advice)`` for each of the finding's fixes that ``fix_advice`` knows."""
    if fix_advice is None:
        return []
    out = []
    for fix_id in finding.get("fixes") or []:
        text = fix_advice(str(fix_id))
        if text:
            out.append((str(fix_id), text))
    return out


def kernel_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's ``top_kernels`` with every field a renderer reads (a report from disk may lack
    some): the name as text, the rest None when absent."""
    rows = report.get("top_kernels")
    out = []
    for k in rows if isinstance(rows, list) else []:
        if isinstance(k, dict):
            out.append(
                {**k, "name": str(k.get("name", "?")), **{f: k.get(f) for f in ("count", "total_ms", "pct", "class")}}
            )
    return out


def nothing_found(r: dict[str, Any]) -> str:
    """Why a report has no finding, with what was looked at: the steps, the analyzers that ran and
    those that could not (a report over no steps found nothing because it looked at nothing)."""
    summ, an = r.get("summary") or {}, r.get("analyzers") or {}
    ran = an.get("ran") or []
    skipped = an.get("skipped") or {}
    if not summ.get("steps") and (r.get("source") or {}).get("kind") == "run-dir":
        return (
            "nothing analysed: no step of the run was traced (the trace window was not reached or not "
            "written; see the notes below); lower --skip or run more steps"
        )
    if not summ.get("steps"):
        return (
            "nothing analysed: the trace has no steps (no ProfilerStep ranges or step markers in it); "
            "record at least one step in the window (stallscope profile --skip/--steps, or torch.profiler with "
            "schedule and prof.step())"
        )
    st = summ.get("step_time_ms") or {}
    looked = f"{summ.get('steps')} traced steps (median {_num(st.get('median'))} ms)"
    not_run = f"; could not run: {', '.join(sorted(skipped))}" if skipped else ""
    return f"no bottleneck above the noise threshold in {looked}; {len(ran)} analyzers ran ({', '.join(ran)}){not_run}"


def _steps_line(summ: dict[str, Any], src: dict[str, Any]) -> str:
    """``24 in the run, 5 traced (from ProfilerStep)``; a lone trace has only the traced count."""
    traced = f"{summ.get('steps')} traced (from {src.get('steps_from')})"
    return f"{summ['run_steps']} in the run, {traced}" if summ.get("run_steps") is not None else traced


def _phase_line(ph: dict[str, Any]) -> str:
    """One auto-patch phase's step time: ``name (steps a-b): median .. ms, p90 .. ms, n steps``."""
    return (
        f"{ph.get('phase')}: median {_num(ph.get('median'))} ms, p90 {_num(ph.get('p90'))} ms, "
        f"{ph.get('steps')} steps (rank {ph.get('rank')})"
    )


def _num(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):  # evidence flags read as words, not Python's True/False
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}{unit}" if abs(v) < 1e4 else f"{v:,.0f}{unit}"
    return f"{v}{unit}"


class BreakdownBar:
    """A one-line stacked bar of the step-time breakdown, with a legend."""

    def __init__(self, pct: dict[str, float], width: int = 60, gpu: bool = True) -> None:
        self.pct, self.width, self.gpu = pct, width, gpu

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        bar = Text()
        legend = Text()
        used = 0
        parts = [(k, label, colour, float(self.pct.get(k) or 0.0)) for k, label, colour in BREAKDOWN_PARTS]
        for i, (_, label, colour, v) in enumerate(parts):
            cells = round(self.width * v / 100.0) if i < len(parts) - 1 else max(self.width - used, 0)
            cells = min(cells, self.width - used)
            used += cells
            bar.append("█" * cells, style=colour)
            if v >= 0.05:
                legend.append("■ ", style=colour)
                legend.append(f"{label} {v:.1f}%  ")
        title = Text("step time breakdown" + ("" if self.gpu else " (CPU timeline: no GPU events)"), style="bold")
        return Group(title, bar, legend)


class AccountingView:
    """The report's step accounting in a few lines: each part of the step at or above the noise
    threshold, the findings whose savings explain it, and why the rest is unexplained."""

    def __init__(self, report: dict[str, Any]) -> None:
        acc = report.get("accounting")
        self.acc: dict[str, Any] = acc if isinstance(acc, dict) else {}

    def rows(self) -> list[dict[str, Any]]:
        """The parts above noise, in breakdown order, as dicts with ``label`` added."""
        buckets = self.acc.get("buckets") or {}
        noise = float(self.acc.get("noise_pct") or 0.0)
        out = []
        for key, label, _ in BREAKDOWN_PARTS:
            b = buckets.get(key.removesuffix("_pct"))
            if isinstance(b, dict) and float(b.get("pct") or 0.0) >= noise:
                out.append({**b, "label": label})
        return out

    def head(self) -> str:
        a = self.acc
        capped = (
            f", capped from {_num(a.get('uncapped_ms_per_step'))}"
            if a.get("capped") and a.get("uncapped_ms_per_step")
            else ""
        )
        return (
            f"step accounting (parts >= {_num(a.get('noise_pct'))} % of the step): findings claim "
            f"{_num(a.get('claimed_ms_per_step'))} of {_num(a.get('step_ms'))} ms/step{capped}"
        )

    @staticmethod
    def line(b: dict[str, Any]) -> str:
        """``sync wait 43.4 %: 38.1 % by blocking-syncs; unexplained 5.3 %: why``."""
        by = ", ".join(b.get("explained_by") or [])
        rank = f" (rank {b['rank']})" if b.get("rank") is not None else ""
        text = f"{b['label']}{rank} {_num(b.get('pct'))} %: " + (
            f"{_num(b.get('explained_pct'))} % by {by}" if by else "no finding claims it"
        )
        if b.get("why"):
            text += f"; unexplained {_num(b.get('unexplained_pct'))} %: {b['why']}"
        return text

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        rows = self.rows()
        if not self.acc:
            return Group()
        return Group(Text(self.head(), style="bold"), *(Text("  " + self.line(b)) for b in rows), Text(""))

    def to_markdown(self) -> list[str]:
        if not self.acc:
            return []
        out = [
            "## Step accounting",
            "",
            self.head(),
            "",
            "| part | % of step | explained by | explained % | unexplained % | why |",
        ]
        out.append("|---|---:|---|---:|---:|---|")
        for b in self.rows():
            by = ", ".join(f"`{x}`" for x in b.get("explained_by") or []) or "none"
            rank = f" (rank {b['rank']})" if b.get("rank") is not None else ""
            out.append(
                f"| {b['label']}{rank} | {_num(b.get('pct'))} | {by} | {_num(b.get('explained_pct'))} "
                f"| {_num(b.get('unexplained_pct'))} | {b.get('why') or ''} |"
            )
        return out


class FindingView:
    """One finding of a report dict, with its evidence."""

    def __init__(self, finding: dict[str, Any], rank: int, fix_advice: FixAdvice | None = None) -> None:
        self.f, self.rank, self.fix_advice = finding, rank, fix_advice

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        f = self.f
        sev = f.get("severity", "info")
        colour = {"high": "bold red", "medium": "yellow", "low": "cyan"}.get(sev, "dim")
        imp = f.get("impact", {})
        head = Text.assemble(
            (f"{self.rank}. ", "bold"),
            (f"[{sev}] ", colour),
            (f.get("title", ""), "bold"),
            (f"  {_num(imp.get('step_time_pct'))}% of step, ~{_num(imp.get('est_saving_ms_per_step'))} ms/step", "dim"),
        )
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim")
        grid.add_column()
        grid.add_row("id", f"{f.get('id')} ({f.get('category')}, confidence {_num(f.get('confidence'))})")
        for k, v in (f.get("evidence") or {}).items():
            grid.add_row(str(k), _num(v) if not isinstance(v, list) else ", ".join(_num(x) for x in v[:6]))
        for k, v in (f.get("where") or {}).items():
            if v:
                grid.add_row(f"where.{k}", ", ".join(str(x) for x in v[:5]))
        if f.get("fixes"):
            grid.add_row("fixes", ", ".join(f["fixes"]))
        if f.get("advice"):
            grid.add_row("advice", f["advice"])
        for fix_id, text in fix_advice_lines(f, self.fix_advice):
            grid.add_row(f"fix {fix_id}", text)
        return Group(head, grid, Text(""))


class ReportView:
    """The whole report for the console."""

    def __init__(self, report: dict[str, Any], fix_advice: FixAdvice | None = None) -> None:
        self.r, self.fix_advice = report, fix_advice

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        r = self.r
        env = r.get("environment", {}) or {}
        src = r.get("source", {}) or {}
        summ = r.get("summary", {}) or {}
        st = summ.get("step_time_ms", {}) or {}
        head = Table.grid(padding=(0, 2))
        head.add_column(style="dim")
        head.add_column()
        head.add_row(
            "source",
            f"{src.get('path')} ({src.get('kind')}, {len(src.get('ranks') or [])} rank(s), "
            f"{_num(src.get('events'))} events)",
        )
        gpu = env.get("gpu") or {}
        head.add_row("gpu", str(gpu.get("name") or env.get("device_name") or "none in the trace"))
        versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "cuda", "driver", "python") if env.get(k))
        if versions:
            head.add_row("versions", versions)
        head.add_row("steps", _steps_line(summ, src))
        head.add_row(
            "step time",
            f"median {_num(st.get('median'))} ms, p10 {_num(st.get('p10'))} ms, "
            f"p90 {_num(st.get('p90'))} ms over {len(st.get('samples') or [])} samples "
            f"({st.get('source', '')})",
        )
        for ph in summ.get("phases") or []:
            head.add_row("  phase", _phase_line(ph))
        parts: list[Any] = [
            Panel(head, title="stallscope diagnose", expand=False),
            BreakdownBar(summ.get("breakdown_pct") or {}, gpu=bool(summ.get("gpu_events", True))),
            Text(""),
        ]
        if r.get("per_rank"):
            t = Table(title="per rank", title_justify="left")
            for col in ("rank", "steps", "median ms", "compute %", "comm exposed %", "data wait %", "idle host %"):
                t.add_column(col, justify="right")
            for pr in r["per_rank"]:
                b = pr.get("breakdown_pct") or {}
                idle = sum(float(b.get(k) or 0) for k in ("sync_wait_pct", "launch_overhead_pct", "host_other_pct"))
                t.add_row(
                    str(pr["rank"]),
                    str(pr["steps"]),
                    _num(pr["step_time_ms"].get("median")),
                    _num(b.get("compute_pct")),
                    _num(b.get("comm_exposed_pct")),
                    _num(b.get("data_wait_pct")),
                    _num(idle),
                )
            parts.append(t)
        if r.get("top_kernels"):
            from rich import box

            t = Table(title="top kernels", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
            t.add_column("kernel", overflow="ellipsis", no_wrap=True, max_width=32)
            for col in ("count", "total ms", "%"):
                t.add_column(col, justify="right", no_wrap=True)
            t.add_column("class", no_wrap=True)
            for k in kernel_rows(r)[:8]:
                t.add_row(
                    short_kernel_name(k["name"]), str(k["count"]), _num(k["total_ms"]), _num(k["pct"]), str(k["class"])
                )
            parts.append(t)
        findings = r.get("findings") or []
        parts.append(Text(f"findings ({len(findings)}), ranked by impact", style="bold underline"))
        if not findings:
            parts.append(Text(nothing_found(r), style="green" if (r.get("summary") or {}).get("steps") else "yellow"))
        for i, f in enumerate(findings, 1):
            parts.append(FindingView(f, i, self.fix_advice))
        parts.append(AccountingView(r))
        parts += views_of(r, ("cpu_ops", "modules"))  # the rest is in markdown and HTML
        for n in r.get("notices") or []:
            parts.append(Text(f"note: {n}", style="dim"))
        return Group(*parts)


def to_markdown(report: dict[str, Any], fix_advice: FixAdvice | None = None) -> str:
    """The report as GitHub-flavoured markdown; ``fix_advice`` adds each fix's advice under the
    finding that names it."""
    r = report
    env = r.get("environment", {}) or {}
    src = r.get("source", {}) or {}
    summ = r.get("summary", {}) or {}
    st = summ.get("step_time_ms", {}) or {}
    gpu = (env.get("gpu") or {}).get("name") or env.get("device_name") or "none in the trace"
    out = [
        "# stallscope diagnosis",
        "",
        f"- **source**: `{src.get('path')}` ({src.get('kind')}, {len(src.get('ranks') or [])} rank(s))",
        f"- **GPU**: {gpu}",
        f"- **steps**: {_steps_line(summ, src)}",
        f"- **step time**: median {_num(st.get('median'))} ms, p10 {_num(st.get('p10'))} ms, p90 {_num(st.get('p90'))} ms "
        f"({len(st.get('samples') or [])} samples, {st.get('source', '')})",
        *[f"  - phase {_phase_line(ph)}" for ph in summ.get("phases") or []],
        "",
        "## Step-time breakdown" + ("" if summ.get("gpu_events", True) else " (CPU timeline: no GPU events)"),
        "",
        "| part | % of step |",
        "|---|---:|",
    ]
    bd = summ.get("breakdown_pct") or {}
    for key, label, _ in BREAKDOWN_PARTS:
        out.append(f"| {label} | {_num(bd.get(key))} |")
    out.append(f"| (comm overlapped, not summed) | {_num(bd.get('comm_overlapped_pct'))} |")
    if r.get("per_rank"):
        out += [
            "",
            "## Per rank",
            "",
            "| rank | steps | median ms | compute % | comm exposed % | data wait % |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for pr in r["per_rank"]:
            b = pr.get("breakdown_pct") or {}
            out.append(
                f"| {pr['rank']} | {pr['steps']} | {_num(pr['step_time_ms'].get('median'))} | {_num(b.get('compute_pct'))} "
                f"| {_num(b.get('comm_exposed_pct'))} | {_num(b.get('data_wait_pct'))} |"
            )
    if r.get("top_kernels"):
        out += ["", "## Top kernels", "", "| kernel | count | total ms | % | class |", "|---|---:|---:|---:|---|"]
        for k in kernel_rows(r)[:10]:
            name = k["name"].replace("|", "\\|")
            name = name if len(name) <= 80 else name[:77] + "..."
            out.append(f"| `{name}` | {k['count']} | {_num(k['total_ms'])} | {_num(k['pct'])} | {k['class']} |")
    findings = r.get("findings") or []
    out += ["", f"## Findings ({len(findings)}, ranked by impact)", ""]
    if not findings:
        out.append(nothing_found(r))
    for i, f in enumerate(findings, 1):
        imp = f.get("impact", {})
        out.append(f"### {i}. [{f.get('severity')}] {f.get('title')}")
        out.append("")
        out.append(
            f"`{f.get('id')}` ({f.get('category')}): {_num(imp.get('step_time_pct'))} % of step time, "
            f"~{_num(imp.get('est_saving_ms_per_step'))} ms/step to gain, confidence {_num(f.get('confidence'))}"
        )
        out.append("")
        for k, v in (f.get("evidence") or {}).items():
            out.append(f"- {k}: {_num(v) if not isinstance(v, list) else ', '.join(_num(x) for x in v[:6])}")
        for k, v in (f.get("where") or {}).items():
            if v:
                out.append(f"- where.{k}: " + ", ".join(f"`{x}`" for x in v[:5]))
        if f.get("fixes"):
            out.append("- fixes: " + ", ".join(f"`{x}`" for x in f["fixes"]))
        if f.get("advice"):
            out.append(f"- advice: {f['advice']}")
        for fix_id, text in fix_advice_lines(f, fix_advice):
            out += [f"- fix `{fix_id}`:", "", *(f"  {line}" if line else "" for line in text.splitlines())]
        out.append("")
    accounting = AccountingView(r).to_markdown()
    if accounting:
        out += accounting + [""]
    views = views_of(r)
    if views:
        out += ["## Views"]
        for v in views:
            out += v.to_markdown()
        out.append("")
    if r.get("notices"):
        out += ["## Notices", ""] + [f"- {n}" for n in r["notices"]]
    return "\n".join(out).rstrip() + "\n"
