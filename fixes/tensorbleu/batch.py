"""The batch shim for user loops, and the code suggestion printed with findings that name the
``tensorbleu`` fix (``stallscope.fixes.advice_for("tensorbleu")``). Imports torch lazily."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, cast

__all__ = ["sentence_bleu_batch", "corpus_bleu_batch", "suggestion", "SUGGESTION"]

SUGGESTION = """\
Token-ID BLEU per sentence runs on the CPU, one NLTK call per sample. Replace the loop with one
batched call (same numbers as NLTK sentence_bleu, |diff| <= 1e-6 in float64, smoothing 0-3):

    # before
    from nltk.translate.bleu_score import sentence_bleu, SmoothingFunction
    rewards = [sentence_bleu(refs, hyp, smoothing_function=SmoothingFunction().method1)
               for refs, hyp in zip(list_of_references, hypotheses)]

    # after: lists of token lists (ids or strings) ...
    from stallscope.fixes.tensorbleu import sentence_bleu_batch
    rewards = sentence_bleu_batch(list_of_references, hypotheses, smoothing=1)

    # ... or token-id tensors straight from generate(), without leaving the GPU
    from stallscope.fixes.tensorbleu import sentence_bleu
    rewards = sentence_bleu(generated_ids, reference_ids, pad_id=tokenizer.pad_token_id,
                            smoothing=1, vocab_size=tokenizer.vocab_size)   # (B,) on the GPU

This is token-ID BLEU: it scores token ids, so it depends on the tokenizer. It is right for
rewards and relative comparisons during training. It is NOT SacreBLEU; report SacreBLEU on
detokenized text for results you publish."""


def suggestion() -> str:
    """The code suggestion for a per-sentence BLEU loop (the ``tensorbleu`` fix's advice)."""
    return SUGGESTION


def _encode(list_of_references: Sequence[Sequence[Sequence[Hashable]]], hypotheses: Sequence[Sequence[Hashable]]):
    """Lists of token lists -> padded int64 tensors, lengths, reference counts, vocabulary size.
    Non-integer tokens (strings) get ids in order of appearance; BLEU only needs equality."""
    import torch

    if len(list_of_references) != len(hypotheses):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(list_of_references)} reference lists; give one list per hypothesis"
        )
    vocabulary: dict[Any, int] = {}

    def ids(tokens: Sequence[Hashable]) -> list[tuple[str, Hashable]]:
        out: list[tuple[str, Hashable]] = []
        for t in tokens:
            if isinstance(t, int) and not isinstance(t, bool) and t >= 0:
                out.append(("int", t))
            else:
                out.append(("tok", t))
        return out

    hyp_rows = [ids(h) for h in hypotheses]
    ref_rows = [[ids(r) for r in refs] for refs in list_of_references]
    if any(len(refs) == 0 for refs in ref_rows):
        raise ValueError("every hypothesis needs at least one reference")
    ints_only = all(kind == "int" for row in hyp_rows for kind, _ in row) and all(
        kind == "int" for refs in ref_rows for row in refs for kind, _ in row
    )

    def as_ids(row: list[tuple[str, Hashable]]) -> list[int]:
        if ints_only:  # every token is tagged "int": a non-negative int
            return cast(list[int], [t for _, t in row])
        return [vocabulary.setdefault(item, len(vocabulary)) for item in row]

    hyp_ids = [as_ids(r) for r in hyp_rows]
    ref_ids = [[as_ids(r) for r in refs] for refs in ref_rows]
    batch = len(hyp_ids)
    refs = max((len(r) for r in ref_ids), default=1)
    lc = max((len(h) for h in hyp_ids), default=0)
    lr = max((len(r) for rs in ref_ids for r in rs), default=0)
    cand = torch.zeros(batch, max(lc, 1), dtype=torch.long)
    ref = torch.zeros(batch, refs, max(lr, 1), dtype=torch.long)
    cand_len = torch.tensor([len(h) for h in hyp_ids], dtype=torch.long)
    ref_len = torch.zeros(batch, refs, dtype=torch.long)
    for i, h in enumerate(hyp_ids):
        cand[i, : len(h)] = torch.tensor(h, dtype=torch.long)
        for j, r in enumerate(ref_ids[i]):
            ref[i, j, : len(r)] = torch.tensor(r, dtype=torch.long)
            ref_len[i, j] = len(r)
    num_refs = torch.tensor([len(r) for r in ref_ids], dtype=torch.long)
    if ints_only:
        top = max([max(h, default=-1) for h in hyp_ids] + [max(r, default=-1) for rs in ref_ids for r in rs])
        vocab = top + 1
    else:
        vocab = len(vocabulary)
    return cand, ref, cand_len, ref_len, num_refs, max(vocab, 1)


def _run(fn_name: str, list_of_references, hypotheses, weights, smoothing, device, **kwargs):
    import torch

    from stallscope.fixes.tensorbleu import bleu

    fn = getattr(bleu, fn_name)
    if isinstance(hypotheses, torch.Tensor):
        return fn(hypotheses, list_of_references, weights=weights, smoothing=smoothing, **kwargs)
    cand, ref, cand_len, ref_len, num_refs, vocab = _encode(list_of_references, hypotheses)
    if device is not None:
        cand, ref, cand_len, ref_len, num_refs = (t.to(device) for t in (cand, ref, cand_len, ref_len, num_refs))
    return fn(
        cand,
        ref,
        candidate_lengths=cand_len,
        reference_lengths=ref_len,
        num_references=num_refs,
        weights=weights,
        smoothing=smoothing,
        vocab_size=vocab,
        **kwargs,
    )


def sentence_bleu_batch(
    list_of_references: Sequence[Sequence[Sequence[Hashable]]] | Any,
    hypotheses: Sequence[Sequence[Hashable]] | Any,
    *,
    weights: Sequence[float] | None = None,
    smoothing: int | str | object = 0,
    device: Any = None,
    **kwargs: Any,
) -> list[float] | Any:
    """NLTK ``sentence_bleu`` for a whole batch in one call, arguments in NLTK's corpus order.

    Lists of token lists (ints or strings) give a list of floats; token-id tensors
    (``hypotheses`` (B, Lc), ``list_of_references`` (B, R, Lr)) give a (B,) tensor (pass
    ``pad_id=`` or lengths as for :func:`stallscope.fixes.tensorbleu.sentence_bleu`). ``smoothing`` is
    0-3 or an NLTK ``SmoothingFunction().methodK``."""
    import torch

    out = _run("sentence_bleu", list_of_references, hypotheses, weights, smoothing, device, **kwargs)
    return out if isinstance(hypotheses, torch.Tensor) else out.cpu().tolist()


def corpus_bleu_batch(
    list_of_references: Sequence[Sequence[Sequence[Hashable]]] | Any,
    hypotheses: Sequence[Sequence[Hashable]] | Any,
    *,
    weights: Sequence[float] | None = None,
    smoothing: int | str | object = 0,
    device: Any = None,
    **kwargs: Any,
) -> float | Any:
    """NLTK ``corpus_bleu`` on lists of token lists (a float) or token-id tensors (a 0-d tensor)."""
    import torch

    out = _run("corpus_bleu", list_of_references, hypotheses, weights, smoothing, device, **kwargs)
    return out if isinstance(hypotheses, torch.Tensor) else float(out)
