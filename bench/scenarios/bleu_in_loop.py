"""Sequence-level RL fine-tuning whose reward is a per-sentence BLEU computed on the CPU.

Planted bottleneck: every step reads the sampled token ids back to the host (``.tolist()``)
and scores each sentence with a Python BLEU (NLTK's ``sentence_bleu`` when installed, else a
pure-Python per-sentence BLEU of the same shape: n-gram Counters, clipped precisions,
brevity penalty); the GPU idles for the whole scoring loop.
"""
EXPECTED = "cpu-metric"

import argparse
import math
from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from nltk.translate.bleu_score import SmoothingFunction
    from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu

    _SMOOTH = SmoothingFunction().method1

    def sentence_bleu(reference, hypothesis):
        return nltk_sentence_bleu([reference], hypothesis, smoothing_function=_SMOOTH)

    BLEU_IMPL = "nltk"
except ImportError:  # the GPU machine has no nltk: same per-sentence CPU work in plain Python

    def _ngrams(tokens, n):
        return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))

    def sentence_bleu(reference, hypothesis, max_n=4):
        log_p = 0.0
        for n in range(1, max_n + 1):
            hyp, ref = _ngrams(hypothesis, n), _ngrams(reference, n)
            match = sum(min(c, ref[g]) for g, c in hyp.items())
            total = max(1, sum(hyp.values()))
            log_p += math.log((match + 1) / (total + 1) if match == 0 else match / total) / max_n
        bp = 1.0 if len(hypothesis) > len(reference) else math.exp(1 - len(reference) / max(1, len(hypothesis)))
        return bp * math.exp(log_p)

    BLEU_IMPL = "pure-python"


class TinyLM(nn.Module):
    def __init__(self, vocab, dim, depth):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 4 * dim, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Linear(dim, vocab)

    def forward(self, tokens):
        return self.out(self.body(self.emb(tokens)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    vocab, dim, depth, batch, length = (8000, 256, 2, 256, 48) if gpu else (200, 16, 1, 128, 40)
    model = TinyLM(vocab, dim, depth).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    prompts = torch.randint(0, vocab, (batch, length), device=dev)
    references = torch.randint(0, 50, (batch, length)).tolist()
    print(f"bleu implementation: {BLEU_IMPL}")
    for _ in range(args.steps):
        opt.zero_grad(set_to_none=True)
        logits = model(prompts)
        dist = torch.distributions.Categorical(logits=logits.float())
        sample = dist.sample()
        hyps = (sample % 50).tolist()
        rewards = torch.tensor([sentence_bleu(r, h) for r, h in zip(references, hyps)], device=dev)
        loss = -((rewards - rewards.mean()).unsqueeze(1) * dist.log_prob(sample)).mean()
        loss.backward()
        opt.step()
    if gpu:
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
