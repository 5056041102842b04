"""TensorBLEU against NLTK (the reference implementation) on random batches."""
from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

nltk_bleu = pytest.importorskip("nltk.translate.bleu_score", reason="nltk is the reference; pip install nltk")

from stallscope.fixes.tensorbleu import corpus_bleu, corpus_bleu_batch, sentence_bleu, sentence_bleu_batch, suggestion  # noqa: E402

SMOOTH = nltk_bleu.SmoothingFunction()


def _nltk_sentence(refs, hyps, weights, method):
    fn = getattr(SMOOTH, f"method{method}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [nltk_bleu.sentence_bleu(r, h, weights=weights, smoothing_function=fn) for r, h in zip(refs, hyps)]


def _nltk_corpus(refs, hyps, weights, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nltk_bleu.corpus_bleu(refs, hyps, weights=weights, smoothing_function=getattr(SMOOTH, f"method{method}"))


@st.composite
def batches(draw):
    """Small vocabularies force repeated n-grams and zero matches; lengths include 0 (empty)."""
    vocab = draw(st.integers(1, 12))
    batch = draw(st.integers(1, 6))
    n_refs = draw(st.integers(1, 3))
    token = st.integers(0, vocab - 1)
    hyps = [draw(st.lists(token, max_size=20)) for _ in range(batch)]
    refs = [[draw(st.lists(token, max_size=20)) for _ in range(draw(st.integers(1, n_refs)))] for _ in range(batch)]
    if draw(st.booleans()):  # a reference that is the hypothesis itself: full matches
        i = draw(st.integers(0, batch - 1))
        refs[i][0] = list(hyps[i])
    order = draw(st.integers(1, 4))
    weights = tuple(draw(st.lists(st.floats(0.05, 1.0), min_size=order, max_size=order)))
    if draw(st.booleans()):
        weights = (1.0 / order,) * order
    return vocab, hyps, refs, weights


def _padded(hyps, refs, pad):
    batch, n_refs = len(hyps), max(len(r) for r in refs)
    lc = max([len(h) for h in hyps] + [1])
    lr = max([len(x) for r in refs for x in r] + [1])
    cand = torch.full((batch, lc + 2), pad, dtype=torch.long)  # extra padding columns on purpose
    ref = torch.full((batch, n_refs, lr + 1), pad, dtype=torch.long)
    for i, h in enumerate(hyps):
        cand[i, : len(h)] = torch.tensor(h, dtype=torch.long)
        for j, x in enumerate(refs[i]):
            ref[i, j, : len(x)] = torch.tensor(x, dtype=torch.long)
    num_refs = torch.tensor([len(r) for r in refs])
    return cand, ref, num_refs


@settings(max_examples=150, deadline=None)
@given(batches(), st.integers(0, 3), st.sampled_from(["sort", "unique"]), st.booleans())
def test_sentence_and_corpus_bleu_match_nltk_with_pad_id(data, method, backend, packed):
    vocab, hyps, refs, weights = data
    cand, ref, num_refs = _padded(hyps, refs, pad=-1)
    kwargs = dict(pad_id=-1, num_references=num_refs, weights=weights, smoothing=method, backend=backend,
                  vocab_size=vocab if packed else None)
    got = sentence_bleu(cand, ref, **kwargs)
    want = torch.tensor(_nltk_sentence(refs, hyps, weights, method), dtype=torch.float64)
    assert got.dtype == torch.float64 and got.shape == (len(hyps),)
    assert (got - want).abs().max().item() <= 1e-6
    got_corpus = corpus_bleu(cand, ref, **kwargs).item()
    assert abs(got_corpus - _nltk_corpus(refs, hyps, weights, method)) <= 1e-6


@settings(max_examples=60, deadline=None)
@given(batches(), st.integers(0, 3))
def test_lengths_instead_of_pad_id_and_float32(data, method):
    vocab, hyps, refs, weights = data
    cand, ref, num_refs = _padded(hyps, refs, pad=0)  # pad id 0 is also a real token: lengths decide
    cand_len = torch.tensor([len(h) for h in hyps])
    ref_len = torch.zeros(ref.shape[:2], dtype=torch.long)
    for i, r in enumerate(refs):
        for j, x in enumerate(r):
            ref_len[i, j] = len(x)
    want = torch.tensor(_nltk_sentence(refs, hyps, weights, method), dtype=torch.float64)
    common = dict(candidate_lengths=cand_len, reference_lengths=ref_len, num_references=num_refs,
                  weights=weights, smoothing=method)
    got = sentence_bleu(cand, ref, **common)
    assert (got - want).abs().max().item() <= 1e-6
    got32 = sentence_bleu(cand, ref, dtype=torch.float32, **common)
    assert got32.dtype == torch.float32
    assert (got32.double() - want).abs().max().item() <= 1e-5


def test_hand_checked_values():
    # identical sentences score 1; no shared token scores 0 under every smoothing
    same = torch.tensor([[5, 6, 7, 8, 9]])
    assert sentence_bleu(same, same.unsqueeze(1)).item() == pytest.approx(1.0, abs=1e-12)
    other = torch.tensor([[[1, 2, 3, 4, 0]]])
    for method in range(4):
        assert sentence_bleu(same, other, smoothing=method).item() == 0.0
    # empty hypothesis: 0, as NLTK
    assert sentence_bleu(torch.tensor([[-1, -1]]), same.unsqueeze(1), pad_id=-1).item() == 0.0
    # method0 with a missing 4-gram gives NLTK's tiny value (log of sys.float_info.min), not exactly 0
    tiny = sentence_bleu(torch.tensor([[1, 2, 3, 9, 5]]), torch.tensor([[[1, 2, 3, 4, 5]]])).item()
    assert 0.0 < tiny < 1e-70


def test_closest_reference_length_ties_go_to_the_shorter_reference():
    hyp = [[1, 2, 3, 4, 5, 6]]
    refs_short_first = [[[1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7]]]
    refs_long_first = [[[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5]]]
    for refs in (refs_short_first, refs_long_first):
        got = sentence_bleu_batch(refs, hyp)
        assert got == pytest.approx(_nltk_sentence(refs, hyp, (0.25,) * 4, 0), abs=1e-12)


def test_batch_shim_accepts_string_tokens_and_nltk_smoothing_functions():
    refs = [["the cat sat on the mat".split(), "a cat is on the mat".split()], [["x", "y", "z"]]]
    hyps = ["the cat is on the mat".split(), ["x", "y", "q"]]
    got = sentence_bleu_batch(refs, hyps, smoothing=SMOOTH.method1)
    assert isinstance(got, list) and len(got) == 2
    assert got == pytest.approx(_nltk_sentence(refs, hyps, (0.25,) * 4, 1), abs=1e-12)
    assert corpus_bleu_batch(refs, hyps, smoothing=2) == pytest.approx(_nltk_corpus(refs, hyps, (0.25,) * 4, 2), abs=1e-12)
    with pytest.raises(ValueError, match="reference lists"):
        sentence_bleu_batch(refs[:1], hyps)
    with pytest.raises(ValueError, match="smoothing"):
        sentence_bleu_batch(refs, hyps, smoothing=SMOOTH.method5)


def test_suggestion_says_token_id_bleu_not_sacrebleu_and_fix_is_advisory():
    text = suggestion()
    assert "token-ID BLEU" in text and "NOT SacreBLEU" in text and "sentence_bleu_batch" in text
    from stallscope.fixes.base import registered_fixes

    fix = registered_fixes(["tensorbleu"])["tensorbleu"]()
    assert fix.scope == "callable" and "cpu-metric" in fix.answers
    assert fix.find_targets(torch.nn.Linear(2, 2)) == [] and fix.find_targets(None) == []
    targets = fix.find_targets(nltk_bleu.sentence_bleu)
    assert [t.kind for t in targets] == ["callable"]
    reason = fix.why_not(targets[0])
    assert reason and "sentence_bleu_batch" in reason
    with pytest.raises(RuntimeError, match="advisory"):
        fix.apply(targets[0])


@pytest.mark.gpu
def test_cuda_matches_cpu_without_host_syncs():
    assert torch.cuda.is_available()
    gen = torch.Generator().manual_seed(0)
    cand = torch.randint(0, 50, (64, 300), generator=gen)
    ref = torch.randint(0, 50, (64, 2, 280), generator=gen)
    cand[:, 250:] = -1
    want = sentence_bleu(cand, ref, pad_id=-1, smoothing=1, vocab_size=50)
    cc, rc = cand.cuda(), ref.cuda()
    for vocab in (50, None):
        sentence_bleu(cc, rc, pad_id=-1, smoothing=1, vocab_size=vocab)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = sentence_bleu(cc, rc, pad_id=-1, smoothing=1, vocab_size=vocab)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert (got.cpu() - want).abs().max().item() <= 1e-9


def test_two_dimensional_references_tensor_shim_and_shape_errors():
    cand = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 0, 0, 0]])
    ref = torch.tensor([[1, 2, 3, 4, 5, 7], [7, 8, 9, 10, 0, 0]])
    lengths = torch.tensor([6, 3])
    ref_lengths = torch.tensor([6, 4])
    got = sentence_bleu(cand, ref, candidate_lengths=lengths, reference_lengths=ref_lengths, smoothing=1)
    want = _nltk_sentence([[[1, 2, 3, 4, 5, 7]], [[7, 8, 9, 10]]], [[1, 2, 3, 4, 5, 6], [7, 8, 9]], (0.25,) * 4, 1)
    assert got.tolist() == pytest.approx(want, abs=1e-12)
    via_shim = sentence_bleu_batch(ref, cand, candidate_lengths=lengths, reference_lengths=ref_lengths, smoothing=1)
    assert torch.equal(via_shim, got)
    with pytest.raises(ValueError, match="references must be"):
        sentence_bleu(cand, torch.zeros(3, 1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="weights"):
        sentence_bleu(cand, ref, weights=[0.2] * 5)
