"""A self-contained offline HTML report: inline SVG charts (matplotlib), CSS, no network.

Charts: step-time breakdown per rank (stacked bars), step times by step number, the NVML
timeline (GPU utilization, SM clock, power, memory) and the host's CPU and RSS (host.csv) with the
steps marked, the allocator's memory over the traced steps (``--memory``), and a roofline of the
top kernels (attained FLOP/s against arithmetic intensity under the GPU's roofs; GR-KAN and
attention kernels labelled). Then findings with evidence and fixes, patch results, the views
(top CPU ops, time per module, GPU streams, memory) and the environment.

Every part is a ``<section id="view-...">`` (:data:`SECTION_IDS`), listed in a table of contents
at the top, so that ``report.html#view-memory`` opens at that view.

matplotlib is an optional extra (``pip install 'stallscope[html]'``); it is imported only here.
"""

from __future__ import annotations

import html
import io
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from stallscope.analyzers.peaks import kernel_rooflines, peaks_for
from stallscope.analyzers.render import FixAdvice, fix_advice_lines, kernel_rows, nothing_found
from stallscope.analyzers.views.common import MB, pick_rank
from stallscope.analyzers.views.memory import allocator_samples, device_label
from stallscope.analyzers.views.report import views_of
from stallscope.profiler.common import ToolError

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext

__all__ = ["SECTION_IDS", "TARGET_COLOUR", "render_html"]

# The anchor of each part of the report (``report.html#view-memory``), in the order they appear.
SECTION_IDS = {
    "breakdown": "view-breakdown",
    "steps": "view-steps",
    "nvml": "view-gpu-timeline",
    "host": "view-host-cpu",
    "roofline": "view-roofline",
    "findings": "view-findings",
    "patches": "view-patches",
    "phases": "view-phases",
    "kernels": "view-kernels",
    "cpu_ops": "view-cpu-ops",
    "modules": "view-modules",
    "streams": "view-streams",
    "memory": "view-memory",
    "environment": "view-environment",
    "notices": "view-notices",
}
# The outline of the section a link opens (``report.html#view-memory``): a colour no chart uses.
TARGET_COLOUR = "#2b6cb0"
# Points kept per memory series: an SVG path of a few thousand points draws at once, while a
# long GPU trace has one allocator sample per allocation and free (10^5 and more).
_MAX_POINTS = 2000

PARTS = [
    ("compute_pct", "compute", "#4c78a8"),
    ("memory_pct", "memcpy/memset", "#72b7b2"),
    ("comm_exposed_pct", "comm (exposed)", "#f58518"),
    ("data_wait_pct", "data wait", "#e45756"),
    ("sync_wait_pct", "sync wait", "#b279a2"),
    ("launch_overhead_pct", "launch overhead", "#eeca3b"),
    ("host_other_pct", "host other", "#9d9da0"),
]
_GRKAN = re.compile(r"rational|grkan|kat_", re.I)
_ATTENTION = re.compile(r"attention|fmha|flash|sdpa|softmax", re.I)

CSS = (
    """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#1d2733;color:#fff;padding:16px 28px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c9d1d9}main{padding:12px 28px;max-width:1200px}
section{background:#fff;border:1px solid #e2e2e2;border-radius:8px;padding:14px 18px;margin:14px 0}
h2{font-size:16px;margin:0 0 8px}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #eee;padding:4px 8px;text-align:left;vertical-align:top;font-size:13px}
th{color:#555;font-weight:600}.sev{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px}
.high{background:#c0392b}.medium{background:#d68910}.low{background:#2e86c1}.info{background:#888}
.kv td:first-child{color:#555;width:34%}.muted{color:#777}.chart svg{max-width:100%;height:auto}
details summary{cursor:pointer;font-weight:600}code{font-size:12px}
.fix pre{background:#f4f4f4;padding:8px;border-radius:6px;white-space:pre-wrap;font-size:12px}
nav.toc{margin:12px 0 0;font-size:13px}nav.toc a{color:#1d4f85;margin-right:14px;white-space:nowrap}
section{scroll-margin-top:8px}
"""
    + f"section:target{{border-color:{TARGET_COLOUR};box-shadow:0 0 0 2px {TARGET_COLOUR}}}\n"
)


