"""``stallscope report`` (offline HTML) and ``stallscope compare`` (two runs side by side)."""

from __future__ import annotations

import sys
from pathlib import Path

from stallscope.analyzers.compare import compare_reports
from stallscope.analyzers.html import render_html
from stallscope.analyzers.inputs import open_report
from stallscope.analyzers.render import FixAdvice
from stallscope.analyzers.views.render import TraceDiffView
from stallscope.analyzers.views.tracediff import trace_diff
from stallscope.profiler.common import ToolError, atomic_write_text, check_outputs, write_yaml

__all__ = ["COMPARE_FORMATS", "compare_command", "report_command"]

COMPARE_FORMATS = ("console", "md", "yaml")


def report_command(
    target: str | Path, html_path: str | Path, debug: bool = False, fix_advice: FixAdvice | None = None
) -> int:
    """Write the self-contained HTML report of ``target`` (run directory, trace or report);
    ``fix_advice(fix_id)`` is shown under the findings that name a fix."""
    out = Path(html_path)
    check_outputs({"--html": out}, (target,))
    report, ctx = open_report(target, debug=debug)
    atomic_write_text(out, render_html(report, ctx, fix_advice=fix_advice))
    print(f"HTML report written to {out}")
    return 0


def compare_command(
    a: str | Path, b: str | Path, fmt: str = "console", output: str | Path | None = None, debug: bool = False
) -> int:
    """Compare A (before) with B (after); print in ``fmt``; write YAML/markdown to ``output``."""
    if fmt not in COMPARE_FORMATS:
        raise ToolError(f"--format {fmt!r}: unknown format; use one of {', '.join(COMPARE_FORMATS)}")
    check_outputs({"--output": output}, (a, b))
    opened_a, opened_b = open_report(a, debug=debug), open_report(b, debug=debug)
    comparison = compare_reports(opened_a.report, opened_b.report)
    doc = comparison.to_dict()
    markdown = comparison.to_markdown()
    diff_view = None
    if opened_a.context is not None and opened_b.context is not None:  # two traces or runs: op- and kernel-level diff
        diff = trace_diff(opened_a.context, opened_b.context)
        doc["trace_diff"] = diff
        diff_view = TraceDiffView(diff)
        markdown = markdown.rstrip("\n") + "\n" + "\n".join(diff_view.to_markdown()) + "\n"
    if output is not None:
        out = Path(output)
        if out.suffix.lower() in (".md", ".markdown"):
            atomic_write_text(out, markdown)
        else:
            write_yaml(out, doc)
    if fmt == "console":
        from rich.console import Console  # rich only for console output

        console = Console()
        console.print(comparison)
        if diff_view is not None:
            console.print(diff_view)
    elif fmt == "md":
        sys.stdout.write(markdown)
    else:
        import yaml  # yaml only for YAML output

        sys.stdout.write(yaml.safe_dump(doc, sort_keys=False))
    return 0
