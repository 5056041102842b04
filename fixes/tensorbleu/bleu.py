"""Token-ID BLEU on token-id tensors, per sentence and per corpus, with NLTK's exact semantics.

All sentences and all n-gram orders are counted at once. Every valid n-gram window of the
candidates and of every reference becomes one row; the rows are sorted by (owner sentence,
n-gram) so that equal n-grams of one sentence are adjacent. The run index after the sort is a
compact n-gram dictionary (the one ``torch.unique`` builds by sorting), without reading its size
back to the host, so the default path has no host synchronisation. Counts per run come from an
offset scatter-add; clipping is ``min(candidate count, max over references)``.

N-grams are packed into one int64 key when ``(vocab_size + 1) ** max_n < 2**63`` (e.g. GPT-2's
50,257 tokens with n <= 4), else sorted lexicographically column by column.
``backend="unique"`` runs the paper's scheme literally (``torch.unique`` + offset ``bincount``
into a (sentence x dictionary) table): same results, one host sync, O(B*U) memory.

Semantics follow ``nltk.translate.bleu_score`` 3.x: denominators ``max(1, count)`` per
sentence, score 0 when no unigram matches, closest reference length with ties to the shorter,
BP = 1 if c > r, 0 if c == 0, else exp(1 - r/c); smoothing methods 0-3. ``auto_reweigh`` is not
supported. This is token-ID BLEU: it depends on the tokenizer; report SacreBLEU for papers.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch

__all__ = ["sentence_bleu", "corpus_bleu", "ngram_statistics", "bleu_from_statistics"]

_INT64_MAX = 2**63 - 1


def _smoothing_id(smoothing: int | str | object) -> int:
    if smoothing is None:
        return 0
    if isinstance(smoothing, int) and 0 <= smoothing <= 3:
        return smoothing
    name = smoothing if isinstance(smoothing, str) else getattr(smoothing, "__name__", "")
    for k in range(4):
        if name in (f"method{k}", str(k)):
            return k
    names = {"floor": 1, "add-1": 2, "add1": 2, "exp": 3, "none": 0}
    if isinstance(name, str) and name.lower() in names:
        return names[name.lower()]
    raise ValueError(f"smoothing {smoothing!r} is not supported; use 0-3 (NLTK method0-method3)")


def _as_mask(tokens: torch.Tensor, pad_id: int | None, lengths: torch.Tensor | None) -> torch.Tensor:
    if lengths is not None:
        positions = torch.arange(tokens.shape[-1], device=tokens.device)
        return positions < lengths.to(tokens.device, non_blocking=True).unsqueeze(-1)
    if pad_id is not None:
        return tokens != pad_id
    return torch.ones_like(tokens, dtype=torch.bool)


def _windows(tokens: torch.Tensor, mask: torch.Tensor, max_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., L) -> tokens (..., L, N) starting at each position, validity (..., L, N) per order."""
    length = tokens.shape[-1]
    pad = tokens.new_zeros(tokens.shape[:-1] + (max_n,))
    padded = torch.cat([tokens, pad], -1).unfold(-1, max_n, 1)[..., :length, :]
    padded_mask = torch.cat([mask, mask.new_zeros(mask.shape[:-1] + (max_n,))], -1)
    valid = padded_mask.unfold(-1, max_n, 1)[..., :length, :].to(torch.int8).cumprod(-1).bool()
    return padded, valid


def _keys(windows: torch.Tensor, max_n: int, vocab_size: int | None) -> torch.Tensor:
    """Packed keys (..., L, N) when the vocabulary fits, else rows (..., L, N, N) (order n = row n-1)."""
    shifted = windows + 1  # 0 marks "no token" so different orders never share a key
    if vocab_size is not None and (vocab_size + 1) ** max_n <= _INT64_MAX:
        base = vocab_size + 1
        # built on the device (a host tensor copied over would be a synchronising copy)
        exponents = torch.arange(max_n - 1, -1, -1, device=windows.device)
        powers = torch.full((max_n,), base, dtype=torch.long, device=windows.device).pow(exponents)
        return (shifted * powers).cumsum(-1)
    lower = torch.ones(max_n, max_n, dtype=torch.bool, device=windows.device).tril()
    return shifted.unsqueeze(-2) * lower


