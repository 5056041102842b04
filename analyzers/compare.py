"""``stallscope compare A B``: two runs side by side, with the gate's statistics on step time.

A and B are report dicts (``stallscope compare`` opens its arguments with
:func:`analyzers.inputs.open_report`). The comparison holds: step time (median, p90,
change, one-sided Mann-Whitney p-values both ways, the bootstrap interval of the median ratio),
the breakdown side by side, the kernels whose time per step changed most, and the findings
new in B, resolved in B, and unchanged. It renders to the console (``__rich__``), markdown and
YAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stallscope.analyzers.stats import compare_samples

__all__ = ["Comparison", "compare_reports"]

MIN_SAMPLES = 5
SIGNIFICANT_P = 0.01


def _section(report: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``report[keys[0]][keys[1]]...`` when each is a mapping, else {} (sections may be missing)."""
    node: Any = report
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _items(report: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The mappings of the list ``report[key]`` (a missing list is empty)."""
    value = report.get(key)
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _per_step_kernel_ms(report: dict[str, Any]) -> dict[str, float]:
    steps = max(int(_section(report, "summary").get("steps") or 1), 1)
    return {str(k.get("name", "?")): float(k.get("total_ms") or 0.0) / steps for k in _items(report, "top_kernels")}


@dataclass
class Comparison:
    """The comparison of report ``a`` (before) with report ``b`` (after)."""

    a_source: str
    b_source: str
    step_time: dict[str, Any]
    breakdown: dict[str, dict[str, float]]
    kernels: list[dict[str, Any]]
    findings: dict[str, list[dict[str, Any]]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "kind": "stallscope-comparison",
            "a": self.a_source,
            "b": self.b_source,
            "step_time": self.step_time,
            "breakdown_pct": self.breakdown,
            "kernels_changed": self.kernels,
            "findings": self.findings,
        }

    def to_markdown(self) -> str:
        st = self.step_time
        lines = [
            "## stallscope compare",
            "",
            f"- A: `{self.a_source}`",
            f"- B: `{self.b_source}`",
            "",
            "| step time (ms) | A | B | change |",
            "|---|---:|---:|---:|",
        ]
        for stat in ("median", "p90"):
            a, b = st["a"].get(stat), st["b"].get(stat)
            change = f"{(b / a - 1) * 100:+.1f}%" if a and b else "n/a"
            lines.append(f"| {stat} | {a:.3f} | {b:.3f} | {change} |" if a and b else f"| {stat} | {a} | {b} | n/a |")
        lines += [
            "",
            f"Speedup (median A / median B): **{st.get('speedup', float('nan')):.2f}x**; verdict: **{st['verdict']}** "
            f"(p slower {st.get('p_slower', float('nan')):.3g}, p faster {st.get('p_faster', float('nan')):.3g})",
            "",
            "| breakdown (% of step) | A | B |",
            "|---|---:|---:|",
        ]
        for key, row in self.breakdown.items():
            lines.append(f"| {key} | {row['a']:.1f} | {row['b']:.1f} |")
        if self.kernels:
            lines += ["", "| kernel | A ms/step | B ms/step | change ms/step |", "|---|---:|---:|---:|"]
            for k in self.kernels:
                lines.append(
                    f"| `{k['name'][:60]}` | {k['a_ms_per_step']:.3f} | {k['b_ms_per_step']:.3f} | {k['delta_ms_per_step']:+.3f} |"
                )
        lines.append("")
        for group in ("resolved", "new", "unchanged"):
            items = self.findings[group]
            lines.append(
                f"**Findings {group}** ({len(items)}): "
                + (", ".join(f"`{f['id']}` ({f['severity']})" for f in items) or "none")
            )
            lines.append("")
        return "\n".join(lines)

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        st = self.step_time
        t = Table(title="step time (ms)", show_edge=False)
        for col in ("", "A", "B", "change"):
            t.add_column(col, justify="right" if col else "left")
        for stat in ("median", "p90"):
            a, b = st["a"].get(stat), st["b"].get(stat)
            t.add_row(
                stat,
                f"{a:.3f}" if a else "-",
                f"{b:.3f}" if b else "-",
                f"{(b / a - 1) * 100:+.1f}%" if a and b else "-",
            )
        head = f"speedup {st.get('speedup', float('nan')):.2f}x  verdict: {st['verdict']}  (p slower {st.get('p_slower', float('nan')):.3g}, p faster {st.get('p_faster', float('nan')):.3g})"
        bd = Table(title="breakdown (% of step)", show_edge=False)
        for col in ("part", "A", "B"):
            bd.add_column(col, justify="left" if col == "part" else "right")
        for key, row in self.breakdown.items():
            bd.add_row(key, f"{row['a']:.1f}", f"{row['b']:.1f}")
        kt = Table(title="kernels that changed (ms per step)", show_edge=False)
        for col in ("kernel", "A", "B", "delta"):
            kt.add_column(col, justify="left" if col == "kernel" else "right")
        for k in self.kernels:
            kt.add_row(
                k["name"][:60],
                f"{k['a_ms_per_step']:.3f}",
                f"{k['b_ms_per_step']:.3f}",
                f"{k['delta_ms_per_step']:+.3f}",
            )
        lines = [
            f"findings {g}: " + (", ".join(f"{f['id']} ({f['severity']})" for f in self.findings[g]) or "none")
            for g in ("resolved", "new", "unchanged")
        ]
        return Group(t, head, bd, kt, *lines)


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> Comparison:
    """Compare report ``a`` (before) with ``b`` (after)."""
    sa = _section(a, "summary", "step_time_ms")
    sb = _section(b, "summary", "step_time_ms")
    step: dict[str, Any] = {
        "a": {k: sa.get(k) for k in ("median", "p10", "p90")},
        "b": {k: sb.get(k) for k in ("median", "p10", "p90")},
        "n_a": len(sa.get("samples") or []),
        "n_b": len(sb.get("samples") or []),
    }
    if sa.get("median") and sb.get("median"):
        step["speedup"] = float(sa["median"]) / float(sb["median"])
    if step["n_a"] >= MIN_SAMPLES and step["n_b"] >= MIN_SAMPLES:
        cmp = compare_samples(sa["samples"], sb["samples"], statistic="median")
        step.update(
            {
                "change_pct": cmp.change_pct,
                "p_slower": cmp.p_worse,
                "p_faster": cmp.p_better,
                "ci_ratio": list(cmp.ci_ratio),
            }
        )
        step["verdict"] = (
            "faster"
            if cmp.p_better < SIGNIFICANT_P
            else "slower"
            if cmp.p_worse < SIGNIFICANT_P
            else "no significant change"
        )
    else:
        step["verdict"] = f"inconclusive (fewer than {MIN_SAMPLES} step samples on a side)"
    pa = _section(a, "summary", "breakdown_pct")
    pb = _section(b, "summary", "breakdown_pct")
    breakdown = {
        k: {"a": float(pa.get(k, 0.0) or 0.0), "b": float(pb.get(k, 0.0) or 0.0)} for k in dict.fromkeys([*pa, *pb])
    }
    ka, kb = _per_step_kernel_ms(a), _per_step_kernel_ms(b)
    kernels: list[dict[str, Any]] = [
        {
            "name": n,
            "a_ms_per_step": ka.get(n, 0.0),
            "b_ms_per_step": kb.get(n, 0.0),
            "delta_ms_per_step": kb.get(n, 0.0) - ka.get(n, 0.0),
        }
        for n in dict.fromkeys([*ka, *kb])
    ]
    kernels.sort(key=lambda k: -abs(k["delta_ms_per_step"]))
    fa = {str(f.get("id")): f for f in _items(a, "findings")}
    fb = {str(f.get("id")): f for f in _items(b, "findings")}

    def brief(f: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": str(f.get("id")),
            "severity": f.get("severity", "?"),
            "title": f.get("title", ""),
            "step_time_pct": _section(f, "impact").get("step_time_pct"),
        }

    findings = {
        "resolved": [brief(fa[i]) for i in fa if i not in fb],
        "new": [brief(fb[i]) for i in fb if i not in fa],
        "unchanged": [brief(fb[i]) for i in fb if i in fa],
    }
    return Comparison(
        str(_section(a, "source").get("path", "A")),
        str(_section(b, "source").get("path", "B")),
        step,
        breakdown,
        kernels[:10],
        findings,
    )
