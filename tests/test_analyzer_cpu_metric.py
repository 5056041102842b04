"""cpu-metric analyzer on real CPU traces with Python stacks: a per-sentence BLEU loop in the
step is found and named; ordinary Python work is not a metric."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from stallscope.analyzers.render import ReportView, to_markdown
from stallscope.fixes import advice_for
from tests.analyzer_traces import context, record, run

LIN = torch.nn.Linear(32, 32)
REFS = [[(i * 7 + j) % 50 for j in range(30)] for i in range(24)]


def sentence_bleu(reference, hypothesis, max_n=4):
    log_p = 0.0
    for n in range(1, max_n + 1):
        hyp = Counter(tuple(hypothesis[i:i + n]) for i in range(len(hypothesis) - n + 1))
        ref = Counter(tuple(reference[i:i + n]) for i in range(len(reference) - n + 1))
        match = sum(min(c, ref[g]) for g, c in hyp.items())
        log_p += math.log((match + 1) / (sum(hyp.values()) + 1)) / max_n
    return math.exp(log_p)


def _console_text(report):
    console = Console(record=True, width=160)
    console.print(ReportView(report, fix_advice=advice_for))
    return console.export_text()


def train_step_with_bleu(i):
    out = LIN(torch.randn(24, 32))
    hyps = (out.argmax(-1, keepdim=True) + torch.arange(30)).remainder(50).tolist()
    for _ in range(2):
        rewards = [sentence_bleu(r, h) for r, h in zip(REFS, hyps)]
    (out.sum() * sum(rewards)).backward()


def test_bleu_in_the_step_is_a_cpu_metric_with_tensorbleu(tmp_path):
    found = run("cpu-metric", context(record(tmp_path / "bleu.json", train_step_with_bleu)))
    assert len(found) == 1
    f = found[0]
    assert f.category == "cpu-metric" and f.fixes == ["tensorbleu"]
    assert f.evidence["metric"] == "BLEU"
    assert any("sentence_bleu" in p for p in f.where["python"])
    # Rendered with the fixes' advice, the finding prints the code change: one batched TensorBLEU
    # call, said to be token-ID BLEU.
    report = {"findings": [f.to_dict()]}
    for text in (to_markdown(report, fix_advice=advice_for), _console_text(report)):
        assert "sentence_bleu_batch" in text and "NOT SacreBLEU" in text
    # the loop calling the metric is not counted as the metric: the share stays below the step
    assert 5 < f.impact.step_time_pct < 100


def test_plain_python_work_is_not_a_metric(tmp_path):
    def step(i):
        out = LIN(torch.randn(40, 32))
        total = 0
        for k in range(20000):
            total += k % 7
        out.sum().backward()

    assert run("cpu-metric", context(record(tmp_path / "plain.json", step))) == []


def test_without_stacks_a_cpu_only_trace_gives_no_metric_finding(tmp_path):
    assert run("cpu-metric", context(record(tmp_path / "nostack.json", train_step_with_bleu, stacks=False))) == []


@given(
    st.lists(st.tuples(st.integers(0, 80), st.integers(1, 15)), max_size=10),
    st.integers(-5, 90),
    st.integers(0, 50),
)
def test_idle_gaps_are_the_uncovered_time_of_the_window(spans: list[tuple[int, int]], lo: int, width: int) -> None:
    """_gaps against a brute-force reference: every integer instant of [lo, hi) that no busy
    interval covers, grouped into maximal runs."""
    from stallscope.analyzers.builtin._common import merge
    from stallscope.analyzers.builtin.cpu_metric import _gaps

    hi = lo + width
    starts = np.asarray([s for s, _ in spans], dtype=np.int64)
    ends = np.asarray([s + d for s, d in spans], dtype=np.int64)
    gs, ge = merge(starts, ends)
    idle = [t for t in range(lo, hi) if not any(s <= t < s + d for s, d in spans)]
    runs: list[tuple[int, int]] = []
    for t in idle:
        if runs and runs[-1][1] == t:
            runs[-1] = (runs[-1][0], t + 1)
        else:
            runs.append((t, t + 1))
    assert _gaps(None, lo, hi, gs, ge) == runs  # type: ignore[arg-type]