def ngram_statistics(
    candidates: torch.Tensor,
    references: torch.Tensor,
    *,
    candidate_mask: torch.Tensor,
    reference_mask: torch.Tensor,
    reference_present: torch.Tensor,
    max_n: int = 4,
    vocab_size: int | None = None,
    backend: str = "sort",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped n-gram matches and candidate n-gram counts per sentence and order: two (B, N)
    int64 tensors. ``candidates`` (B, Lc), ``references`` (B, R, Lr), masks of the same shapes,
    ``reference_present`` (B, R) marks which reference slots exist."""
    batch, refs = references.shape[0], references.shape[1]
    device = candidates.device
    cand_tok, cand_valid = _windows(candidates, candidate_mask, max_n)
    ref_tok, ref_valid = _windows(references, reference_mask, max_n)
    ref_valid = ref_valid & reference_present[:, :, None, None]
    denominators = cand_valid.sum(1)  # (B, N)

    packed = vocab_size is not None and (vocab_size + 1) ** max_n <= _INT64_MAX
    cand_keys = _keys(cand_tok, max_n, vocab_size)
    ref_keys = _keys(ref_tok, max_n, vocab_size)
    key_shape = () if packed else (max_n,)
    keys = torch.cat([cand_keys.reshape((-1,) + key_shape), ref_keys.reshape((-1,) + key_shape)])

    sentence = torch.arange(batch, device=device)
    order = torch.arange(max_n, device=device)
    cand_owner = torch.where(cand_valid, sentence[:, None, None], batch)
    ref_owner = torch.where(ref_valid, sentence[:, None, None, None], batch)
    owner = torch.cat([cand_owner.reshape(-1), ref_owner.reshape(-1)])
    cand_segment = torch.zeros_like(cand_valid, dtype=torch.long)
    ref_segment = torch.arange(1, refs + 1, device=device)[None, :, None, None].expand_as(ref_valid)
    segment = torch.cat([cand_segment.reshape(-1), ref_segment.reshape(-1)])
    orders = torch.cat([order.expand_as(cand_valid).reshape(-1), order.expand_as(ref_valid).reshape(-1)])

    if backend == "unique":
        return _count_unique(keys, owner, segment, orders, batch, refs, max_n, packed), denominators
    if backend != "sort":
        raise ValueError(f"backend {backend!r} is not one of 'sort', 'unique'")

    if packed:
        perm = torch.argsort(keys)
    else:
        perm = torch.arange(keys.shape[0], device=device)
        for col in reversed(range(max_n)):
            perm = perm.index_select(0, torch.argsort(keys[:, col].index_select(0, perm), stable=True))
    perm = perm.index_select(0, torch.argsort(owner.index_select(0, perm), stable=True))
    # index_select, not fancy indexing: the latter is far slower on a busy multi-threaded CPU
    owner_s, key_s, segment_s, order_s = (t.index_select(0, perm) for t in (owner, keys, segment, orders))

    rows = owner_s.shape[0]
    new = torch.ones(rows, dtype=torch.bool, device=device)
    if rows > 1:
        key_change = key_s[1:] != key_s[:-1]
        if not packed:
            key_change = key_change.any(-1)
        new[1:] = key_change | (owner_s[1:] != owner_s[:-1])
    run = new.long().cumsum(0) - 1

    is_cand = (segment_s == 0).long()
    cand_count = torch.zeros(rows, dtype=torch.long, device=device).index_add_(0, run, is_cand)
    ref_slot = run * max(refs, 1) + (segment_s - 1).clamp(min=0)
    ref_count = torch.zeros(rows * max(refs, 1), dtype=torch.long, device=device)
    ref_count.index_add_(0, ref_slot, 1 - is_cand)
    clipped = torch.minimum(cand_count, ref_count.view(rows, max(refs, 1)).amax(1))
    run_owner = torch.zeros(rows, dtype=torch.long, device=device).scatter_(0, run, owner_s)
    run_order = torch.zeros(rows, dtype=torch.long, device=device).scatter_(0, run, order_s)
    numerators = torch.zeros((batch + 1) * max_n, dtype=torch.long, device=device)
    numerators.index_add_(0, run_owner * max_n + run_order, clipped)
    return numerators[: batch * max_n].view(batch, max_n), denominators


def _count_unique(keys, owner, segment, orders, batch, refs, max_n, packed) -> torch.Tensor:
    ids = torch.unique(keys, return_inverse=True, dim=None if packed else 0)[1]
    words = int(ids.max()) + 1 if ids.numel() else 1
    is_cand = segment == 0
    cand = torch.bincount(owner * words + ids, weights=is_cand.double(), minlength=(batch + 1) * words)
    ref_index = (owner * max(refs, 1) + (segment - 1).clamp(min=0)) * words + ids
    ref = torch.bincount(ref_index, weights=(~is_cand).double(), minlength=(batch + 1) * max(refs, 1) * words)
    clipped = torch.minimum(cand.view(batch + 1, words), ref.view(batch + 1, max(refs, 1), words).amax(1))
    # padding windows can share a key with a shorter valid n-gram: take the order from valid rows only
    valid_order = torch.where(owner < batch, orders, 0)
    word_order = torch.zeros(words, dtype=torch.long, device=keys.device).scatter_reduce_(0, ids, valid_order, "amax")
    numerators = torch.zeros(batch + 1, max_n, dtype=torch.double, device=keys.device)
    numerators.index_add_(1, word_order, clipped)
    return numerators[:batch].round().long()


def _closest_reference_length(hyp_len: torch.Tensor, ref_len: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    big = torch.iinfo(torch.long).max // 4
    key = (ref_len - hyp_len[:, None]).abs() * (2**31) + ref_len
    key = torch.where(present, key, big)
    return ref_len.gather(1, key.argmin(1, keepdim=True)).squeeze(1)


def bleu_from_statistics(
    numerators: torch.Tensor,
    denominators: torch.Tensor,
    hyp_len: torch.Tensor,
    ref_len: torch.Tensor,
    *,
    weights: Sequence[float],
    smoothing: int = 0,
    epsilon: float = 0.1,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """BLEU from (B, N) clipped matches and denominators (already ``max(1, count)``), hypothesis
    and closest-reference lengths (B,), as NLTK's ``corpus_bleu`` computes it for each row."""
    num = numerators.to(dtype)
    den = denominators.to(dtype)
    zero = numerators == 0
    if smoothing == 0:  # NLTK puts in sys.float_info.min; keep its log so float32 does not lose the order
        precision = torch.where(zero, torch.ones_like(num), num / den)
    elif smoothing == 1:
        precision = torch.where(zero, (num + epsilon) / den, num / den)
    elif smoothing == 2:
        add = torch.ones_like(num)
        add[:, 0] = 0
        precision = (num + add) / (den + add)
    elif smoothing == 3:
        k = zero.long().cumsum(1).to(dtype)
        precision = torch.where(zero, 1.0 / (torch.exp2(k) * den), num / den)
    else:
        raise ValueError(f"smoothing {smoothing} is not supported; use 0-3")
    log_p = torch.where(precision > 0, torch.log(precision), torch.zeros_like(precision))
    if smoothing == 0:
        log_p = torch.where(zero, math.log(sys.float_info.min), log_p)
    c = hyp_len.to(dtype)
    r = ref_len.to(dtype)
    brevity = torch.where(hyp_len > ref_len, torch.ones_like(c), torch.exp(1 - r / c.clamp(min=1)))
    brevity = torch.where(hyp_len == 0, torch.zeros_like(c), brevity)
    weighted = log_p[:, 0] * float(weights[0])  # Python-float weights: no host tensor to copy over
    for i in range(1, len(weights)):
        weighted = weighted + log_p[:, i] * float(weights[i])
    score = brevity * torch.exp(weighted)
    return torch.where(zero[:, 0], torch.zeros_like(score), score)


def _prepare(candidates, references, pad_id, candidate_lengths, reference_lengths, num_references):
    if candidates.dim() != 2:
        raise ValueError(f"candidates must be (B, Lc) token ids, got shape {tuple(candidates.shape)}")
    if references.dim() == 2:
        references = references.unsqueeze(1)
        if reference_lengths is not None and reference_lengths.dim() == 1:
            reference_lengths = reference_lengths.unsqueeze(1)
    if references.dim() != 3 or references.shape[0] != candidates.shape[0]:
        raise ValueError(
            f"references must be (B, R, Lr) with B={candidates.shape[0]}, got shape {tuple(references.shape)}"
        )
    references = references.to(candidates.device, non_blocking=True)
    cand_mask = _as_mask(candidates, pad_id, candidate_lengths)
    ref_mask = _as_mask(references, pad_id, reference_lengths)
    refs = references.shape[1]
    if num_references is None:
        present = torch.ones(references.shape[:2], dtype=torch.bool, device=candidates.device)
    else:
        slots = torch.arange(refs, device=candidates.device)
        present = slots < torch.as_tensor(num_references).to(candidates.device, non_blocking=True).unsqueeze(-1)
    return candidates.long(), cand_mask, references.long(), ref_mask, present


def _statistics(
    candidates, references, pad_id, candidate_lengths, reference_lengths, num_references, max_n, vocab_size, backend
):
    cand, cmask, refs, rmask, present = _prepare(
        candidates, references, pad_id, candidate_lengths, reference_lengths, num_references
    )
    num, den = ngram_statistics(
        cand,
        refs,
        candidate_mask=cmask,
        reference_mask=rmask,
        reference_present=present,
        max_n=max_n,
        vocab_size=vocab_size,
        backend=backend,
    )
    hyp_len = cmask.sum(1)
    ref_len = _closest_reference_length(hyp_len, rmask.sum(2), present)
    return num, den.clamp(min=1), hyp_len, ref_len


def _weights(weights: Sequence[float] | None, max_n: int | None) -> tuple[list[float], int]:
    if weights is None:
        n = max_n or 4
        return [1.0 / n] * n, n
    w = [float(x) for x in weights]
    if not 1 <= len(w) <= 4:
        raise ValueError(f"weights must have 1 to 4 entries (n-gram orders), got {len(w)}")
    return w, len(w)


def sentence_bleu(
    candidates: torch.Tensor,
    references: torch.Tensor,
    *,
    pad_id: int | None = None,
    candidate_lengths: torch.Tensor | None = None,
    reference_lengths: torch.Tensor | None = None,
    num_references: torch.Tensor | None = None,
    weights: Sequence[float] | None = None,
    max_n: int | None = None,
    smoothing: int | str | object = 0,
    epsilon: float = 0.1,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float64,
    backend: str = "sort",
) -> torch.Tensor:
    """Token-ID BLEU of each candidate against its references: a (B,) tensor on the candidates'
    device, equal to ``nltk.translate.bleu_score.sentence_bleu`` per row.

    ``candidates`` (B, Lc) and ``references`` (B, R, Lr) (or (B, Lr) for one reference) hold
    non-negative token ids. Padding is given by ``pad_id`` (right padding) or by lengths
    (``candidate_lengths`` (B,), ``reference_lengths`` (B, R)); ``num_references`` (B,) marks
    sentences with fewer than R references. ``weights`` default to uniform over ``max_n`` (4)
    orders; ``smoothing`` is 0-3 (NLTK method0-method3, or the method itself). Pass
    ``vocab_size`` to pack n-grams into int64 keys (faster)."""
    w, n = _weights(weights, max_n)
    num, den, hyp_len, ref_len = _statistics(
        candidates, references, pad_id, candidate_lengths, reference_lengths, num_references, n, vocab_size, backend
    )
    return bleu_from_statistics(
        num, den, hyp_len, ref_len, weights=w, smoothing=_smoothing_id(smoothing), epsilon=epsilon, dtype=dtype
    )


def corpus_bleu(
    candidates: torch.Tensor,
    references: torch.Tensor,
    *,
    pad_id: int | None = None,
    candidate_lengths: torch.Tensor | None = None,
    reference_lengths: torch.Tensor | None = None,
    num_references: torch.Tensor | None = None,
    weights: Sequence[float] | None = None,
    max_n: int | None = None,
    smoothing: int | str | object = 0,
    epsilon: float = 0.1,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float64,
    backend: str = "sort",
) -> torch.Tensor:
    """Corpus-level token-ID BLEU (a 0-d tensor), equal to ``nltk.translate.bleu_score.corpus_bleu``:
    matches, ``max(1, count)`` denominators and lengths are summed over sentences first.
    Arguments as :func:`sentence_bleu`."""
    w, n = _weights(weights, max_n)
    num, den, hyp_len, ref_len = _statistics(
        candidates, references, pad_id, candidate_lengths, reference_lengths, num_references, n, vocab_size, backend
    )
    score = bleu_from_statistics(
        num.sum(0, keepdim=True),
        den.sum(0, keepdim=True),
        hyp_len.sum(0, keepdim=True),
        ref_len.sum(0, keepdim=True),
        weights=w,
        smoothing=_smoothing_id(smoothing),
        epsilon=epsilon,
        dtype=dtype,
    )
    return score[0]
