"""attention: unfused attention, and attention-dominated iterative sampling (diffusion).

**Unfused attention (fix ``sdpa``).** A softmax over a tensor of 3 or more dimensions whose
last dimension S >= ``MIN_TOKENS`` (64), preceded on the same thread by a matmul-family op
whose second operand ends in S (``Q @ K^T`` -> [.., L, S]) and followed by one whose first
operand ends in S (``P @ V``): the [B, H, L, S] score matrix is written to memory and read
back at least twice. Fused attention (``scaled_dot_product_attention``: FlashAttention /
memory-efficient kernels) never materialises it. The saving estimate is half the unfused
block's time: FlashAttention reports 2-4x over the unfused baseline from N = 512 on, so
half is the conservative end. Graded 5 % / 20 % of step time on the block's share.

**Attention-dominated iterative sampling (fix ``bottleneck-sampling``).** The
signature (docs/analyzers.md, attention): no backward ops in the window (inference), the model runs
iteratively (>= ``MIN_ITERATIONS`` = 20 steps in the run: diffusion samplers run 20-50), and
attention (fused kernels named flash/fmha/attention/sdpa, or unfused blocks) takes at least
``ATTENTION_SHARE_PCT`` (35 %) of GPU busy time, the point where cutting tokens in the
attention-heavy middle steps (Bottleneck Sampling) pays. Saving estimate: half the attention
time (the paper reports up to 3x at equal quality; half is the conservative end). Not raised
when the window already shows Bottleneck Sampling's stage ranges (``bottleneck_sampling.stage*``):
the tokens of the attention-heavy middle steps are already cut, and recommending the same fix
again would be noise.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from stallscope.analyzers.arrays import isin, unique
from stallscope.analyzers.base import Finding, Impact, register
from stallscope.analyzers.builtin import _common as c
from stallscope.analyzers.model import Kind
from stallscope.analyzers.vocab import anycase

if TYPE_CHECKING:
    from stallscope.analyzers.model import AnalysisContext, EventTable, RankData

MIN_TOKENS = 64
MIN_ITERATIONS = 20
ATTENTION_SHARE_PCT = 35.0
SAVING_FRACTION = 0.5
LOOKAROUND_OPS = 24
STAGED_SAMPLING_MARK = "bottleneck_sampling.stage"

_SOFTMAX = {"aten::softmax", "aten::_softmax", "aten::_safe_softmax"}
_MATMUL = {"aten::matmul", "aten::bmm", "aten::baddbmm", "aten::mm", "aten::einsum"}
_FUSED_KERNEL = anycase(r"flash|fmha|attention|sdpa|_attn_|cudnn_mha")
_FUSED_OP = re.compile(r"scaled_dot_product|flash_attention|efficient_attention|cudnn_attention")
_BACKWARD = re.compile(r"Backward|^autograd::engine")


def _dims(ev: EventTable, r: int) -> list[list[int]]:
    d = ev.extra.get(int(r), {}).get("input_dims") or []
    return [x for x in d if isinstance(x, list)]


def unfused_blocks(ev: EventTable) -> list[tuple[int, int, tuple[int, ...]]]:
    """(first row, last row, score shape) of every QK^T -> softmax -> PV block in the steps."""
    if not len(ev.rows_named(lambda s: s in _SOFTMAX, Kind.CPU_OP)):
        return []
    ops = c.in_window(ev, ev.rows_of_kind(Kind.CPU_OP))
    if not len(ops):
        return []
    ops = ops[np.lexsort((ev.ts_ns[ops], ev.tid[ops]))]
    op_names = ev.name[ops]
    is_matmul = isin(op_names, ev.name_ids_matching(lambda s: s in _MATMUL))
    blocks = []
    seen: set[tuple[int, int]] = set()
    for i in map(int, np.flatnonzero(isin(op_names, ev.name_ids_matching(lambda s: s in _SOFTMAX)))):
        d = _dims(ev, ops[i])
        if not d or len(d[0]) < 3 or d[0][-1] < MIN_TOKENS:
            continue
        s = d[0][-1]
        tid = ev.tid[ops[i]]
        first = last = None
        for j in range(i - 1, max(-1, i - LOOKAROUND_OPS), -1):
            if ev.tid[ops[j]] != tid:
                break
            if is_matmul[j]:
                dd = _dims(ev, ops[j])
                if len(dd) >= 2 and dd[1] and dd[1][-1] == s:
                    first = j
                    break
        for j in range(i + 1, min(len(ops), i + LOOKAROUND_OPS)):
            if ev.tid[ops[j]] != tid:
                break
            if is_matmul[j]:
                dd = _dims(ev, ops[j])
                if dd and dd[0] and dd[0][-1] == s:
                    last = j
                    break
        if first is not None and last is not None and (int(ops[first]), int(ops[last])) not in seen:
            seen.add((int(ops[first]), int(ops[last])))
            blocks.append((int(ops[first]), int(ops[last]), tuple(d[0])))
    return blocks


def _block_time(ev: EventTable, blocks: list[tuple[int, int, tuple[int, ...]]]) -> int:
    """Time attributable to the ops inside the blocks (QK^T start to PV end, same thread)."""
    if not blocks:
        return 0
    ops = ev.rows_of_kind(Kind.CPU_OP)
    anchors = []
    by_tid: dict[int, list[tuple[int, int]]] = {}
    for a, b, _ in blocks:
        by_tid.setdefault(int(ev.tid[a]), []).append((int(ev.ts_ns[a]), int(ev.ts_ns[b] + ev.dur_ns[b])))
    for tid, spans in by_tid.items():
        s, e = c.merge(np.array([x[0] for x in spans]), np.array([x[1] for x in spans]))
        mine = ops[ev.tid[ops] == tid]
        pos = np.searchsorted(s, ev.ts_ns[mine], side="right") - 1
        ok = pos >= 0
        ok[ok] &= (ev.ts_ns[mine] + ev.dur_ns[mine])[ok] <= e[pos[ok]]
        anchors.append(mine[ok])
    return c.device_time_ns(ev, unique(np.concatenate(anchors)))


def _iterations(rank: RankData) -> int:
    t = rank.telemetry
    if t is not None and "step" in t and len(t["step"]):
        return int(len(t["step"]))
    return len(rank.steps)


@register
class Attention(c.PerRank):
    """Unfused attention; attention-dominated iterative sampling (diffusion)."""

    name = "attention"
    requires = frozenset({"trace"})
    description = "unfused attention (bmm+softmax over [B,H,N,N]); attention-dominated diffusion sampling"

    def _analyze_rank(self, ctx: AnalysisContext) -> list[Finding]:
        rank = ctx.ranks[0]
        ev = rank.events
        total_ns, n_steps = c.window_ns(rank)
        if not total_ns:
            return []
        blocks = unfused_blocks(ev)
        unfused_ns = _block_time(ev, blocks)
        fused_ns = self._fused_ns(ev)
        attention_ns = unfused_ns + fused_ns
        busy_ns = self._busy_ns(ev)
        inference = not len(c.in_window(ev, ev.rows_named(lambda s: bool(_BACKWARD.search(s)), Kind.CPU_OP)))
        iterations = _iterations(rank)
        attn_pct_busy = 100.0 * attention_ns / busy_ns if busy_ns else 0.0
        staged = bool(len(ev.rows_named(lambda s: s.startswith(STAGED_SAMPLING_MARK), Kind.ANNOTATION, Kind.CPU_OP)))
        sampling = inference and iterations >= MIN_ITERATIONS and attn_pct_busy >= ATTENTION_SHARE_PCT and not staged
        out = []
        common: dict[str, Any] = {
            "attention_ms_per_step": c.ms(attention_ns) / n_steps,
            "attention_pct_of_gpu_busy" if c.has_gpu(ev) else "attention_pct_of_busy": attn_pct_busy,
            "inference_only": inference,
            "bottleneck_sampling_active": staged,
            "iterations": iterations,
        }
        if blocks:
            share = 100.0 * unfused_ns / total_ns
            shapes = c.top_counts(str(list(b[2])) for b in blocks)
            out.append(
                Finding(
                    id="unfused-attention",
                    category="attention",
                    title="Attention is computed unfused: the [B,H,N,N] score matrix goes through memory",
                    severity=c.grade(share),
                    impact=Impact(share, SAVING_FRACTION * c.ms(unfused_ns) / n_steps),
                    evidence={
                        "unfused_blocks_per_step": len(blocks) / n_steps,
                        "unfused_ms_per_step": c.ms(unfused_ns) / n_steps,
                        "unfused_pct_of_step": share,
                        "score_shape": list(blocks[0][2]),
                        **common,
                    },
                    where={"score_shapes": shapes, "ops": ["matmul -> softmax -> matmul"]},
                    confidence=0.85,
                    fixes=["sdpa"] + (["bottleneck-sampling"] if sampling else []),
                    advice="Call torch.nn.functional.scaled_dot_product_attention(q, k, v) instead of "
                    "softmax(q @ k.transpose(-2, -1) * scale) @ v.",
                )
            )
        if sampling:
            share = 100.0 * attention_ns / total_ns
            out.append(
                Finding(
                    id="attention-bound-sampling",
                    category="attention",
                    title=f"Iterative sampling is attention-bound ({attn_pct_busy:.0f}% of busy time in attention)",
                    severity=c.grade(share),
                    impact=Impact(share, SAVING_FRACTION * c.ms(attention_ns) / n_steps),
                    evidence={"attention_pct_of_step": share, **common},
                    where={"kernels": self._fused_names(ev)} if fused_ns else {"ops": ["unfused attention"]},
                    confidence=0.7,
                    fixes=["bottleneck-sampling"] + (["sdpa"] if blocks else []),
                    advice="Run the middle denoising steps at reduced resolution (Bottleneck Sampling), "
                    "keeping full resolution at the first and last steps.",
                )
            )
        return out

    def _fused_ns(self, ev: EventTable) -> int:
        if c.has_gpu(ev):
            k = self._fused_kernel_rows(ev)
            return c.covered_ns(ev.ts_ns[k], ev.ts_ns[k] + ev.dur_ns[k])
        ops = c.in_window(ev, ev.rows_named(lambda s: bool(_FUSED_OP.search(s)), Kind.CPU_OP))
        return c.covered_ns(ev.ts_ns[ops], ev.ts_ns[ops] + ev.dur_ns[ops])

    def _fused_names(self, ev: EventTable) -> list[str]:
        return c.top_counts(ev.name_of(int(r)) for r in self._fused_kernel_rows(ev))

    @staticmethod
    def _fused_kernel_rows(ev: EventTable) -> np.ndarray:
        k = c.gpu_rows(ev, (Kind.KERNEL,))
        return k[isin(ev.name[k], ev.name_ids_matching(_FUSED_KERNEL))]

    def _busy_ns(self, ev: EventTable) -> int:
        if c.has_gpu(ev):
            g = c.gpu_rows(ev)
            return c.covered_ns(ev.ts_ns[g], ev.ts_ns[g] + ev.dur_ns[g])
        ops = c.in_window(ev, ev.rows_of_kind(Kind.CPU_OP))
        return c.covered_ns(ev.ts_ns[ops], ev.ts_ns[ops] + ev.dur_ns[ops])
