"""Run every registered analyzer whose inputs are present; never let one analyzer sink the report.

An analyzer whose ``requires`` are not all met by the context is skipped, and the report lists
it with the missing inputs. An analyzer that raises becomes a notice (its name, the exception in
one line); with ``debug=True`` the exception propagates instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

from analyzers.base import Finding, registered_analyzers
from analyzers.model import AnalysisContext

__all__ = ["AnalyzerRun", "run_analyzers", "rank_findings"]


@dataclass
class AnalyzerRun:
    """What running the analyzers produced."""

    findings: list[Finding] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # name -> missing inputs
    failed: dict[str, str] = field(default_factory=dict)  # name -> one-line error
    seconds: dict[str, float] = field(default_factory=dict)


def rank_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Highest impact first: estimated ms saved per step, then share of step, then severity."""
    return sorted(
        findings,
        key=lambda f: (-float(f.impact.est_saving_ms_per_step), -float(f.impact.step_time_pct), -f.severity.rank, f.id),
    )


def run_analyzers(ctx: AnalysisContext, names: Iterable[str] | None = None, debug: bool = False) -> AnalyzerRun:
    """Run the registered analyzers (or only ``names``) on ``ctx``; findings ranked by impact."""
    out = AnalyzerRun()
    for name, cls in registered_analyzers(names).items():
        missing = sorted(r for r in cls.requires if not ctx.has(r))
        if missing:
            out.skipped[name] = missing
            continue
        t0 = time.perf_counter()
        try:
            found = list(cls().analyze(ctx) or [])
            for f in found:
                if not isinstance(f, Finding):
                    raise TypeError(f"returned {type(f).__name__}, not Finding")
                f.analyzer = f.analyzer or name
        except Exception as exc:  # an analyzer bug must not cost the user the report
            if debug:
                raise
            msg = " ".join(str(exc).split())[:200]
            out.failed[name] = f"{exc.__class__.__name__}: {msg}"
            ctx.notices.append(f"analyzer {name} failed ({exc.__class__.__name__}: {msg}); its findings are missing")
            continue
        finally:
            out.seconds[name] = time.perf_counter() - t0
        out.ran.append(name)
        out.findings.extend(found)
    out.findings = rank_findings(out.findings)
    return out
