"""Fast GR-KAN kernels (FlashKAT-style), written from shared/research/flashkat.md sections 3 and 5d.

Both passes use a 2-D grid: axis 0 walks tiles of token rows (``BLOCK_M`` rows, ``ROW_ITERS``
times), axis 1 walks (group, column chunk) pairs, so every program holds its group's 10
coefficients as scalars in registers. The backward computes one reciprocal per element,
accumulates the 10 coefficient contributions in registers over all its rows, reduces them on
chip once, and then either

* writes them to a ``[programs, 10]`` partial buffer that a fixed-shape sum reduces (the default:
  deterministic, bitwise reproducible), or
* issues one relaxed atomic per coefficient per program (``reduction="atomic"``).

Tiles are tuned per shape on first use (a handful of candidates timed with
``triton.testing.do_bench``); any D with D % G == 0 works (masks when the group width is not a
multiple of the column tile), and B*L need not be a multiple of the row tile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .reference import check_shapes

__all__ = [
    "INTERPRET",
    "TileConfig",
    "FlashKATRational",
    "flashkat_forward",
    "flashkat_backward",
    "tuned_configs",
    "set_default_reduction",
]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_REDUCTIONS = ("two_stage", "atomic")
_default_reduction = os.environ.get("STALLSCOPE_FLASHKAT_REDUCTION", "two_stage")


@triton.jit
def flashkat_fwd_kernel(
    x_ptr,
    y_ptr,
    a_ptr,
    b_ptr,
    M,
    a_stride,
    WIDTH: tl.constexpr,
    GROUP_WIDTH: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ROW_ITERS: tl.constexpr,
    EVEN_C: tl.constexpr,
    STAGES: tl.constexpr = 1,
    GROUP_MAJOR: tl.constexpr = False,
):
    CHUNKS: tl.constexpr = (GROUP_WIDTH + BLOCK_C - 1) // BLOCK_C
    COLS: tl.constexpr = (WIDTH // GROUP_WIDTH) * CHUNKS
    if GROUP_MAJOR:  # 1-D grid, all column programs of a row block adjacent in launch order
        pid_m = tl.program_id(0) // COLS
        pid_c = tl.program_id(0) % COLS
    else:
        pid_m = tl.program_id(0)
        pid_c = tl.program_id(1)
    group = pid_c // CHUNKS
    cols_in = (pid_c % CHUNKS) * BLOCK_C + tl.arange(0, BLOCK_C)
    cols = group * GROUP_WIDTH + cols_in
    a0 = tl.load(a_ptr + group * a_stride + 0)
    a1 = tl.load(a_ptr + group * a_stride + 1)
    a2 = tl.load(a_ptr + group * a_stride + 2)
    a3 = tl.load(a_ptr + group * a_stride + 3)
    a4 = tl.load(a_ptr + group * a_stride + 4)
    a5 = tl.load(a_ptr + group * a_stride + 5)
    b1 = tl.abs(tl.load(b_ptr + group * 4 + 0))
    b2 = tl.abs(tl.load(b_ptr + group * 4 + 1))
    b3 = tl.abs(tl.load(b_ptr + group * 4 + 2))
    b4 = tl.abs(tl.load(b_ptr + group * 4 + 3))
    rows0 = pid_m * (BLOCK_M * ROW_ITERS) + tl.arange(0, BLOCK_M)
    for it in tl.range(ROW_ITERS, num_stages=STAGES):
        rows = rows0 + it * BLOCK_M
        if EVEN_C:
            mask = (rows < M)[:, None]
        else:
            mask = (rows < M)[:, None] & (cols_in < GROUP_WIDTH)[None, :]
        offs = rows.to(tl.int64)[:, None] * WIDTH + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        ax = tl.abs(x)
        p = a0 + x * (a1 + x * (a2 + x * (a3 + x * (a4 + x * a5))))
        q = 1.0 + ax * (b1 + ax * (b2 + ax * (b3 + ax * b4)))
        tl.store(y_ptr + offs, tl.fdiv(p, q), mask=mask)


@triton.jit
def flashkat_bwd_kernel(
    g_ptr,
    x_ptr,
    a_ptr,
    b_ptr,
    dx_ptr,
    part_ptr,
    M,
    a_stride,
    WIDTH: tl.constexpr,
    GROUP_WIDTH: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ROW_ITERS: tl.constexpr,
    EVEN_C: tl.constexpr,
    ATOMIC: tl.constexpr,
    STAGES: tl.constexpr = 1,
    GROUP_MAJOR: tl.constexpr = False,
):
    CHUNKS: tl.constexpr = (GROUP_WIDTH + BLOCK_C - 1) // BLOCK_C
    COLS: tl.constexpr = (WIDTH // GROUP_WIDTH) * CHUNKS
    if GROUP_MAJOR:  # 1-D grid, all column programs of a row block adjacent in launch order
        pid_m = tl.program_id(0) // COLS
        pid_c = tl.program_id(0) % COLS
    else:
        pid_m = tl.program_id(0)
        pid_c = tl.program_id(1)
    group = pid_c // CHUNKS
    cols_in = (pid_c % CHUNKS) * BLOCK_C + tl.arange(0, BLOCK_C)
    cols = group * GROUP_WIDTH + cols_in
    a0 = tl.load(a_ptr + group * a_stride + 0)
    a1 = tl.load(a_ptr + group * a_stride + 1)
    a2 = tl.load(a_ptr + group * a_stride + 2)
    a3 = tl.load(a_ptr + group * a_stride + 3)
    a4 = tl.load(a_ptr + group * a_stride + 4)
    a5 = tl.load(a_ptr + group * a_stride + 5)
    sb1 = tl.load(b_ptr + group * 4 + 0)
    sb2 = tl.load(b_ptr + group * 4 + 1)
    sb3 = tl.load(b_ptr + group * 4 + 2)
    sb4 = tl.load(b_ptr + group * 4 + 3)
    b1 = tl.abs(sb1)
    b2 = tl.abs(sb2)
    b3 = tl.abs(sb3)
    b4 = tl.abs(sb4)
    da1 = a1
    da2 = 2.0 * a2
    da3 = 3.0 * a3
    da4 = 4.0 * a4
    da5 = 5.0 * a5
    db2 = 2.0 * b2
    db3 = 3.0 * b3
    db4 = 4.0 * b4
    acc0 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    acc4 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    acc5 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    bcc1 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    bcc2 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    bcc3 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    bcc4 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    rows0 = pid_m * (BLOCK_M * ROW_ITERS) + tl.arange(0, BLOCK_M)
    for it in tl.range(ROW_ITERS, num_stages=STAGES):
        rows = rows0 + it * BLOCK_M
        if EVEN_C:
            mask = (rows < M)[:, None]
        else:
            mask = (rows < M)[:, None] & (cols_in < GROUP_WIDTH)[None, :]
        offs = rows.to(tl.int64)[:, None] * WIDTH + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        go = tl.load(g_ptr + offs, mask=mask, other=0.0)
        ax = tl.abs(x)
        x2 = x * x
        x3 = x2 * x
        x4 = x2 * x2
        x5 = x4 * x
        ax3 = tl.abs(x3)
        p = a0 + a1 * x + a2 * x2 + a3 * x3 + a4 * x4 + a5 * x5
        q = 1.0 + b1 * ax + b2 * x2 + b3 * ax3 + b4 * x4
        dp = da1 + da2 * x + da3 * x2 + da4 * x3 + da5 * x4
        dq = b1 + db2 * ax + db3 * x2 + db4 * ax3
        dq = tl.where(x < 0, -dq, dq)
        r = tl.fdiv(1.0, q)
        t = go * r
        u = -(t * p) * r
        tl.store(dx_ptr + offs, t * dp + u * dq, mask=mask)
        acc0 += t
        acc1 += t * x
        acc2 += t * x2
        acc3 += t * x3
        acc4 += t * x4
        acc5 += t * x5
        bcc1 += u * ax
        bcc2 += u * x2
        bcc3 += u * ax3
        bcc4 += u * x4
    if ATOMIC:
        out = part_ptr + group * 10
        tl.atomic_add(out + 0, tl.sum(tl.sum(acc0, axis=1), axis=0), sem="relaxed")
        tl.atomic_add(out + 1, tl.sum(tl.sum(acc1, axis=1), axis=0), sem="relaxed")
        tl.atomic_add(out + 2, tl.sum(tl.sum(acc2, axis=1), axis=0), sem="relaxed")
        tl.atomic_add(out + 3, tl.sum(tl.sum(acc3, axis=1), axis=0), sem="relaxed")
        tl.atomic_add(out + 4, tl.sum(tl.sum(acc4, axis=1), axis=0), sem="relaxed")
        tl.atomic_add(out + 5, tl.sum(tl.sum(acc5, axis=1), axis=0), sem="relaxed")
        tl.atomic_add(out + 6, tl.where(sb1 < 0, -1.0, 1.0) * tl.sum(tl.sum(bcc1, axis=1), axis=0), sem="relaxed")
        tl.atomic_add(out + 7, tl.where(sb2 < 0, -1.0, 1.0) * tl.sum(tl.sum(bcc2, axis=1), axis=0), sem="relaxed")
        tl.atomic_add(out + 8, tl.where(sb3 < 0, -1.0, 1.0) * tl.sum(tl.sum(bcc3, axis=1), axis=0), sem="relaxed")
        tl.atomic_add(out + 9, tl.where(sb4 < 0, -1.0, 1.0) * tl.sum(tl.sum(bcc4, axis=1), axis=0), sem="relaxed")
    else:
        out = part_ptr + (pid_m * COLS + pid_c) * 10
        tl.store(out + 0, tl.sum(tl.sum(acc0, axis=1), axis=0))
        tl.store(out + 1, tl.sum(tl.sum(acc1, axis=1), axis=0))
        tl.store(out + 2, tl.sum(tl.sum(acc2, axis=1), axis=0))
        tl.store(out + 3, tl.sum(tl.sum(acc3, axis=1), axis=0))
        tl.store(out + 4, tl.sum(tl.sum(acc4, axis=1), axis=0))
        tl.store(out + 5, tl.sum(tl.sum(acc5, axis=1), axis=0))
        tl.store(out + 6, tl.where(sb1 < 0, -1.0, 1.0) * tl.sum(tl.sum(bcc1, axis=1), axis=0))
        tl.store(out + 7, tl.where(sb2 < 0, -1.0, 1.0) * tl.sum(tl.sum(bcc2, axis=1), axis=0))
        tl.store(out + 8, tl.where(sb3 < 0, -1.0, 1.0) * tl.sum(tl.sum(bcc3, axis=1), axis=0))
        tl.store(out + 9, tl.where(sb4 < 0, -1.0, 1.0) * tl.sum(tl.sum(bcc4, axis=1), axis=0))


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration: rows and columns per tile, warps, row tiles per program, and
    software-pipeline stages of the row loop (>1: loads of later tiles overlap the maths)."""

    block_m: int
    num_warps: int
    row_iters: int
    stages: int = 1
    block_c: int = 0  # 0: the default column tile for the group width
    group_major: int = 0  # 1: launch all column programs of a row block together (narrow tiles)

    def as_dict(self) -> dict[str, int]:
        return {
            "block_m": self.block_m,
            "block_c": self.block_c,
            "num_warps": self.num_warps,
            "row_iters": self.row_iters,
            "stages": self.stages,
            "group_major": self.group_major,
        }

    def grid(self, row_programs: int, column_programs: int) -> tuple[int, ...]:
        return (row_programs * column_programs,) if self.group_major else (row_programs, column_programs)


