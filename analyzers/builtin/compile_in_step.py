"""compile: torch.compile compiling inside the analysed steps (recompilations).

A compiled function compiles on its first call and again whenever a guard fails: a new input
shape or dtype, a changed global (grad mode, a module hook added or removed, a Python
attribute the graph read), or a cache that grew past its limit. Each compile costs the host
seconds (dynamo tracing, AOT autograd, inductor code generation) during which the GPU idles.
Compiling in the warm-up steps before the trace window is expected; compiling inside the
window means the program compiles in steady state.

Signature: the ``dynamo_timed`` ranges torch records around its compile stages
(``entire_frame_compile``, ``_compile.compile_inner``, ``compile_fx_inner``,
``backend_compile``, ``inductor_compile``; ``analyzers.builtin._common.COMPILE_EVENT``),
merged per thread and intersected with the steps. Severity by their share of step time, the
common 5 % / 20 % grading: a single recompile of a few seconds in a five-step window is always
high. Evidence: compile ms per step, frames compiled (``entire_frame_compile`` /
``compile_inner`` ranges), the steps they fell in. No automatic fix: the cause is a guard
failure only ``TORCH_LOGS=recompiles`` names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from stallscope.analyzers.base import Finding, Impact, register
from stallscope.analyzers.builtin import _common as c
from stallscope.analyzers.model import Kind

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext

_FRAME = ("entire_frame_compile", "_compile.compile_inner", "_compile.compile_inner (dynamo_timed)")


@register
class CompileInStep(c.PerRank):
    """torch.compile compiling (recompiling) inside the analysed steps."""

    name = "compile"
    requires = frozenset({"trace"})
    description = "torch.compile compiling inside the measured steps (recompilations)"

    def _analyze_rank(self, ctx: AnalysisContext) -> list[Finding]:
        rank = ctx.ranks[0]
        ev = rank.events
        total_ns, n_steps = c.window_ns(rank)
        rows = c.in_window(ev, ev.rows_named(lambda s: bool(c.COMPILE_EVENT.match(s)), Kind.CPU_OP, Kind.ANNOTATION))
        if not len(rows) or not total_ns:
            return []
        spent = c.covered_ns(ev.ts_ns[rows], ev.ts_ns[rows] + ev.dur_ns[rows])
        share = 100.0 * spent / total_ns
        if share <= c.LOW_PCT:
            return []
        frames = rows[np.fromiter((ev.name_of(int(r)) in _FRAME for r in rows), bool, len(rows))]
        # nested ranges of one frame compile (entire_frame_compile > compile_inner) count once
        starts, _ = c.merge(ev.ts_ns[frames], ev.ts_ns[frames] + ev.dur_ns[frames])
        steps = sorted({int(s) for s in ev.step[rows] if s >= 0})
        evidence = {
            "compile_ms_per_step": c.ms(spent) / n_steps,
            "compile_pct_of_step": share,
            "frames_compiled": int(len(starts)),
            "steps_with_compile": steps,
            "longest_compile_ms": c.ms(float(ev.dur_ns[rows].max())),
        }
        return [
            Finding(
                id="compile-in-step",
                category="compile",
                title=f"torch.compile compiled {len(starts) or 'a graph'} time(s) inside the measured steps",
                severity=c.grade(share),
                impact=Impact(share, c.ms(spent) / n_steps),
                evidence=evidence,
                where={"steps": steps, "events": c.top_counts(ev.name_of(int(r)) for r in rows)},
                confidence=0.9,
                fixes=[],
                advice="Find the failing guard with TORCH_LOGS=recompiles; keep shapes stable or mark them dynamic "
                "(torch._dynamo.mark_dynamic), do not change globals the graph reads between calls (grad mode, module "
                "hooks, attributes), and compile warm-up shapes before timing.",
            )
        ]
