"""Run every registered analyzer whose inputs are present; never let one analyzer sink the report.

An analyzer whose ``requires`` are not all met by the context is skipped, and the report lists
it with the missing inputs. An analyzer that raises becomes a notice (its name, the exception in
one line); with ``debug=True`` the exception propagates instead. Once all have run, the
accounting (:mod:`~stallscope.analyzers.accounting`) caps the findings' savings to the parts of
the step they come from, then the findings are ranked.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from stallscope.analyzers.accounting import Accounting, account
from stallscope.analyzers.base import Finding, registered_analyzers
from stallscope.analyzers.loader import can_fork, idle_cores
from stallscope.analyzers.model import AnalysisContext

__all__ = ["AnalyzerRun", "run_analyzers", "rank_findings"]


@dataclass
class AnalyzerRun:
    """What running the analyzers produced."""

    findings: list[Finding] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # name -> missing inputs
    failed: dict[str, str] = field(default_factory=dict)  # name -> one-line error
    seconds: dict[str, float] = field(default_factory=dict)
    accounting: Accounting | None = None  # None when the context has no steps


def rank_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Highest impact first: estimated ms saved per step, then share of step, then severity."""
    return sorted(
        findings,
        key=lambda f: (-float(f.impact.est_saving_ms_per_step), -float(f.impact.step_time_pct), -f.severity.rank, f.id),
    )


def _run_one(
    ctx: AnalysisContext, name: str, debug: bool = False
) -> tuple[str, list[Finding], str | None, float, list[str]]:
    """Run one analyzer: (name, findings, error or None, seconds, notices it added)."""
    cls = registered_analyzers([name])[name]
    before = len(ctx.notices)
    t0 = time.perf_counter()
    try:
        found = list(cls().analyze(ctx) or [])
        for f in found:
            if not isinstance(f, Finding):
                raise TypeError(f"returned {type(f).__name__}, not Finding")
            f.analyzer = f.analyzer or name
        error = None
    except Exception as exc:  # an analyzer bug must not cost the user the report
        if debug:
            raise
        found = []
        error = f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}"
    return name, found, error, time.perf_counter() - t0, ctx.notices[before:]


_FORK_CTX: AnalysisContext | None = None
PARALLEL_MIN_EVENTS = 100_000


def _child(name: str) -> tuple[str, list[Finding], str | None, float, list[str]]:
    assert _FORK_CTX is not None
    return _run_one(_FORK_CTX, name)


def _workers(ctx: AnalysisContext, jobs: int) -> int:
    """Analyzers run in forked workers (copy-on-write context) on big traces and several cores."""
    env = os.environ.get("STALLSCOPE_ANALYZER_WORKERS")
    if env is not None:
        return max(1, int(env)) if env.isdigit() else 1
    events = sum(len(r.events) for r in ctx.ranks)
    if events < PARALLEL_MIN_EVENTS or jobs < 2 or not can_fork():
        return 1
    if threading.active_count() > 1:  # forking a threaded process (e.g. inside `profile`) can deadlock
        return 1
    idle = int(idle_cores())
    if idle < 2:  # on a busy machine the workers only add fork and copy costs
        return 1
    return max(1, min(idle, jobs, 4))


def run_analyzers(
    ctx: AnalysisContext, names: Iterable[str] | None = None, debug: bool = False, step_ms: float | None = None
) -> AnalyzerRun:
    """Run the registered analyzers (or only ``names``) on ``ctx``; findings accounted for
    (savings capped to their parts of the step and to ``step_ms``, the step the report states;
    without it the accounting window per step) and ranked by impact.

    On large traces with several cores the analyzers run in forked worker processes (each sees
    the loaded context copy-on-write; findings and notices come back); with ``debug`` or
    ``STALLSCOPE_ANALYZER_WORKERS=1`` they run in this process.
    """
    global _FORK_CTX
    out = AnalyzerRun()
    todo: list[str] = []
    for name, cls in registered_analyzers(names).items():
        missing = sorted(r for r in cls.requires if not ctx.has(r))
        if missing:
            out.skipped[name] = missing
        else:
            todo.append(name)
    workers = 1 if debug else _workers(ctx, len(todo))
    results: list[tuple[str, list[Finding], str | None, float, list[str]]] = []
    if workers > 1:
        import multiprocessing  # only here: see loader.can_fork

        _FORK_CTX = ctx
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                results = pool.map(_child, todo, chunksize=1)
        except Exception:  # noqa: BLE001 - a broken pool must not cost the report: run here
            results = []
        finally:
            _FORK_CTX = None
    if not results:
        results = [_run_one(ctx, name, debug) for name in todo]
    for name, found, error, seconds, notices in results:
        out.seconds[name] = seconds
        if workers > 1:
            ctx.notices.extend(n for n in notices if n not in ctx.notices)
        if error is not None:
            out.failed[name] = error
            ctx.notices.append(
                f"analyzer {name} failed ({error.split(':')[0]}: {error.split(': ', 1)[-1]}); its findings are missing"
            )
            continue
        out.ran.append(name)
        out.findings.extend(found)
    out.accounting = account(ctx, out.findings, step_ms, out.ran, out.skipped, out.failed)
    out.findings = rank_findings(out.findings)
    return out