def _mpl() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ToolError("the HTML report needs matplotlib: pip install 'stallscope[html]'") from None
    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _mpl().close(fig)
    text = buf.getvalue()
    return text[text.find("<svg") :]


def breakdown_chart(report: dict[str, Any]) -> str | None:
    """Stacked horizontal bars: one per rank (or one for the run)."""
    rows = [(f"rank {r['rank']}", r.get("breakdown_pct", {})) for r in report.get("per_rank") or []]
    if not rows:
        rows = [("run", report.get("summary", {}).get("breakdown_pct", {}))]
    if not any(rows[0][1].values()) if rows[0][1] else True:
        return None
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.45 * len(rows)))
    for i, (_label, pct) in enumerate(rows):
        left = 0.0
        for key, name, colour in PARTS:
            width = float(pct.get(key, 0.0) or 0.0)
            ax.barh(i, width, left=left, color=colour, label=name if i == 0 else None, height=0.6)
            left += width
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of step wall time")
    ax.invert_yaxis()
    fig.legend(
        *ax.get_legend_handles_labels(),
        ncol=4,
        fontsize=8,
        loc="lower center",
        bbox_to_anchor=(0.5, 0.98),
        frameon=False,
    )
    return _svg(fig)


def step_time_chart(report: dict[str, Any]) -> str | None:
    samples = report.get("summary", {}).get("step_time_ms", {}).get("samples") or []
    if len(samples) < 2:
        return None
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(9, 2.2))
    steps = report["summary"]["step_time_ms"].get("sample_steps")
    xs = steps if isinstance(steps, list) and len(steps) == len(samples) else list(range(len(samples)))
    ax.plot(xs, samples, marker=".", lw=1, color="#4c78a8")
    ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole numbers
    med = report["summary"]["step_time_ms"].get("median")
    if med is not None:
        ax.axhline(med, color="#e45756", lw=1, ls="--", label=f"median {med:.2f} ms")
        ax.legend(frameon=False, fontsize=8)
    ax.set_xlabel("step" if xs is steps else "sample")
    ax.set_ylabel("step time (ms)")
    return _svg(fig)


def nvml_chart(ctx: AnalysisContext | None) -> str | None:
    """GPU utilization, SM clock, power and memory over time, steps shaded, per rank 0."""
    if ctx is None:
        return None
    rd = next((r for r in ctx.ranks if r.nvml is not None and len(r.nvml.get("t_ns", ()))), None)
    if rd is None:
        return None
    nv = rd.nvml
    assert nv is not None  # chosen above for its NVML samples
    t = np.asarray(nv["t_ns"], dtype=np.float64)
    t0 = t.min()
    x = (t - t0) / 1e9
    series = [
        ("gpu_util_pct", "GPU util (%)"),
        ("sm_clock_mhz", "SM clock (MHz)"),
        ("power_w", "power (W)"),
        ("mem_used_mb", "memory used (MB)"),
    ]
    series = [(k, label) for k, label in series if k in nv and np.isfinite(np.asarray(nv[k], dtype=float)).any()]
    return _series_chart(x, nv, series, "#4c78a8", rd.telemetry or {}, t0)


def _series_chart(
    x: np.ndarray, cols: dict[str, Any], series: list[tuple[str, str]], colour: str, tel: dict[str, Any], t0: float
) -> str | None:
    """One panel per ``(column, label)`` of ``cols`` over ``x`` seconds, the steps shaded; None
    without series."""
    if not series:
        return None
    plt = _mpl()
    fig, axes = plt.subplots(len(series), 1, figsize=(9, 1.5 * len(series)), sharex=True)
    axes = np.atleast_1d(axes)
    for ax, (key, label) in zip(axes, series, strict=False):
        ax.plot(x, np.asarray(cols[key], dtype=float), lw=1, color=colour)
        ax.set_ylabel(label, fontsize=8)
    _shade_steps(axes, tel, t0)
    return _svg(fig)