# (tile elements, warps, stages). The backward keeps 10 register accumulators per element of the
# tile, so its tiles are small (4-8 elements per thread: ~96-160 registers, no spills on sm_90).
# Pruned from H200 tuning logs (bench/results/flashkat.yaml, tuned_tiles): the forward always
# preferred the covering (masked) column tile, the backward 3-4 pipeline stages.
_FWD_TILES = ((2048, 4, 1), (4096, 8, 1), (2048, 4, 3), (4096, 8, 3))
_BWD_TILES = ((512, 4, 4), (1024, 4, 4), (512, 4, 3))
_TUNED: dict[tuple, TileConfig] = {}
_TUNE_LOG: dict[tuple, list[tuple[TileConfig, float]]] = {}
_SMS: dict[int, int] = {}


def tuned_configs() -> dict[str, dict]:
    """The tile configurations chosen so far by shape key, with every candidate's median time
    in ms (for benchmark records)."""
    out = {}
    for key, cfg in _TUNED.items():
        entry: dict = dict(cfg.as_dict())
        log = _TUNE_LOG.get(key)
        if log:
            entry["candidates_ms"] = {
                f"m{c.block_m}c{c.block_c}w{c.num_warps}i{c.row_iters}s{c.stages}{'g' if c.group_major else ''}": round(
                    ms, 5
                )
                for c, ms in log
            }
        out["/".join(map(str, key))] = entry
    return out


