"""The views as a section of the report, and back: computed once at diagnosis, rendered from the
report dict (console, markdown, HTML) so a saved report renders the same as a fresh one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stallscope.analyzers.model import AnalysisContext
from stallscope.analyzers.views.common import ViewRows
from stallscope.analyzers.views.cpu_ops import top_cpu_ops
from stallscope.analyzers.views.memory import memory_view
from stallscope.analyzers.views.modules import module_time
from stallscope.analyzers.views.render import CpuOpsView, MemoryView, ModulesView, StreamsView, TableView
from stallscope.analyzers.views.streams import stream_view

__all__ = ["report_views", "views_of"]

_TABLES: dict[str, tuple[Callable[[AnalysisContext], ViewRows], Callable[[ViewRows], TableView]]] = {
    "cpu_ops": (top_cpu_ops, CpuOpsView),
    "modules": (module_time, ModulesView),
    "streams": (stream_view, StreamsView),
}


def report_views(ctx: AnalysisContext, notices: list[str]) -> dict[str, Any]:
    """The report's ``views`` section; a view that fails adds a notice instead of failing the report."""
    out: dict[str, Any] = {}
    for key, (fn, _) in _TABLES.items():
        try:
            out[key] = fn(ctx).to_dict()
        except Exception as exc:  # noqa: BLE001 (a view is extra: the diagnosis stands without it)
            notices.append(f"view {key} not computed: {type(exc).__name__}: {exc}")
    try:
        out["memory"] = memory_view(ctx)
    except Exception as exc:  # noqa: BLE001
        notices.append(f"view memory not computed: {type(exc).__name__}: {exc}")
    return out


def views_of(
    report: dict[str, Any], keys: tuple[str, ...] = ("cpu_ops", "modules", "streams", "memory")
) -> list[TableView]:
    """Renderable views (``__rich__``, ``to_markdown``, ``to_html``) from a report's ``views``
    section; views with no rows and no note are left out. A report read from disk may hold
    anything: a view it cannot build is replaced by a note saying so."""
    section = report.get("views")
    if not isinstance(section, dict):
        return []
    out: list[TableView] = []
    for key in keys:
        v = section.get(key)
        try:
            view = _view(key, v)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            view = TableView()
            view.notes = [f"the report's views.{key} is not in the form stallscope writes; left out"]
        if view is not None:
            for tb in view.tables:  # every cell as text, whatever the file held
                tb.rows = [[str(c) for c in row] for row in tb.rows]
            out.append(view)
    return out


def _view(key: str, v: Any) -> TableView | None:
    if key == "memory":
        return MemoryView(v) if isinstance(v, dict) else None
    if not isinstance(v, dict) or not isinstance(v.get("rows"), list):
        return None
    note = v.get("note") if isinstance(v.get("note"), str) else None
    rows = ViewRows([r for r in v["rows"] if isinstance(r, dict)], note)
    return _TABLES[key][1](rows) if rows or rows.note else None
