"""Render the views: one class per view, each with ``__rich__`` (console), ``to_markdown()``
(lines) and ``to_html()`` (a fragment, every value escaped).

A view is a list of titled tables and notes; :class:`TableView` renders those three ways, and
each subclass only says what its tables hold. No torch import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from stallscope.analyzers.vocab import short_kernel_name

__all__ = ["CpuOpsView", "MemoryView", "ModulesView", "StreamsView", "TableView", "TraceDiffView"]


def _num(value: Any) -> str:
    """A cell's text: numbers to 3 significant digits (whole numbers from 1000 on), None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


@dataclass
class Table:
    """One titled table: ``headers`` and rows of cell texts; column 0 is left-aligned, and set as
    code when ``code`` (it holds names)."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    code: bool = True


class TableView:
    """A view as tables and notes; subclasses fill :attr:`tables` and :attr:`notes`."""

    def __init__(self) -> None:
        self.tables: list[Table] = []
        self.notes: list[str] = []

    def __rich__(self) -> Any:
        from rich import box
        from rich.console import Group
        from rich.table import Table as RichTable
        from rich.text import Text

        parts: list[Any] = []
        for tb in self.tables:
            rt = RichTable(title=tb.title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
            for i, h in enumerate(tb.headers):
                rt.add_column(
                    h,
                    justify="left" if i == 0 else "right",
                    overflow="ellipsis",
                    max_width=48 if i == 0 else None,
                    min_width=26 if i == 0 else None,  # the name first: numbers wrap their headers instead
                )
            for row in tb.rows:
                rt.add_row(*(Text(c) for c in row))  # Text: names such as "[memory]" are not markup
            parts.append(rt)
        parts += [Text(f"note: {n}", style="dim") for n in self.notes]
        return Group(*parts)

    def to_markdown(self) -> list[str]:
        """The view as markdown lines (a level-3 heading per table)."""
        out: list[str] = []
        for tb in self.tables:
            out += ["", f"### {tb.title}", "", "| " + " | ".join(tb.headers) + " |"]
            out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(tb.headers))) + "|")
            for row in tb.rows:
                cells = [c.replace("|", "\\|").replace("`", "'") for c in row]
                cells[0] = f"`{cells[0]}`" if tb.code and cells[0] not in ("", "-") else cells[0]
                out.append("| " + " | ".join(cells) + " |")
        out += [f"\n_{n}_" for n in self.notes]
        return out

    def to_html(self) -> str:
        """The view as an HTML fragment (tables, then notes)."""
        import html  # HTML pages only: a diagnose renders no HTML, and html.entities costs ~2 ms to import

        e = html.escape
        out = []
        for tb in self.tables:
            head = "".join(f"<th>{e(h)}</th>" for h in tb.headers)
            body = "".join(
                "<tr>" + "".join(f"<td>{_html_cell(e(c), tb.code and i == 0)}</td>" for i, c in enumerate(r)) + "</tr>"
                for r in tb.rows
            )
            out.append(f"<h3>{e(tb.title)}</h3><table><tr>{head}</tr>{body}</table>")
        out += [f"<p class='muted'>{e(n)}</p>" for n in self.notes]
        return "".join(out)


def _html_cell(text: str, code: bool) -> str:
    return f"<code>{text}</code>" if code else text


def _note_of(rows: list[dict[str, Any]]) -> list[str]:
    note = getattr(rows, "note", None)
    return [note] if note else []


class CpuOpsView(TableView):
    """:func:`~stallscope.analyzers.views.cpu_ops.top_cpu_ops`'s rows."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__()
        keys = ("role", "calls_per_step", "total_ms_per_step", "self_ms_per_step", "self_pct_of_step")
        cells = [[r["name"], *(_num(r[k]) for k in keys)] for r in rows]
        headers = ["op", "role", "calls/step", "total ms/step", "self ms/step", "self % of step"]
        self.tables = [Table("top CPU ops by self time", headers, cells)] if rows else []
        self.notes = _note_of(rows)


class ModulesView(TableView):
    """:func:`~stallscope.analyzers.views.modules.module_time`'s rows."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__()
        keys = ("parent", "calls_per_step", "forward_ms_per_step", "self_ms_per_step", "pct_of_step")
        cells = [["  " * int(r["depth"]) + r["module"], *(_num(r[k]) for k in keys)] for r in rows]
        headers = ["module", "parent", "calls/step", "forward ms/step", "self ms/step", "% of step"]
        self.tables = [Table("time per nn.Module", headers, cells)] if rows else []
        self.notes = _note_of(rows)


class StreamsView(TableView):
    """:func:`~stallscope.analyzers.views.streams.stream_view`'s rows."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__()
        keys = ("ops", "busy_pct", "idle_host_wait_pct", "idle_queued_pct", "queue_mean", "queue_max")
        cells = [[f"gpu {r['device']} stream {r['stream']}", *(_num(r[k]) for k in keys)] for r in rows]
        headers = ["stream", "ops", "busy %", "idle: host wait %", "idle: queued %", "queue mean", "queue max"]
        self.tables = [Table("GPU streams: busy, idle and queue length", headers, cells)] if rows else []
        self.notes = _note_of(rows)


class MemoryView(TableView):
    """:func:`~stallscope.analyzers.views.memory.memory_view`'s dict (or None: nothing to show)."""

    def __init__(self, view: dict[str, Any] | None) -> None:
        super().__init__()
        if view is None:
            self.notes = ["no allocator samples in the trace: record with stallscope profile --memory"]
            return
        keys = ("allocated_end_mb", "reserved_end_mb", "peak_allocated_mb", "peak_reserved_mb")
        steps = [[str(s["step"]), *(_num(s[k]) for k in keys)] for s in view["steps"]]
        heads = ["step", "allocated at end MB", "reserved at end MB", "peak allocated MB", "peak reserved MB"]
        self.tables = [Table(f"memory per step ({view['device']})", heads, steps, code=False)]
        peak = view.get("peak")
        if peak:
            live = [[_num(a["mb"]), a["op"] or "-", a["caller"] or "-", _num(a["step"])] for a in peak["live"]]
            title = f"allocations live at the peak (step {peak['step']}, {_num(peak['allocated_mb'])} MB allocated)"
            self.tables.append(Table(title, ["MB", "op", "called from", "made in step"], live, code=False))
            self.notes.append(
                f"{peak['live_count']} allocations live at the peak, {_num(peak['tracked_mb'])} MB; "
                f"{_num(peak['untracked_mb'])} MB allocated before the trace began"
            )


class TraceDiffView(TableView):
    """:func:`~stallscope.analyzers.views.tracediff.trace_diff`'s dict."""

    def __init__(self, diff: dict[str, Any]) -> None:
        super().__init__()
        heads = ["name", "status", "A ms/step", "B ms/step", "change ms/step", "B/A", "p"]
        keys = ("status", "a_ms_per_step", "b_ms_per_step", "delta_ms_per_step", "ratio", "p_value")
        for what, label in (("ops", "CPU ops (self time)"), ("kernels", "GPU kernels")):
            name = short_kernel_name if what == "kernels" else str
            cells = [[name(r["name"]), *(_num(r[k]) for k in keys)] for r in diff.get(what) or []]
            counts = diff.get("counts", {}).get(what, {})
            summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
            if cells:
                self.tables.append(Table(f"trace diff, {label}: {summary}", heads, cells))
            else:
                self.notes.append(f"trace diff, {label}: no change ({summary or 'nothing on either side'})")
        if diff.get("note"):
            self.notes.append(diff["note"])
