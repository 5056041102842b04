"""Fix advice by id: every registered fix has advice, and looking it up never imports torch."""
from __future__ import annotations

import subprocess
import sys

import pytest

from stallscope.fixes import advice_for
from stallscope.fixes.base import registered_fixes
from stallscope.fixes.tensorbleu.batch import SUGGESTION


@pytest.mark.parametrize("fix_id", sorted(registered_fixes()))
def test_every_registered_fix_has_advice(fix_id: str) -> None:
    text = advice_for(fix_id)
    assert text and len(text.strip()) > 40, f"fix {fix_id!r} has no advice"


@pytest.mark.parametrize("fix_id", sorted(i for i, c in registered_fixes().items()
                                          if c.scope in ("module", "process", "dataloader") and not c.advisory))
def test_patchable_fix_advice_says_how_stallscope_applies_it(fix_id: str) -> None:
    text = advice_for(fix_id) or ""
    assert "--auto-patch" in text or "stallscope.fixes.apply" in text or "stallscope.fixes." in text


def test_tensorbleu_advice_is_the_code_suggestion() -> None:
    assert advice_for("tensorbleu") == SUGGESTION


def test_underscore_spelling_and_unknown_ids() -> None:
    assert advice_for("pin_memory") == advice_for("pin-memory")
    assert advice_for("sdpa") is None and advice_for("") is None


def test_advice_for_does_not_import_torch() -> None:
    code = ("import sys; from stallscope.fixes import advice_for; "
            "assert all(advice_for(i) for i in ('tensorbleu', 'flashkat', 'tf32')); "
            "print(sorted(m for m in ('torch', 'triton', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
