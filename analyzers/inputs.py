"""Open what a user points a command at: a report, or something to diagnose.

:func:`open_report` is the one rule set behind ``diagnose``, ``report``, ``compare``, ``gate``
and ``patch plan``:

* a ``.yaml`` / ``.yml`` file is a report;
* a ``.json`` file is a trace when its head holds ``"traceEvents"`` or it is a bare JSON array
  (Kineto's two layouts), else a report;
* ``.json.gz`` files, run directories and folders of traces are diagnosed on the spot;
* anything else is a one-line :class:`ToolError` that names the path and what to pass instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from stallscope.analyzers.context import load_context
from stallscope.analyzers.model import AnalysisContext
from stallscope.analyzers.report import load_report, report_from_context
from stallscope.profiler import runformat
from stallscope.profiler.common import ToolError

__all__ = ["OpenedReport", "is_report_file", "open_report"]

REPORT_SUFFIXES = (".yaml", ".yml")
_SNIFF_BYTES = 64 << 10  # Kineto writes deviceProperties and distributedInfo before traceEvents


class OpenedReport(NamedTuple):
    """A report and, when it was diagnosed here, the analysis context it came from."""

    report: dict[str, Any]
    context: AnalysisContext | None


def is_report_file(path: Path) -> bool:
    """Whether ``path`` is a report file rather than a trace (see the module doc for the rule)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in REPORT_SUFFIXES:
        return True
    if suffix != ".json" or not path.is_file():
        return False
    try:
        with path.open("rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return False
    return b'"traceEvents"' not in head and not head.lstrip().startswith(b"[")


def open_report(
    target: str | Path,
    *,
    debug: bool = False,
    check_version: bool = True,
    use_saved: bool = False,
    need: str = "summary",
) -> OpenedReport:
    """The report of ``target``: read from a report file, or diagnosed from a trace, a folder of
    traces or a run directory (then with its context).

    ``debug`` lets an analyzer's exception propagate; ``check_version=False`` accepts a report
    of another schema version (the gate compares two reports' versions itself); ``use_saved``
    reads the report a run directory already holds (``runformat.REPORT``) instead of
    diagnosing it again; ``need`` is the part a report file must have (``summary`` to present
    it, ``findings`` to plan patches from it).
    """
    path = Path(target)
    if not path.exists():
        raise ToolError(
            f"{path}: no such file or directory; pass a report (.yaml/.json), a run directory, "
            "a trace file or a folder of traces"
        )
    if path.is_file() and is_report_file(path):
        return OpenedReport(load_report(path, check_version=check_version, need=need), None)
    if use_saved and path.is_dir() and (path / runformat.REPORT).is_file():
        return OpenedReport(load_report(path / runformat.REPORT, check_version=check_version, need=need), None)
    ctx = load_context(path)
    return OpenedReport(report_from_context(ctx, debug=debug), ctx)
