"""The attention analyzer flags an attention-bound sampling loop, and not the same loop once
Bottleneck Sampling runs it (real CPU traces of a tiny unfused-attention denoiser)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RECORD = r'''
import sys, torch, torch.nn as nn
from torch.profiler import profile, ProfilerActivity, schedule
sys.path.insert(0, sys.argv[3])
from stallscope.fixes.bottleneck_sampling import bottleneck_sample, euler_sample, TUNED_SCHEDULE
torch.manual_seed(0)
class Denoiser(nn.Module):
    def __init__(self, c=4, d=32):
        super().__init__()
        self.inp, self.out, self.qkv = nn.Linear(c, d), nn.Linear(d, c), nn.Linear(d, 3 * d)
    def forward(self, x, t):
        b, c, h, w = x.shape
        z = self.inp(x.flatten(2).transpose(1, 2))
        q, k, v = self.qkv(z).chunk(3, -1)
        a = torch.softmax(q @ k.transpose(1, 2) / 8.0, -1)  # unfused: [B, N, N] materialised
        return self.out(a @ v).transpose(1, 2).reshape(b, c, h, w)
model = Denoiser().eval()
noise = torch.randn(2, 4, 24, 24)
with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                              schedule=schedule(wait=0, warmup=0, active=100, repeat=1)) as prof:
    def hook(*_):
        prof.step()
    if sys.argv[2] == "staged":
        bottleneck_sample(model, noise, TUNED_SCHEDULE, hook=hook)
    else:
        euler_sample(model, noise, steps=25, hook=hook)
prof.export_chrome_trace(sys.argv[1])
'''


def _findings(tmp_path: Path, mode: str) -> dict:
    from stallscope.analyzers.builtin.attention import Attention
    from stallscope.analyzers.context import load_context

    path = tmp_path / f"{mode}.json"
    proc = subprocess.run([sys.executable, "-c", RECORD, str(path), mode, str(ROOT)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-1500:]
    return {f.id: f for f in Attention().analyze(load_context(path))}


def test_plain_sampling_loop_is_flagged_and_staged_loop_is_not(tmp_path: Path) -> None:
    plain = _findings(tmp_path, "plain")
    assert "attention-bound-sampling" in plain
    assert "bottleneck-sampling" in plain["attention-bound-sampling"].fixes
    staged = _findings(tmp_path, "staged")
    assert "attention-bound-sampling" not in staged
