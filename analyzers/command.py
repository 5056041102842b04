"""``stallscope diagnose TARGET``: load, analyse, write the report, show it.

TARGET is a run directory, a trace file, a folder of per-rank traces, or a report written
earlier (``.yaml`` / ``.yml``, re-rendered without re-analysis). ``-o FILE`` writes the report
atomically; its format follows ``--format`` unless that is ``console``, then the file's suffix
(``.json``, ``.md``, else YAML). Exit codes: 0 diagnosed, 2 unreadable input (via ToolError).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from stallscope.profiler.common import ToolError, atomic_write_text

__all__ = ["diagnose_command", "format_report"]

FORMATS = ("console", "yaml", "json", "md")


def format_report(report: dict[str, Any], fmt: str) -> str:
    """The report as text in ``yaml`` / ``json`` / ``md``."""
    if fmt == "json":
        return json.dumps(report, indent=2, sort_keys=False) + "\n"
    if fmt == "md":
        from stallscope.analyzers.render import to_markdown

        return to_markdown(report)
    import yaml

    return yaml.safe_dump(report, sort_keys=False, allow_unicode=True, width=120)


def _is_report(path: Path) -> bool:
    if path.suffix.lower() in (".yaml", ".yml"):
        return True
    if path.suffix.lower() == ".json" and path.is_file():
        with path.open("rb") as fh:
            head = fh.read(4096)
        return b'"schema_version"' in head and b'"traceEvents"' not in head and b'"stallscope"' in head
    return False


def _file_format(fmt: str, output: Path) -> str:
    if fmt != "console":
        return fmt
    suffix = output.suffix.lower()
    return {".json": "json", ".md": "md", ".markdown": "md"}.get(suffix, "yaml")


def diagnose_command(
    target: str | Path,
    output: str | Path | None = None,
    fmt: str = "console",
    deep: bool = False,
    annotated_trace: str | Path | None = None,
    debug: bool = False,
) -> int:
    """Diagnose ``target``; print it in ``fmt``; write it to ``output`` when given. Returns 0."""
    if fmt not in FORMATS:
        raise ToolError(f"--format {fmt!r}: unknown format; use one of {', '.join(FORMATS)}")
    target = Path(target)
    if not debug:
        try:
            from stallscope import cli

            debug = bool(cli._state.get("debug"))
        except Exception:  # noqa: BLE001 - cli is optional when called as a library
            debug = False
    ctx = None
    if _is_report(target) and target.is_file():
        from stallscope.analyzers.report import load_report

        report = load_report(target)
    else:
        from stallscope.analyzers.loader import load_context
        from stallscope.analyzers.report import report_from_context

        ctx = load_context(target)
        report = report_from_context(ctx, debug=debug)
    extra: list[str] = []
    if deep or annotated_trace is not None:
        if ctx is None:
            raise ToolError(f"{target}: --deep and --annotated-trace need the trace; pass the run directory or trace, not a report")
        if deep:
            from stallscope.analyzers.deep import deepen_report

            extra += deepen_report(ctx, report)
        if annotated_trace is not None:
            from stallscope.analyzers.annotate import write_annotated_trace

            written = write_annotated_trace(ctx, report, annotated_trace)
            extra.append(f"annotated trace written to {written} (open it in Perfetto: ui.perfetto.dev)")
    if extra:
        report["notices"] = list(report.get("notices") or []) + extra
    if output is not None:
        out = Path(output)
        if out.is_dir():
            raise ToolError(f"{out}: is a directory; pass a file name for the report (e.g. {out / 'report.yaml'})")
        atomic_write_text(out, format_report(report, _file_format(fmt, out)))
    if fmt == "console":
        from rich.console import Console

        from stallscope.analyzers.render import ReportView

        console = Console()
        console.print(ReportView(report))
        if output is not None:
            console.print(f"report written to {output}", style="dim")
    else:
        sys.stdout.write(format_report(report, fmt))
    return 0
