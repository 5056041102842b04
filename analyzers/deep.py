"""``--deep``: Nsight Compute counters for the top kernels, added to the findings' evidence.

For each of the top-N kernels of rank 0 (those named by findings first, then the longest; never a
communication kernel: ncu replays a kernel alone, and a collective replayed without its peers
waits for them forever, nor has it a roofline to place it on), run

    ncu --clock-control none --kernel-name-base function --kernel-name regex:^NAME$
        --launch-skip K --launch-count 1 --csv --page raw --metrics ... -- <meta.yaml command>

``--clock-control none`` keeps the GPU's own clocks (ncu's default locks them to base, which
would misstate a throttled or boosted run); ``--launch-skip`` skips the warm-up window so the
profiled launch is a steady-state one (the run's skipped steps plus one, times the kernel's
launches per step). Each ncu run replays one launch, but runs the whole command, so N is small.

Evidence added (units in keys): ``ncu_dram_throughput_pct``, ``ncu_sm_throughput_pct``,
``ncu_duration_us``, ``ncu_global_atomic_instructions`` (atom + red), ``ncu_top_stalls``
(the three largest warp-stall reasons in cycles per issued instruction). Where ncu is absent,
the run has no command (a plain trace), or the driver refuses counter access
(``ERR_NVGPUCTRPERM``), one notice says so and nothing else changes.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from stallscope.analyzers.context import load_context
from stallscope.analyzers.model import AnalysisContext
from stallscope.analyzers.peaks import kernel_rooflines
from stallscope.analyzers.vocab import is_comm_kernel

if TYPE_CHECKING:
    from stallscope.analyzers.base import Finding

__all__ = [
    "deepen",
    "deepen_report",
    "find_ncu",
    "kernel_function_name",
    "ncu_command",
    "parse_ncu_csv",
    "profile_kernels",
]

METRICS = [
    "gpu__time_duration.sum",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "smsp__inst_executed_op_global_atom.sum",
    "smsp__inst_executed_op_global_red.sum",
    r"regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio",
]
_STALL = re.compile(r"smsp__average_warps_issue_stalled_(.*)_per_issue_active\.ratio")
PER_KERNEL_TIMEOUT_S = 300.0


def find_ncu() -> str | None:
    """The ncu executable: PATH, then the usual CUDA install folders."""
    found = shutil.which("ncu")
    if found:
        return found
    for base in (os.environ.get("CUDA_HOME"), "/usr/local/cuda", "/opt/nvidia/nsight-compute"):
        if base:
            for cand in (os.path.join(base, "bin", "ncu"), os.path.join(base, "ncu")):
                if os.path.isfile(cand) and os.access(cand, os.X_OK):
                    return cand
    return None


def kernel_function_name(kernel: str) -> str:
    """The bare function name ncu matches with ``--kernel-name-base function``.

    ``void at::native::vectorized_elementwise_kernel<4, ...>(int, ...)`` ->
    ``vectorized_elementwise_kernel``; Triton and cuBLAS names come back unchanged.
    """
    name = kernel.strip()
    if name.startswith("void "):
        name = name[5:]
    depth = 0
    out = []
    for ch in name:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "(" and depth == 0:
            break
        elif depth == 0:
            out.append(ch)
    base = "".join(out).strip()
    return base.split("::")[-1] or kernel


def ncu_command(ncu: str, kernel: str, skip: int, command: list[str]) -> list[str]:
    return [
        ncu,
        "--clock-control",
        "none",
        "--target-processes",
        "all",
        "--kernel-name-base",
        "function",
        "--kernel-name",
        f"regex:^{re.escape(kernel_function_name(kernel))}$",
        "--launch-skip",
        str(max(0, skip)),
        "--launch-count",
        "1",
        "--csv",
        "--page",
        "raw",
        "--metrics",
        ",".join(METRICS),
        "--",
        *command,
    ]


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except (TypeError, ValueError):
        return None


def parse_ncu_csv(text: str) -> dict[str, Any] | None:
    """Evidence from ``ncu --csv --page raw`` output (header row, units row, one row per kernel)."""
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    if len(lines) < 3:
        return None
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    header, units, values = rows[0], rows[1], rows[-1]
    col = {h: i for i, h in enumerate(header)}

    def get(metric: str) -> float | None:
        i = col.get(metric)
        return _number(values[i]) if i is not None and i < len(values) else None

    out: dict[str, Any] = {}
    dur = get("gpu__time_duration.sum")
    if dur is not None:
        unit = units[col["gpu__time_duration.sum"]].strip().lower()
        scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}.get(unit, 1e-3)
        out["ncu_duration_us"] = dur * scale
    for key, metric in (
        ("ncu_dram_throughput_pct", "dram__throughput.avg.pct_of_peak_sustained_elapsed"),
        ("ncu_sm_throughput_pct", "sm__throughput.avg.pct_of_peak_sustained_elapsed"),
    ):
        v = get(metric)
        if v is not None:
            out[key] = v
    atom = [get(m) for m in ("smsp__inst_executed_op_global_atom.sum", "smsp__inst_executed_op_global_red.sum")]
    if any(a is not None for a in atom):
        out["ncu_global_atomic_instructions"] = sum(a or 0.0 for a in atom)
    stalls = []
    for h, i in col.items():
        m = _STALL.fullmatch(h)
        if m and i < len(values):
            v = _number(values[i])
            if v is not None and m.group(1) not in ("selected",):
                stalls.append((v, m.group(1)))
    stalls.sort(reverse=True)
    if stalls:
        out["ncu_top_stalls"] = [f"{name}: {v:.2f} cycles/issue" for v, name in stalls[:3]]
    return out or None


def _targets(ctx: AnalysisContext, findings: Iterable[Any], top_n: int) -> list[tuple[str, int]]:
    """(kernel, launches per step) of the kernels to profile: named by findings first."""
    rl = {k.kernel: k for k in kernel_rooflines(ctx) if not is_comm_kernel(k.kernel)}
    n_steps = max(1, len(ctx.ranks[0].steps)) if ctx.ranks else 1
    ordered: list[str] = []
    for f in findings:
        where = f.where if hasattr(f, "where") else (f.get("where") or {})
        for k in where.get("kernels", []) or []:
            if k in rl and k not in ordered:
                ordered.append(k)
    for k in rl:
        if k not in ordered:
            ordered.append(k)
    return [(k, max(1, round(rl[k].calls / n_steps))) for k in ordered[:top_n]]


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def profile_kernels(
    ctx: AnalysisContext, findings: Iterable[Any] = (), top_n: int = 3, runner: Runner = subprocess.run
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Run ncu once per top kernel; (kernel -> evidence, notices)."""
    findings = list(findings)
    ncu = find_ncu()
    if ncu is None:
        return {}, ["--deep: Nsight Compute (ncu) is not installed here; kernel counters were skipped"]
    command = ctx.meta.get("command") if isinstance(ctx.meta, dict) else None
    if not command or not isinstance(command, list):
        return {}, [
            "--deep: this is a plain trace with no recorded command to replay under ncu; kernel counters were skipped"
        ]
    if not ctx.has("gpu"):
        return {}, ["--deep: the trace has no GPU kernels; nothing for ncu to profile"]
    cwd = ctx.meta.get("cwd") or None
    window = ctx.meta.get("window") or {}
    skip_steps = int(window.get("skip", 0) or 0) + 1
    results: dict[str, dict[str, Any]] = {}
    notices: list[str] = []
    for kernel, per_step in _targets(ctx, findings, top_n):
        cmd = ncu_command(ncu, kernel, skip_steps * per_step, [str(c) for c in command])
        try:
            p = runner(cmd, cwd=cwd, capture_output=True, text=True, timeout=PER_KERNEL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            notices.append(
                f"--deep: ncu on {kernel_function_name(kernel)} ran past {PER_KERNEL_TIMEOUT_S:.0f} s; skipped"
            )
            continue
        except OSError as exc:
            return results, [f"--deep: ncu could not start ({exc.__class__.__name__}); kernel counters were skipped"]
        text = (p.stdout or "") + "\n" + (p.stderr or "")
        if "ERR_NVGPUCTRPERM" in text:
            return results, [
                "--deep: ncu was refused access to GPU performance counters (ERR_NVGPUCTRPERM); "
                "run as admin or allow profiling (NVreg_RestrictProfilingToAdminUsers=0)"
            ]
        parsed = parse_ncu_csv(p.stdout or "")
        if parsed is None:
            last = " ".join(text.split())[-160:]
            notices.append(
                f"--deep: ncu gave no counters for {kernel_function_name(kernel)} (exit {p.returncode}): {last}"
            )
            continue
        results[kernel] = parsed
    return results, notices


def _attach(where: dict[str, Any], evidence: dict[str, Any], results: dict[str, dict[str, Any]]) -> bool:
    for k in where.get("kernels", []) or []:
        if k in results:
            evidence.update(results[k])
            evidence["ncu_kernel"] = kernel_function_name(k)
            return True
    return False


def deepen(ctx: AnalysisContext, findings: list[Finding], top_n: int = 3, runner: Runner = subprocess.run) -> list[str]:
    """Profile the top kernels with ncu and add the counters to the findings that name them.

    Returns notices (ncu absent or refused, kernels without counters; one line per kernel
    measured that no finding names)."""
    results, notices = profile_kernels(ctx, findings, top_n, runner)
    used: set[str] = set()
    for f in findings:
        if _attach(f.where, f.evidence, results):
            used.update(k for k in f.where.get("kernels", []) if k in results)
    for k, ev in results.items():
        if k not in used:
            notices.append(
                f"--deep: {kernel_function_name(k)}: "
                + ", ".join(f"{a}={b}" for a, b in ev.items() if a != "ncu_top_stalls")
            )
    return notices


def deepen_report(
    ctx: AnalysisContext | str | os.PathLike[str],
    report: dict[str, Any],
    top_n: int = 3,
    runner: Runner = subprocess.run,
) -> list[str]:
    """:func:`deepen` for a report dict (``report["findings"]`` as written to report.yaml);
    ``ctx`` may be the run directory itself. Also adds ``ncu`` to the matching top kernels.

    ``diagnose --deep`` adds the returned notices to the report's."""
    if not isinstance(ctx, AnalysisContext):
        ctx = load_context(ctx)
    findings = report.get("findings") or []
    results, notices = profile_kernels(ctx, findings, top_n, runner)
    for f in findings:
        f.setdefault("evidence", {})
        _attach(f.get("where") or {}, f["evidence"], results)
    if results and "top_kernels" in report:
        for k in report.get("top_kernels") or []:
            if isinstance(k, dict) and k.get("name") in results:
                k["ncu"] = results[k["name"]]
    return notices