def set_default_reduction(reduction: str) -> None:
    """Default coefficient-gradient reduction: ``two_stage`` (deterministic) or ``atomic``."""
    global _default_reduction
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    _default_reduction = reduction


def _cdiv(a: int, b: int) -> int:
    # Triton's own cdiv is a host/device constexpr function costing tens of microseconds per host call.
    return -(-a // b)


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _column_tiles(group_width: int) -> list[int]:
    """Column-tile candidates: the largest power of two dividing the group width (no masks) and
    the next power of two covering it (one masked tile), each at most 128."""
    tiles = []
    for tile in (128, 64, 32, 16, 8):
        if group_width % tile == 0:
            tiles.append(tile)
            break
    cover = min(_next_pow2(group_width), 128)
    if cover not in tiles:
        tiles.append(cover)
    return tiles


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


def _row_iters(rows: int, block_m: int, column_programs: int, sms: int) -> int:
    # Aim at ~32 programs per SM over the grid: enough waves for a small tail, long enough
    # programs that coefficient loads and the final reduction are amortised.
    want_rows = max(1, rows * column_programs // (32 * sms))
    iters = max(1, want_rows // block_m)
    return min(1 << (iters.bit_length() - 1), 64)


def _candidates(
    tiles, groups: int, group_width: int, rows: int, sms: int, covering_only: bool = False
) -> list[TileConfig]:
    out = []
    column_tiles = _column_tiles(group_width)
    for block_c in column_tiles[-1:] if covering_only else column_tiles:
        column_programs = groups * _cdiv(group_width, block_c)
        for elems, warps, stages in tiles:
            block_m = max(1, elems // block_c)
            iters = _row_iters(rows, block_m, column_programs, sms)
            cfg = TileConfig(block_m, warps, iters, stages if iters > 1 else 1, block_c)
            if cfg not in out:
                out.append(cfg)
            # Narrow column tiles leave each row's line split across programs that run far
            # apart in time; the group-major order launches a row block's programs together.
            twin = TileConfig(block_m, warps, iters, cfg.stages, block_c, 1)
            if block_c < 64 and column_programs > 1 and twin not in out:
                out.append(twin)
    return out


def _pick(kind: str, launch, key: tuple, groups: int, group_width: int, rows: int, device) -> TileConfig:
    cfg = _TUNED.get(key)
    if cfg is not None:
        return cfg
    forced = os.environ.get(f"STALLSCOPE_FLASHKAT_{kind.upper()}_TILE")
    if forced:  # block_m,num_warps,row_iters[,stages[,block_c[,group_major]]]
        values = [int(v) for v in forced.split(",")]
        if len(values) < 5 or values[4] <= 0:
            values = (values + [1])[:4] + [_column_tiles(group_width)[0]] + values[5:]
        return TileConfig(*values)
    if INTERPRET:  # few, large programs: the interpreter's cost is per program
        cfg = TileConfig(64, 1, 4, 2, _column_tiles(group_width)[0])
        _TUNED[key] = cfg
        return cfg
    tiles = _FWD_TILES if kind == "fwd" else _BWD_TILES
    candidates = _candidates(tiles, groups, group_width, rows, _sm_count(device), covering_only=kind == "fwd")
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if capturing or len(candidates) == 1 or os.environ.get("STALLSCOPE_FLASHKAT_TUNE", "1") == "0":
        cfg = candidates[0]  # no timing inside a CUDA-graph capture
        if capturing:
            return cfg
    else:
        timings = []
        for cand in candidates:
            launch(cand)  # compile outside the timing
            timings.append(triton.testing.do_bench(lambda c=cand: launch(c), warmup=5, rep=25, return_mode="median"))
        cfg = candidates[min(range(len(candidates)), key=timings.__getitem__)]
        _TUNE_LOG[key] = list(zip(candidates, timings, strict=False))
    _TUNED[key] = cfg
    return cfg


def _rows_key(rows: int) -> int:
    return _next_pow2(max(rows, 1))


def flashkat_forward(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """y = F(x) for a contiguous float32 ``x`` (..., D); coefficients float32 contiguous."""
    groups = check_shapes(x, numerator, denominator)
    y = torch.empty_like(x, dtype=torch.float32)
    if x.numel() == 0:
        return y
    width = x.shape[-1]
    group_width = width // groups
    rows = x.numel() // width
    a_stride = 0 if numerator.shape[0] == 1 else 6

    def launch(cfg: TileConfig) -> None:
        grid = cfg.grid(_cdiv(rows, cfg.block_m * cfg.row_iters), groups * _cdiv(group_width, cfg.block_c))
        flashkat_fwd_kernel[grid](
            x,
            y,
            numerator,
            denominator,
            rows,
            a_stride,
            WIDTH=width,
            GROUP_WIDTH=group_width,
            BLOCK_M=cfg.block_m,
            BLOCK_C=cfg.block_c,
            ROW_ITERS=cfg.row_iters,
            EVEN_C=group_width % cfg.block_c == 0,
            STAGES=cfg.stages,
            GROUP_MAJOR=bool(cfg.group_major),
            num_warps=cfg.num_warps,
        )

    key = ("fwd", width, group_width, _rows_key(rows), x.device.type)
    launch(_pick("fwd", launch, key, groups, group_width, rows, x.device))
    return y


def flashkat_backward(
    x: torch.Tensor,
    numerator: torch.Tensor,
    denominator: torch.Tensor,
    grad_out: torch.Tensor,
    reduction: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, d numerator, d denominator) for contiguous float32 ``x`` and ``grad_out``.

    ``reduction``: ``two_stage`` (default, deterministic) or ``atomic``."""
    reduction = reduction or _default_reduction
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    groups = check_shapes(x, numerator, denominator)
    dx = torch.empty_like(x, dtype=torch.float32)
    width = x.shape[-1]
    group_width = width // groups
    rows = x.numel() // width if width else 0
    if x.numel() == 0:
        sums = torch.zeros(groups, 10, dtype=torch.float32, device=x.device)
    else:
        a_stride = 0 if numerator.shape[0] == 1 else 6

        def launch(cfg: TileConfig, atomic: bool = False) -> torch.Tensor:
            row_programs = _cdiv(rows, cfg.block_m * cfg.row_iters)
            column_programs = groups * _cdiv(group_width, cfg.block_c)
            if atomic:
                part = torch.zeros(groups, 10, dtype=torch.float32, device=x.device)
            else:
                part = torch.empty(row_programs, column_programs, 10, dtype=torch.float32, device=x.device)
            flashkat_bwd_kernel[cfg.grid(row_programs, column_programs)](
                grad_out,
                x,
                numerator,
                denominator,
                dx,
                part,
                rows,
                a_stride,
                WIDTH=width,
                GROUP_WIDTH=group_width,
                BLOCK_M=cfg.block_m,
                BLOCK_C=cfg.block_c,
                ROW_ITERS=cfg.row_iters,
                EVEN_C=group_width % cfg.block_c == 0,
                ATOMIC=atomic,
                STAGES=cfg.stages,
                GROUP_MAJOR=bool(cfg.group_major),
                num_warps=cfg.num_warps,
            )
            return part

        # tiles are tuned on the two-stage launch and shared with the atomic one
        key = ("bwd", width, group_width, _rows_key(rows), x.device.type)
        cfg = _pick("bwd", launch, key, groups, group_width, rows, x.device)
        if reduction == "atomic":
            sums = launch(cfg, True)
        else:
            # One fixed-shape reduction over row programs and column chunks: deterministic.
            part = launch(cfg)
            sums = part.view(part.shape[0], groups, -1, 10).sum(dim=(0, 2))
    d_num = sums[:, :6]
    d_den = sums[:, 6:]  # the kernel already applied s(b_j)
    if numerator.shape[0] == 1:
        d_num = d_num.sum(dim=0, keepdim=True)
    return dx, d_num, d_den


class FlashKATRational(torch.autograd.Function):
    """Autograd Function of the fast kernels: float32 contiguous ``x`` (..., D), numerator
    (1|G, 6), denominator (G, 4)."""

    @staticmethod
    def forward(ctx, x, numerator, denominator):
        ctx.save_for_backward(x, numerator, denominator)
        return flashkat_forward(x, numerator, denominator)

    @staticmethod
    def backward(ctx, grad_out):
        x, numerator, denominator = ctx.saved_tensors
        dx, d_num, d_den = flashkat_backward(x, numerator, denominator, grad_out.contiguous().float())
        return dx, d_num.to(numerator.dtype), d_den.to(denominator.dtype)
