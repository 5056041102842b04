"""Open what a user points a command at: a report, or something to diagnose.

:func:`open_report` is the one rule set behind ``diagnose``, ``report``, ``compare``, ``gate``
and ``patch plan``:

* a ``.yaml`` / ``.yml`` file is a report;
* a ``.json`` file is a trace when its head holds ``"traceEvents"`` or it is a bare JSON array
  (Kineto's two layouts) or empty, else a report;
* ``.json.gz`` files, run directories and folders of traces are diagnosed on the spot;
* anything else is a one-line :class:`ToolError` that names the path and what to pass instead.

A report file is read in bounds (:func:`profiler.common.plain_text`: depth, lone surrogates) and
every value its schema describes must have the schema's type, so the commands that present it
can trust what is there (sections may be missing: reports of other versions and hand-made ones
pass). A trace with no usable event is an error, not an empty report.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, NamedTuple

from stallscope.analyzers.context import load_context
from stallscope.analyzers.loader import EVENT_COUNTS
from stallscope.analyzers.model import AnalysisContext
from stallscope.analyzers.report import load_report, report_from_context, schema
from stallscope.profiler import runformat
from stallscope.profiler.common import YAML_MAX_BYTES, ToolError, plain_text

__all__ = ["OpenedReport", "check_types", "is_report_file", "open_report"]

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
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    return bool(start) and b'"traceEvents"' not in head and not start.startswith(b"[")  # empty: read as a trace


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
        return OpenedReport(_read_report(path, check_version, need), None)
    if use_saved and path.is_dir() and (path / runformat.REPORT).is_file():
        return OpenedReport(_read_report(path / runformat.REPORT, check_version, need), None)
    ctx = load_context(path)
    _check_events(ctx, path)
    return OpenedReport(report_from_context(ctx, debug=debug), ctx)


def _read_report(path: Path, check_version: bool, need: str) -> dict[str, Any]:
    """A report file, read in bounds (size, depth, text) and checked against the schema's types."""
    if path.stat().st_size > YAML_MAX_BYTES:  # the bound of every YAML file we read holds for JSON too
        raise ToolError(f"{path}: {path.stat().st_size} bytes, more than a stallscope report can be; check the path")
    try:
        report = load_report(path, check_version=check_version, need=need)
    except RecursionError:  # JSON nested past what the parser follows
        raise ToolError(f"{path}: nested too deeply to be a stallscope report; regenerate it") from None
    report = plain_text(report, str(path))
    check_types(report, path)
    return report


def _check_events(ctx: AnalysisContext, path: Path) -> None:
    """A trace file, or a folder of them, whose traces hold no usable event is an input error:
    say what is in the file instead of reporting that nothing holds the run back."""
    if ctx.meta.get("kind") == runformat.RUN_KIND or any(rd.telemetry is not None for rd in ctx.ranks):
        return
    if any(len(rd.events) for rd in ctx.ranks):
        return
    counts = (ctx.ranks[0].meta.get("trace") or {}).get(EVENT_COUNTS) or {} if ctx.ranks else {}
    seen = counts.get("in_file", 0)
    what = (
        f"none of its {seen} events is usable (a complete 'X' or instant event with a numeric ts)"
        if seen
        else "no trace events in it (an empty traceEvents array, or a JSON list of no events)"
    )
    where = path if len(ctx.ranks) < 2 else f"{path} ({len(ctx.ranks)} traces)"
    raise ToolError(
        f"{where}: {what}; pass a trace torch.profiler wrote (export_chrome_trace or tensorboard_trace_handler)"
    )


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _type_ok(value: Any, types: str | list[str]) -> bool:
    for name in [types] if isinstance(types, str) else types:
        if isinstance(value, _TYPES[name]) and (name == "boolean" or not isinstance(value, bool)):
            if name in ("number", "integer"):  # a report's numbers are finite and fit int64 / float64
                number: Any = value
                return bool(-(2**63) < number < 2**63)  # False for NaN and the infinities too
            return True
    return False


# What the presenters read that the report schema leaves open (``environment`` is free-form there).
_PRESENTED: dict[str, Any] = {
    "environment": {"properties": {"gpu": {"type": ["object", "null"]}}},
    "summary": {
        "properties": {
            "phases": {"type": "array", "items": {"type": "object"}},
            "run_steps": {"type": ["integer", "null"]},
            "peak_memory_mb": {"type": ["number", "null"]},
        }
    },
}


@functools.lru_cache(maxsize=1)
def _report_schema() -> dict[str, Any]:
    """The report schema with :data:`_PRESENTED` added."""
    root = schema()
    for key, extra in _PRESENTED.items():
        node = root["properties"].setdefault(key, {})
        node.setdefault("properties", {}).update(extra["properties"])
    return root


def check_types(report: dict[str, Any], path: Path) -> None:
    """Every value of ``report`` that the report schema describes has the schema's type, enum
    value and bounds; a ToolError naming the first one that does not. Missing keys pass."""
    root = _report_schema()
    stack: list[tuple[Any, dict[str, Any], str]] = [(report, root, "")]
    while stack:
        value, node, where = stack.pop()
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            node = root["$defs"][ref.rsplit("/", 1)[1]]
        problem = None
        if "type" in node and not _type_ok(value, node["type"]):
            problem = f"{type(value).__name__} {_short(value)}, where the report has {node['type']}"
        elif "enum" in node and value not in node["enum"]:
            problem = f"{_short(value)}, not one of {', '.join(map(str, node['enum']))}"
        elif (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and not (node.get("minimum", -math.inf) <= value <= node.get("maximum", math.inf))
        ):
            problem = f"{value!r}, out of range"
        if problem:
            raise ToolError(
                f"{path}: {where.lstrip('.') or 'the document'} is {problem}; not a report stallscope wrote: "
                "regenerate it with stallscope diagnose"
            )
        if isinstance(value, dict):
            props, more = node.get("properties", {}), node.get("additionalProperties")
            for key, sub in value.items():
                sub_node = props.get(key, more if isinstance(more, dict) else None)
                if sub_node is not None:
                    stack.append((sub, sub_node, f"{where}.{key}"))
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            stack.extend((sub, node["items"], f"{where}[{i}]") for i, sub in enumerate(value))


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."