def _shade_steps(axes: Any, tel: dict[str, Any], t0: float) -> None:
    """Shade each step of ``tel`` (steps.csv columns) on time axes in seconds since ``t0`` (ns);
    the trace window's steps in orange."""
    starts = np.asarray(tel.get("start_ns", []), dtype=np.float64)
    ends = np.asarray(tel.get("end_ns", []), dtype=np.float64)
    in_window = np.asarray(tel.get("in_window", np.zeros(len(starts))), dtype=float)
    for ax in axes:
        for i, (s, e) in enumerate(zip(starts, ends, strict=False)):
            if np.isfinite(s) and np.isfinite(e):
                colour = "#f58518" if i < len(in_window) and in_window[i] > 0 else "#9d9da0"
                ax.axvspan((s - t0) / 1e9, (e - t0) / 1e9, color=colour, alpha=0.12 if i % 2 else 0.22, lw=0)
    axes[-1].set_xlabel("seconds since the first sample (steps shaded; trace window in orange)")


def host_chart(ctx: AnalysisContext | None) -> str | None:
    """The host side over time from host.csv: the training process's CPU, the DataLoader
    workers' CPU and the process's RSS, steps shaded, first rank that has samples."""
    if ctx is None:
        return None
    rd = next((r for r in ctx.ranks if r.host is not None and len(r.host.get("t_ns", ()))), None)
    if rd is None or rd.host is None:
        return None
    host = rd.host
    t = np.asarray(host["t_ns"], dtype=np.float64)
    x = (t - t.min()) / 1e9
    series = [
        ("proc_cpu_pct", "process CPU (% of a core)"),
        ("workers_cpu_pct", "DataLoader workers CPU (%)"),
        ("rss_mb", "process RSS (MB)"),
    ]
    # a series that is zero throughout (no DataLoader workers) says nothing: left out
    series = [(k, lab) for k, lab in series if k in host and np.nanmax(np.abs(np.asarray(host[k], dtype=float))) > 0]
    return _series_chart(x, host, series, "#54a24b", rd.telemetry or {}, float(t.min()))


