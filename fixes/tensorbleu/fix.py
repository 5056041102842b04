"""Fix ``tensorbleu``: advisory. A per-sentence NLTK BLEU call inside a Python loop cannot be
batched by patching the callable (each call still sees one sentence), so this fix finds the
metric callable, explains, and hands the user the batched API; it never patches by itself."""

from __future__ import annotations

from typing import Any

from stallscope.fixes.base import Fix, PatchHandle, Target, Tolerance, register
from stallscope.fixes.tensorbleu.batch import SUGGESTION

_NLTK_BLEU = {"sentence_bleu", "corpus_bleu"}
_REASON = (
    "advisory only: a per-sentence BLEU call in a Python loop cannot be batched by patching it; "
    "replace the loop with one call to stallscope.fixes.tensorbleu.sentence_bleu_batch(list_of_references, hypotheses) "
    "or stallscope.fixes.tensorbleu.sentence_bleu(token_id_tensors) (token-ID BLEU, not SacreBLEU)"
)


def _is_bleu_metric(obj: Any) -> bool:
    module = getattr(obj, "__module__", "") or ""
    name = getattr(obj, "__name__", "") or ""
    return callable(obj) and (
        (module.startswith("nltk.translate") and name in _NLTK_BLEU)
        or module.startswith("sacrebleu")
        or "bleu" in name.lower()
    )


@register
class TensorBleuFix(Fix):
    """Per-sentence BLEU on the CPU -> one vectorized token-ID BLEU call (CPU or CUDA)."""

    id = "tensorbleu"
    answers = ("cpu-metric",)
    description = "Replace per-sentence NLTK BLEU loops with one vectorized token-ID BLEU call (TensorBLEU)"
    tolerance = Tolerance(
        rtol=0.0,
        atol=1e-6,
        grad_rtol=0.0,
        grad_atol=0.0,
        note="max |BLEU - NLTK| <= 1e-6 in float64 (1e-5 in float32), same smoothing",
    )
    scope = "callable"
    advice = SUGGESTION

    def find_targets(self, root: Any) -> list[Target]:
        """The BLEU metric callable when ``root`` is one (NLTK ``sentence_bleu``/``corpus_bleu``,
        a SacreBLEU function, or a function named ``*bleu*``); nothing for models or loaders."""
        if root is None or not _is_bleu_metric(root):
            return []
        name = f"{getattr(root, '__module__', '?')}.{getattr(root, '__qualname__', getattr(root, '__name__', '?'))}"
        return [Target(name=name, obj=root, kind="callable")]

    def why_not(self, target: Target) -> str | None:
        """Always a reason: the user must call the batched API (see ``advice``)."""
        module = getattr(target.obj, "__module__", "") or ""
        if module.startswith("sacrebleu"):
            return (
                _REASON
                + "; SacreBLEU scores detokenized text, so token-ID BLEU is a different metric: keep SacreBLEU for reported results"
            )
        return _REASON

    def apply(self, target: Target) -> PatchHandle:
        raise RuntimeError(self.why_not(target) or _REASON)

    def revert(self, handle: PatchHandle) -> None:
        handle.reverted = True
