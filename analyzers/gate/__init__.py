"""CI performance gate: decide on per-step samples whether a report regressed against a baseline.

Modules: :mod:`~analyzers.stats` (Mann-Whitney U, bootstrap, numpy only),
:mod:`~analyzers.gate.evaluate` (judging rules on two reports),
:mod:`~analyzers.gate.rules` (gate.yaml schema and validation),
:mod:`~analyzers.gate.fingerprint` (environment comparison), :mod:`~analyzers.gate.verdict`
(console, YAML, JUnit, markdown), :mod:`~analyzers.gate.command` (``stallscope gate``) and
:mod:`~analyzers.gate.paired` (``stallscope gate ab``). Nothing here imports torch.
"""

from __future__ import annotations

__all__ = ["EXIT_INCONCLUSIVE", "EXIT_PASS", "EXIT_REGRESSION", "EXIT_USAGE"]

EXIT_PASS, EXIT_REGRESSION, EXIT_USAGE, EXIT_INCONCLUSIVE = 0, 1, 2, 3