def memory_chart(view: dict[str, Any] | None, ctx: AnalysisContext | None) -> str | None:
    """Allocated and reserved memory over the traced steps from the allocator samples
    (``[memory]`` events, ``--memory``) of the memory view's device, steps shaded and numbered,
    the peak marked; None without a memory view or samples."""
    if ctx is None or not isinstance(view, dict):
        return None
    rd = pick_rank(ctx)
    if rd is None or not rd.steps:
        return None
    s = allocator_samples(rd.events)
    pairs = np.stack([s["type"], s["id"]], axis=1)
    devices = [d for d in np.unique(pairs, axis=0).tolist() if device_label(*d) == view.get("device")]
    mine = (pairs[:, None, :] == np.asarray(devices, dtype=np.int64).reshape(-1, 2)[None]).all(-1).any(-1)
    if not mine.any():
        return None
    t0 = rd.steps[0].start_ns
    x = (rd.events.ts_ns[s["row"][mine]] - t0) / 1e6
    alloc, reserved = s["alloc"][mine] / MB, s["reserved"][mine] / MB
    if x.size > _MAX_POINTS:  # the largest value of each run of samples: peaks survive
        cuts = np.linspace(0, x.size, _MAX_POINTS, endpoint=False).astype(np.int64)
        x, alloc, reserved = x[cuts], np.maximum.reduceat(alloc, cuts), np.maximum.reduceat(reserved, cuts)
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(9, 2.6))
    if reserved.max() > 0:  # the CPU allocator reports no reserved memory: no line of zeros
        ax.step(x, reserved, where="post", lw=1, color="#9d9da0", label="reserved")
    ax.step(x, alloc, where="post", lw=1.2, color="#b279a2", label="allocated")
    top = float(max(reserved.max(), alloc.max())) or 1.0
    for i, st in enumerate(rd.steps):
        lo, hi = (st.start_ns - t0) / 1e6, (st.end_ns - t0) / 1e6
        ax.axvspan(lo, hi, color="#9d9da0", alpha=0.10 if i % 2 else 0.20, lw=0)
        ax.text((lo + hi) / 2, top * 1.04, str(st.index), ha="center", va="bottom", fontsize=7, color="#555")
    peak = view.get("peak")
    start = {st.index: st.start_ns for st in rd.steps}
    if isinstance(peak, dict) and peak.get("step") in start:
        px = (start[peak["step"]] - t0) / 1e6 + float(peak.get("at_ms") or 0.0)
        ax.plot([px], [float(peak["allocated_mb"])], "o", color="#e45756", ms=4, label="peak allocated")
    # the traced steps only: samples before them (the profiler's warm-up) set the starting level
    ax.set_xlim(0, (rd.steps[-1].end_ns - t0) / 1e6)
    ax.set_ylim(0, top * 1.15)
    ax.set_xlabel(
        f"ms since step {rd.steps[0].index} began (steps numbered at the top; rank {rd.rank}, {view.get('device')})"
    )
    ax.set_ylabel("MB")
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig)


def _kernel_points(report: dict[str, Any], ctx: AnalysisContext | None) -> list[dict[str, Any]]:
    points = []
    if ctx is not None:
        try:
            for k in kernel_rooflines(ctx)[:25]:
                if k.flops and k.bytes and k.achieved_tflops:
                    points.append(
                        {
                            "name": k.kernel,
                            "ai": k.flops / k.bytes,
                            "tflops": k.achieved_tflops,
                            "ms": k.total_ms,
                            "cls": k.cls,
                        }
                    )
        except Exception:
            points = []
    if not points:
        for row in kernel_rows(report):
            if row.get("flops_per_byte") and row.get("achieved_tflops"):
                points.append(
                    {
                        "name": row["name"],
                        "ai": row["flops_per_byte"],
                        "tflops": row["achieved_tflops"],
                        "ms": row.get("total_ms") or 1.0,
                        "cls": row.get("class"),
                    }
                )
    return points


def roofline_chart(report: dict[str, Any], ctx: AnalysisContext | None) -> str | None:
    points = _kernel_points(report, ctx)
    if not points:
        return None
    device = (ctx.device_name if ctx is not None else None) or report.get("environment", {}).get("gpu")
    peaks = peaks_for(device)
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ai = np.logspace(-2, 4, 200)
    if peaks is not None:
        bw = peaks.dram_gbps * 1e9
        for dtype, style in (("bf16", "-"), ("fp32", "--")):
            roof = np.minimum(ai * bw, peaks.compute_tflops(dtype) * 1e12) / 1e12
            ax.plot(
                ai,
                roof,
                style,
                color="#555",
                lw=1,
                label=f"{dtype} roof ({peaks.compute_tflops(dtype):.0f} TFLOP/s, {peaks.dram_gbps / 1e3:.2f} TB/s)",
            )
    sizes = np.array([p["ms"] for p in points], dtype=float)
    sizes = 20 + 200 * sizes / max(sizes.max(), 1e-9)
    colours = [
        "#e45756" if p["cls"] == "memory-bound" else "#4c78a8" if p["cls"] == "compute-bound" else "#9d9da0"
        for p in points
    ]
    ax.scatter(
        [p["ai"] for p in points],
        [p["tflops"] for p in points],
        s=sizes,
        c=colours,
        alpha=0.8,
        edgecolors="k",
        linewidths=0.4,
    )
    for p in points:
        tag = "GR-KAN" if _GRKAN.search(p["name"]) else "attention" if _ATTENTION.search(p["name"]) else None
        if tag:
            ax.annotate(
                f"{tag}: {p['name'][:28]}",
                (p["ai"], p["tflops"]),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("attained TFLOP/s")
    ax.legend(frameon=False, fontsize=7, loc="lower right")
    return _svg(fig)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, bool):  # yes/no, as on the console: not Python's True/False
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value[:8]) + (" ..." if len(value) > 8 else "")
    return str(value)


