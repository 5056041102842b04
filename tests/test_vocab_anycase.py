"""anycase: the lowercase-and-search test the analyzers use on kernel names and Python frames."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stallscope.analyzers.vocab import anycase

PATTERN = r"gemm|nvjet_[thbqe]|(^|/)evaluate/|splitkreduce"


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("void cutlass::Kernel2<cutlass_80_tensorop_s16816GEMM_bf16>", True),
        ("NVJET_T_128x256", True),
        ("nvjet_sm90", False),
        ("Evaluate/bleu.py(12): score", True),
        ("my_evaluate/x", False),
        ("cublasLt::splitKreduce_kernel", True),
        ("elementwise_kernel", False),
    ],
)
def test_any_ascii_case_matches(text: str, hit: bool) -> None:
    assert anycase(PATTERN)(text) is hit


@given(st.text(alphabet="gemGEMnvjt_/evaluteEVALUTEsplikrduc xyz", max_size=30))
def test_same_answer_as_ignorecase_on_ascii(text: str) -> None:
    assert anycase(PATTERN)(text) == bool(re.search(PATTERN, text, re.IGNORECASE))


def test_patterns_must_be_lower_case() -> None:
    with pytest.raises(ValueError):
        anycase(r"gemmSN")
