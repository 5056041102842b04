"""CI performance gate: decide on per-step samples whether a report regressed against a baseline.

Modules: :mod:`~analyzers.stats` (Mann-Whitney U, bootstrap, Student's t, numpy only),
:mod:`~analyzers.gate.variance` (run-level variance models: measured between runs, or assumed),
:mod:`~analyzers.gate.runs` (the runs of each side: a report, a folder of reports, rounds),
:mod:`~analyzers.gate.evaluate` (judging rules on two sides),
:mod:`~analyzers.gate.rules` (gate.yaml schema and validation), :mod:`~analyzers.gate.results`
(one rule's judgement), :mod:`~analyzers.gate.fingerprint` (environment comparison),
:mod:`~analyzers.gate.verdict` (console, YAML, JUnit, markdown), :mod:`~analyzers.gate.command`
(``stallscope gate``) and :mod:`~analyzers.gate.paired` (``stallscope gate ab``). Nothing here
imports torch.
"""

from __future__ import annotations

__all__ = ["EXIT_INCONCLUSIVE", "EXIT_PASS", "EXIT_REGRESSION", "EXIT_USAGE"]

EXIT_PASS, EXIT_REGRESSION, EXIT_USAGE, EXIT_INCONCLUSIVE = 0, 1, 2, 3