def _kv(rows: dict[str, Any]) -> str:
    return (
        "<table class='kv'>"
        + "".join(
            f"<tr><td>{_e(k)}</td><td>{_e(_fmt(v))}</td></tr>" for k, v in rows.items() if v not in (None, "", [], {})
        )
        + "</table>"
    )


def _fix_advice(finding: dict[str, Any], fix_advice: FixAdvice | None) -> str:
    return "".join(
        f"<div class='fix'><p><b>fix {_e(fix_id)}</b></p><pre>{_e(text)}</pre></div>"
        for fix_id, text in fix_advice_lines(finding, fix_advice)
    )


def _findings(report: dict[str, Any], fix_advice: FixAdvice | None = None) -> str:
    items = []
    for f in report.get("findings", []):
        sev = _e(f["severity"])
        where = {k: v for k, v in f.get("where", {}).items() if v}
        items.append(
            f"<details open><summary><span class='sev {sev}'>{sev}</span> {_e(f['title'])} "
            f"<span class='muted'>({f['impact']['step_time_pct']:.1f}% of step, ~{f['impact']['est_saving_ms_per_step']:.3g} ms/step)</span></summary>"
            f"{_kv({'id': f['id'], 'category': f['category'], 'confidence': f.get('confidence'), **f.get('evidence', {}), **{'where.' + k: v for k, v in where.items()}, 'fixes': f.get('fixes'), 'advice': f.get('advice')})}"
            f"{_fix_advice(f, fix_advice)}</details>"
        )
    return "".join(items) or f"<p class='muted'>{_e(nothing_found(report))}</p>"


def _patches(report: dict[str, Any]) -> str | None:
    patches = report.get("patches")
    if not patches:
        return None
    entries = patches.get("fixes", patches) if isinstance(patches, dict) else patches
    if isinstance(entries, dict):
        entries = [dict(v, id=k) if isinstance(v, dict) else {"id": k, "decision": v} for k, v in entries.items()]
    rows = []
    for p in entries if isinstance(entries, list) else []:
        if not isinstance(p, dict):
            continue
        rows.append(
            f"<tr><td>{_e(p.get('id') or p.get('fix'))}</td><td>{_e(p.get('decision'))}</td><td>{_e(_fmt(p.get('speedup', '')))}</td>"
            f"<td>{_e(p.get('why') or p.get('reason') or '')}</td><td>{_e(_fmt(p.get('parity', '')))}</td></tr>"
        )
    return (
        "<table><tr><th>fix</th><th>decision</th><th>speedup</th><th>why</th><th>parity</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _top_kernels(report: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td><code>{_e(k['name'][:90])}</code></td><td>{k.get('count')}</td><td>{_fmt(k.get('total_ms'))}</td>"
        f"<td>{_fmt(k.get('pct'))}</td><td>{_e(k.get('class'))}</td></tr>"
        for k in kernel_rows(report)
    )
    if not rows:
        return "<p class='muted'>No GPU kernels in the trace.</p>"
    return (
        "<table><tr><th>kernel</th><th>calls</th><th>total ms</th><th>% of kernel time</th><th>class</th></tr>"
        + rows
        + "</table>"
    )


