"""``stallscope diagnose TARGET``: load, analyse, write the report, show it.

TARGET is whatever :func:`analyzers.inputs.open_report` opens: a run directory, a trace file, a
folder of per-rank traces, or a report written earlier (re-rendered without re-analysis).
``-o FILE`` writes the report atomically; its format follows ``--format`` unless that is
``console``, then the file's suffix (``.json``, ``.md``, else YAML). Exit codes: 0 diagnosed,
2 unreadable input (via ToolError). What a diagnosis without ``--deep`` / ``--annotated-trace``
wrote is kept in the report cache (:mod:`analyzers.reportcache`) for a repeat of it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from stallscope.analyzers import reportcache
from stallscope.analyzers.inputs import open_report
from stallscope.analyzers.render import FixAdvice, ReportView, to_markdown
from stallscope.profiler.common import ToolError, atomic_write_text, check_outputs, dump_yaml

__all__ = ["FORMATS", "diagnose_command", "format_report"]

FORMATS = ("console", "yaml", "json", "md")


def format_report(report: dict[str, Any], fmt: str, fix_advice: FixAdvice | None = None) -> str:
    """The report as text in ``yaml`` / ``json`` / ``md`` (markdown shows ``fix_advice`` under
    each finding's fix ids)."""
    if fmt == "json":
        return json.dumps(report, indent=2, sort_keys=False) + "\n"
    if fmt == "md":
        return to_markdown(report, fix_advice=fix_advice)
    return dump_yaml(report)


def diagnose_command(
    target: str | Path,
    output: str | Path | None = None,
    fmt: str = "console",
    deep: bool = False,
    annotated_trace: str | Path | None = None,
    debug: bool = False,
    fix_advice: FixAdvice | None = None,
) -> int:
    """Diagnose ``target``; print it in ``fmt``; write it to ``output`` when given. Returns 0.

    ``debug`` lets an analyzer's exception propagate (the CLI passes its ``--debug``);
    ``fix_advice(fix_id)`` is the advice text the console and markdown show under a finding's
    fix ids (the CLI passes ``stallscope.fixes.advice_for``)."""
    if fmt not in FORMATS:
        raise ToolError(f"--format {fmt!r}: unknown format; use one of {', '.join(FORMATS)}")
    target = Path(target)
    check_outputs({"--output": output, "--annotated-trace": annotated_trace}, (target,))
    # keyed before the inputs are read: a file that changes while they are is not trusted
    advice = reportcache.callable_id(fix_advice)
    cache = None if deep or annotated_trace is not None else reportcache.prepare(target, fmt, output, advice)
    report, ctx = open_report(target, debug=debug)
    extra: list[str] = []
    if deep or annotated_trace is not None:
        if ctx is None:
            raise ToolError(
                f"{target}: --deep and --annotated-trace need the trace; pass the run directory or trace, not a report"
            )
        if deep:
            from stallscope.analyzers.deep import deepen_report  # Nsight Compute's driver: --deep only

            extra += deepen_report(ctx, report)
        if annotated_trace is not None:
            from stallscope.analyzers.annotate import write_annotated_trace  # --annotated-trace only

            written = write_annotated_trace(ctx, report, annotated_trace)
            extra.append(f"annotated trace written to {written} (open it in Perfetto: ui.perfetto.dev)")
    if extra:
        report["notices"] = list(report.get("notices") or []) + extra
    texts: dict[str, str] = {}  # kind -> the text written, for the report cache
    if output is not None:
        out = Path(output)
        if out.is_dir():
            raise ToolError(f"{out}: is a directory; pass a file name for the report (e.g. {out / 'report.yaml'})")
        kind = reportcache.file_format(fmt, out)
        texts[kind] = format_report(report, kind, fix_advice)
        atomic_write_text(out, texts[kind])
    if fmt == "console":
        from rich.console import Console  # rich only for console output

        console = Console()
        console.print(ReportView(report, fix_advice=fix_advice))
        if output is not None:
            console.print(f"report written to {output}", style="dim")
        if cache is not None:
            texts["json"] = texts.get("json") or format_report(report, "json")  # the report, drawn again on a hit
    else:
        texts[fmt] = texts.get(fmt) or format_report(report, fmt, fix_advice)
        sys.stdout.write(texts[fmt])
    if cache is not None and reportcache.cacheable(report, ctx.notices if ctx is not None else ()):
        reportcache.store(cache, texts)
    return 0
