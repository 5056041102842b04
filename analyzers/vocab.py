"""The trace vocabulary: event kinds, Kineto categories and the names the analysis recognises.

Every module that classifies an event by its category or name (the decoder, the breakdown,
compaction, the analyzers) takes the spelling from here, so one list holds each rule. This is
the bottom layer of the analysis side: it imports none of our modules and nothing outside the
standard library.
"""

from __future__ import annotations

import re
from enum import IntEnum

__all__ = [
    "Kind",
    "short_kernel_name",
    "GPU_KINDS",
    "GPU_ARG_KINDS",
    "KIND_OF_CATEGORY",
    "SKIPPED_CATEGORIES",
    "SYNC_CALLS",
    "COLLECTIVE_ARG_KEYS",
    "MEMORY_ARG_KEYS",
    "MEMORY_EVENT",
    "PROFILER_STEP",
    "STALLSCOPE_STEP",
    "STEP_NAME",
    "DATA_WAIT",
    "DATA_PHASE",
    "CPU_COPY_OPS",
    "COMPACT_KEEP_PREFIXES",
    "is_sync_call",
    "is_data_wait",
    "is_comm_kernel",
    "is_comm_op",
    "is_device_to_host",
]


class Kind(IntEnum):
    """Event kinds (the ``kind`` column of the event table)."""

    CPU_OP = 0  # cat cpu_op / operator (aten::*, ProfilerStep#N, enumerate(DataLoader)...)
    RUNTIME = 1  # cat cuda_runtime / cuda_driver (cudaLaunchKernel, cudaStreamSynchronize...)
    KERNEL = 2  # cat kernel
    MEMCPY = 3  # cat gpu_memcpy
    MEMSET = 4  # cat gpu_memset
    ANNOTATION = 5  # cat user_annotation (record_function, our step / phase ranges)
    GPU_ANNOTATION = 6  # cat gpu_user_annotation
    PYTHON = 7  # cat python_function (with_stack=True)
    OTHER = 8  # everything else kept (e.g. cpu_instant_event); see SKIPPED_CATEGORIES


# Rows that run on the GPU (the device timeline).
GPU_KINDS = (Kind.KERNEL, Kind.MEMCPY, Kind.MEMSET)
# Rows whose args carry a stream and a device.
GPU_ARG_KINDS = (Kind.KERNEL, Kind.MEMCPY, Kind.MEMSET, Kind.GPU_ANNOTATION)

# Kineto's ``cat`` -> kind; a category not listed becomes Kind.OTHER.
KIND_OF_CATEGORY = {
    "cpu_op": Kind.CPU_OP,
    "operator": Kind.CPU_OP,
    "cuda_runtime": Kind.RUNTIME,
    "cuda_driver": Kind.RUNTIME,
    "runtime": Kind.RUNTIME,
    "kernel": Kind.KERNEL,
    "gpu_memcpy": Kind.MEMCPY,
    "gpu_memset": Kind.MEMSET,
    "user_annotation": Kind.ANNOTATION,
    "gpu_user_annotation": Kind.GPU_ANNOTATION,
    "python_function": Kind.PYTHON,
}
# Categories dropped while parsing: the profiler's own range, flow arrows and its overhead marks.
SKIPPED_CATEGORIES = frozenset({"Trace", "ac2g", "fwdbwd", "overhead"})

# Runtime and driver calls that block the host until the GPU has caught up.
SYNC_CALLS = frozenset(
    {
        "cudaStreamSynchronize",
        "cudaDeviceSynchronize",
        "cudaEventSynchronize",
        "cudaMemcpy",
        "cudaMemcpy2D",
        "cudaMemset",
        "cuStreamSynchronize",
        "cuCtxSynchronize",
        "cuEventSynchronize",
        "cuMemcpyDtoH_v2",
        "cuMemcpyDtoH",
        "cuMemcpyHtoD_v2",
    }
)

# Kineto's collective args (``record_param_comms``, NCCL kernels) -> our short keys.
COLLECTIVE_ARG_KEYS = {
    "Collective name": "name",
    "dtype": "dtype",
    "In msg nelems": "in_nelems",
    "Out msg nelems": "out_nelems",
    "Group size": "group_size",
    "Process Group Name": "pg_name",
    "Process Group Description": "pg_desc",
    "Process Group Ranks": "pg_ranks",
    "Seq": "seq",
    "Rank": "rank",
    "In split size": "in_split",
    "Out split size": "out_split",
}
# The allocator samples torch.profiler writes with profile_memory=True.
MEMORY_EVENT = "[memory]"
MEMORY_ARG_KEYS = ("Total Allocated", "Total Reserved", "Device Id", "Device Type", "Addr")

# Step markers: torch.profiler's ranges, else our in-target step markers.
PROFILER_STEP = "ProfilerStep#"
STALLSCOPE_STEP = "stallscope.step#"
STEP_NAME = re.compile(r"^(?:ProfilerStep|stallscope\.step)#(\d+)$")

# The DataLoader's ``__next__`` range that torch.profiler records, and our data-phase range.
DATA_WAIT = "enumerate(DataLoader)"
DATA_PHASE = "stallscope.phase/data"

# CPU ops that copy or fill memory (the CPU timeline's memory part).
CPU_COPY_OPS = frozenset(
    {
        "aten::copy_",
        "aten::_to_copy",
        "aten::to",
        "aten::contiguous",
        "aten::clone",
        "aten::fill_",
        "aten::zero_",
        "aten::_local_scalar_dense",
        "aten::pin_memory",
        "aten::_pin_memory",
    }
)

# Name prefixes a compacted rank keeps: steps, data waits, collectives and our own ranges.
COMPACT_KEEP_PREFIXES = (PROFILER_STEP, DATA_WAIT, "record_param_comms", "c10d::", "nccl:", "gloo:", "stallscope")


def is_sync_call(name: str) -> bool:
    """Runtime calls that block the host until the GPU catches up."""
    return name in SYNC_CALLS


def is_data_wait(name: str) -> bool:
    """The DataLoader's ``__next__`` range that torch.profiler records."""
    return name.startswith(DATA_WAIT)


def is_comm_kernel(name: str) -> bool:
    """Communication kernels (NCCL/RCCL/NVSHMEM/gloo) by name, as HTA classifies them."""
    low = name.lower()
    return "nccl" in low or "rccl" in low or "nvshmem" in low or low.startswith("c10d::") or "gloo" in low


def is_comm_op(name: str) -> bool:
    """CPU-side communication ops (gloo on CPU, c10d wrappers, record_param_comms)."""
    return name == "record_param_comms" or name.startswith(("c10d::", "gloo:", "nccl:")) or "allreduce" in name.lower()


def is_device_to_host(name: str) -> bool:
    """Device-to-host memcpy rows (``Memcpy DtoH (Device -> Pinned)`` and the like)."""
    return "DtoH" in name or "D2H" in name


def short_kernel_name(name: str, width: int = 60) -> str:
    """A kernel name a person can read: no return type, no argument list, templates elided."""
    if name.startswith("void "):
        name = name[5:]
    depth, out = 0, []
    for ch in name.split("(", 1)[0] if not name.startswith("Memcpy") else name:
        if ch == "<":
            if depth == 0:
                out.append("<…>")
            depth += 1
        elif ch == ">" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    short = "".join(out).strip() or name
    return short if len(short) <= width else short[: width - 1] + "…"