def _steps_text(summary: dict[str, Any], src: dict[str, Any]) -> str:
    """``24 steps in the run, 5 traced``; a lone trace has only the traced count."""
    traced = f"{summary.get('steps', 0)} traced"
    return (
        f"{summary['run_steps']} steps in the run, {traced}"
        if summary.get("run_steps") is not None
        else f"{traced} steps"
    )


def _section(key: str, title: str, content: str, chart: bool = False) -> tuple[str, str, str]:
    """(anchor, title, HTML) of one part of the report."""
    anchor = SECTION_IDS[key]
    cls = " class='chart'" if chart else ""
    return anchor, title, f"<section id='{anchor}'{cls}><h2>{_e(title)}</h2>{content}</section>"


def _phases(summary: dict[str, Any]) -> str | None:
    if not summary.get("phases"):
        return None
    rows = "".join(
        f"<tr><td>{_e(ph.get('phase'))}</td><td>{_e(ph.get('steps'))}</td><td>{_e(ph.get('median'))}</td>"
        f"<td>{_e(ph.get('p90'))}</td></tr>"
        for ph in summary["phases"]
    )
    return f"<table><tr><th>phase</th><th>steps</th><th>median ms</th><th>p90 ms</th></tr>{rows}</table>"


def render_html(report: dict[str, Any], ctx: AnalysisContext | None = None, fix_advice: FixAdvice | None = None) -> str:
    """The whole report as one HTML document (no external resources); ``fix_advice`` adds each
    fix's advice under the finding that names it. Each part is a section with the id of
    :data:`SECTION_IDS`, linked from the table of contents at the top."""
    summary = report.get("summary", {})
    st = summary.get("step_time_ms", {})
    src = report.get("source", {})
    parts: list[tuple[str, str, str]] = []
    charts = [
        ("breakdown", "Step-time breakdown", breakdown_chart(report)),
        ("steps", "Step time", step_time_chart(report)),
        ("nvml", "GPU timeline (NVML)", nvml_chart(ctx)),
        ("host", "Host CPU and memory (host.csv)", host_chart(ctx)),
        ("roofline", "Roofline of the top kernels", roofline_chart(report, ctx)),
    ]
    parts += [_section(key, title, svg, chart=True) for key, title, svg in charts if svg]
    parts.append(_section("findings", "Findings", _findings(report, fix_advice)))
    patches, phases = _patches(report), _phases(summary)
    if patches:
        parts.append(_section("patches", "Patches", patches))
    if phases:
        parts.append(_section("phases", "Step time by auto-patch phase", phases))
    parts.append(_section("kernels", "Top kernels", _top_kernels(report)))
    titles = {"cpu_ops": "Top CPU ops", "modules": "Time per module", "streams": "GPU streams", "memory": "Memory"}
    section = report.get("views")
    memory = section.get("memory") if isinstance(section, dict) else None
    for key, title in titles.items():
        for v in views_of(report, (key,)):
            chart = memory_chart(memory, ctx) if key == "memory" else None
            parts.append(_section(key, title, (chart or "") + v.to_html(), chart=chart is not None))
    parts.append(_section("environment", "Environment", _kv(report.get("environment", {}))))
    if report.get("notices"):
        notices = "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in report["notices"]) + "</ul>"
        parts.append(_section("notices", "Notices", notices))
    toc = "<nav class='toc'>" + "".join(f"<a href='#{a}'>{_e(t)}</a>" for a, t, _ in parts) + "</nav>"
    head = (
        f"{_e(_steps_text(summary, src))}, median {st.get('median', 0) or 0:.3f} ms "
        f"(p10 {st.get('p10', 0) or 0:.3f}, p90 {st.get('p90', 0) or 0:.3f}; {_e(st.get('source', ''))}) "
        f"&middot; {_e(src.get('path', ''))}"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>stallscope report</title>"
        f"<style>{CSS}</style></head><body><header><h1>stallscope report</h1><p>{head}</p></header>"
        f"<main>{toc}{''.join(part for _, _, part in parts)}</main></body></html>"
    )
