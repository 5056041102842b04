"""``stallscope report`` (offline HTML) and ``stallscope compare`` (two runs side by side)."""
from __future__ import annotations

import sys
from pathlib import Path

from stallscope.profiler.common import ToolError, atomic_write_text

__all__ = ["compare_command", "report_command"]

COMPARE_FORMATS = ("console", "md", "yaml")


def report_command(target: str | Path, html_path: str | Path) -> int:
    """Write the self-contained HTML report of ``target`` (run directory, trace or report)."""
    from stallscope.analyzers.compare import load_any
    from stallscope.analyzers.html import render_html

    out = Path(html_path)
    if out.is_dir():
        raise ToolError(f"{out}: is a directory; pass a file name such as {out / 'report.html'}")
    report, ctx = load_any(target)
    atomic_write_text(out, render_html(report, ctx))
    print(f"HTML report written to {out}")
    return 0


def compare_command(a: str | Path, b: str | Path, fmt: str = "console", output: str | Path | None = None) -> int:
    """Compare A (before) with B (after); print in ``fmt``; write YAML/markdown to ``output``."""
    if fmt not in COMPARE_FORMATS:
        raise ToolError(f"--format {fmt!r}: unknown format; use one of {', '.join(COMPARE_FORMATS)}")
    from stallscope.analyzers.compare import compare_reports, load_any

    comparison = compare_reports(load_any(a)[0], load_any(b)[0])
    if output is not None:
        out = Path(output)
        if out.suffix.lower() in (".md", ".markdown"):
            atomic_write_text(out, comparison.to_markdown())
        else:
            from stallscope.profiler.common import write_yaml

            write_yaml(out, comparison.to_dict())
    if fmt == "console":
        from rich.console import Console

        Console().print(comparison)
    elif fmt == "md":
        sys.stdout.write(comparison.to_markdown())
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(comparison.to_dict(), sort_keys=False))
    return 0
