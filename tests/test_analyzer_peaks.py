"""stallscope.analyzers.peaks: peak table lookup, FLOP formulas checked against the profiler's own
counts on real CPU traces, minimum bytes, and kernel classes on GPU fixtures."""
from __future__ import annotations

import pytest
import torch

from stallscope.analyzers.peaks import classify_kernels, dtype_bytes, kernel_rooflines, op_flops, op_min_bytes, peaks_for
from tests.analyzer_traces import gpu_fixture


def test_peak_table_keys_on_device_names():
    h200 = peaks_for("NVIDIA H200")
    assert h200 is not None and h200.source == "measured" and h200.dram_gbps == 4250 and h200.bf16_tflops == 790
    assert peaks_for("NVIDIA H100 80GB HBM3").name == "NVIDIA H100 SXM"
    assert peaks_for("NVIDIA H100 PCIe").name == "NVIDIA H100 PCIe"
    assert peaks_for("NVIDIA A100-SXM4-40GB").dram_gbps == 1555
    assert peaks_for("NVIDIA L4").name == "NVIDIA L4"
    assert peaks_for("NVIDIA L40S").name == "NVIDIA L40S"
    assert peaks_for("Tesla T4").has_tensor_cores_fp32 is False
    assert peaks_for("NVIDIA GH200 480GB").name == "NVIDIA GH200"
    assert peaks_for("Some Unknown GPU") is None and peaks_for(None) is None
    for _, p in __import__("stallscope.analyzers.peaks", fromlist=["PEAKS"]).PEAKS:
        assert p.source in ("measured", "datasheet")


def _profiled_flops(tmp_path, fn):
    """(op, input dims, FLOPs) as torch.profiler's own FLOP counter reports them."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        fn()
    return [(e.name, e.input_shapes, e.flops) for e in prof.events() if e.flops]


@pytest.mark.parametrize(
    "fn",
    [
        lambda: torch.mm(torch.randn(32, 48), torch.randn(48, 16)),
        lambda: torch.addmm(torch.randn(16), torch.randn(32, 48), torch.randn(48, 16)),
        lambda: torch.bmm(torch.randn(3, 32, 48), torch.randn(3, 48, 16)),
    ],
)
def test_flop_formulas_match_the_profilers_count(tmp_path, fn):
    seen = _profiled_flops(tmp_path, fn)
    assert seen, "the profiler reported no FLOPs"
    for name, dims, flops in seen:
        assert op_flops(name, dims) == pytest.approx(flops), name


def test_flops_for_linear_and_sdpa_shapes():
    assert op_flops("aten::linear", [[8, 10, 64], [32, 64], [32]]) == 2 * 80 * 64 * 32
    # q,k,v [B,H,L,E]: QK^T and PV each 2*B*H*L*S*E
    assert op_flops("aten::scaled_dot_product_attention", [[2, 4, 128, 64]] * 3) == 4 * 2 * 4 * 128 * 128 * 64
    assert op_flops("aten::relu", [[10, 10]]) is None


def test_min_bytes_reads_inputs_and_writes_output():
    assert dtype_bytes("c10::BFloat16") == 2 and dtype_bytes("float") == 4 and dtype_bytes("Scalar") == 0
    # addmm: bias 16 + a 32x48 + b 48x16 read, 32x16 written, fp32
    assert op_min_bytes("aten::addmm", [[16], [32, 48], [48, 16], [], []], ["float"] * 3 + ["Scalar"] * 2) == 4 * (16 + 32 * 48 + 48 * 16 + 32 * 16)
    # elementwise: inputs + an output the size of the largest input
    assert op_min_bytes("aten::add", [[1000], [1000]], ["c10::BFloat16"] * 2) == 2 * 3000
    assert op_min_bytes("aten::add", [[], []], ["Scalar", "Scalar"]) is None


def test_cpu_only_trace_has_no_kernel_classes(tmp_path):
    from tests.analyzer_traces import context, record

    ctx = context(record(tmp_path / "cpu.json", lambda i: torch.mm(torch.randn(64, 64), torch.randn(64, 64)), stacks=False))
    assert classify_kernels(ctx) == {}


def test_gpu_classes_on_real_kernels():
    ctx = gpu_fixture("gemm_fp32_tf32")
    classes = classify_kernels(ctx)
    assert classes
    gemm = [k for k in kernel_rooflines(ctx) if k.ops and k.ops[0] == "aten::mm"]
    assert gemm and gemm[0].cls == "compute-bound" and gemm[0].achieved_tflops > 1
    ctx = gpu_fixture("copy_pageable_fp32")
    assert set(classify_kernels(ctx).values()) <= {"compute-bound", "memory-bound", "latency-bound", "unknown"}
