"""TensorBLEU: token-ID BLEU per sentence and per corpus on token-id tensors (CPU or CUDA), equal
to NLTK's ``sentence_bleu`` / ``corpus_bleu``. Token-ID BLEU, not SacreBLEU.

Imports lazily so that ``stallscope.fixes.tensorbleu.fix`` (and ``stallscope patch plan``) stay cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["sentence_bleu", "corpus_bleu", "sentence_bleu_batch", "corpus_bleu_batch", "suggestion", "SUGGESTION"]

_HOME = {
    "sentence_bleu": "bleu",
    "corpus_bleu": "bleu",
    "ngram_statistics": "bleu",
    "bleu_from_statistics": "bleu",
    "sentence_bleu_batch": "batch",
    "corpus_bleu_batch": "batch",
    "suggestion": "batch",
    "SUGGESTION": "batch",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
